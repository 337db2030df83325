package queue

import (
	"fmt"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/store"
)

// BenchmarkEnqueue is the cost of accepting one push durably: one bbolt
// commit with fsync when pushes come one at a time (serial), shared by
// many when they come concurrently (parallel, through DB.Batch).
func BenchmarkEnqueue(b *testing.B) {
	for _, mode := range []string{"serial", "parallel-64"} {
		b.Run(mode, func(b *testing.B) {
			db, err := store.Open(b.TempDir(), store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			q := NewQueue(db)
			payload := make([]byte, 64)
			if mode == "serial" {
				for i := 0; b.Loop(); i++ {
					if _, err := q.Enqueue([]string{fmt.Sprint("d", i%1000)}, [][]byte{payload}, time.Hour); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(32) // 64 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					if _, err := q.Enqueue([]string{fmt.Sprint("d", i%1000)}, [][]byte{payload}, time.Hour); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
