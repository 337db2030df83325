package client

import "testing"

func TestDedupeWindow(t *testing.T) {
	d := newDedupe(3)
	id := func(b byte) [16]byte { return [16]byte{b} }
	for _, b := range []byte{1, 2, 3} {
		if !d.add(id(b)) {
			t.Fatalf("id %d reported as a duplicate on first sight", b)
		}
	}
	if d.add(id(2)) {
		t.Error("id 2 not recognised within the window")
	}
	d.add(id(4)) // evicts 1, the oldest
	if !d.add(id(1)) {
		t.Error("id 1 still remembered after leaving the window")
	}
	if d.add(id(4)) || d.add(id(3)) {
		t.Error("ids inside the window must be duplicates")
	}
}
