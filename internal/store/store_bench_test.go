package store

import (
	"fmt"
	"testing"
)

// BenchmarkPut is one committed, fsynced write transaction: the floor
// under anything the store accepts durably on this disk.
func BenchmarkPut(b *testing.B) {
	db, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	v := make([]byte, 64)
	for i := 0; b.Loop(); i++ {
		if err := db.Put("bench", fmt.Sprint(i%1000), v); err != nil {
			b.Fatal(err)
		}
	}
}
