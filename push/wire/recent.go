package wire

// RecentIDs holds the last n push ids added, forgetting the oldest first.
// Delivery is at least once: an agent drops a push whose id it has seen
// lately, and the server does not deliver again a copy (from another
// node) of a push acknowledged lately. It grows as ids arrive, up to n
// (an idle agent keeps nothing); then each new id takes the place of the
// oldest in a ring, so adding costs the same however many came before.
// It is not safe for concurrent use.
type RecentIDs struct {
	n    int
	set  map[[16]byte]struct{}
	ring [][16]byte // the ids in set in the order added; once full, ring[next] is the oldest
	next int
}

// NewRecentIDs returns an empty set that keeps at most n ids.
func NewRecentIDs(n int) *RecentIDs {
	return &RecentIDs{n: n, set: map[[16]byte]struct{}{}}
}

// Add puts id in the set and reports whether it was new; an id already
// there keeps its place.
func (r *RecentIDs) Add(id [16]byte) bool {
	if _, ok := r.set[id]; ok {
		return false
	}
	if len(r.ring) < r.n {
		r.ring = append(r.ring, id)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = id
		r.next = (r.next + 1) % r.n
	}
	r.set[id] = struct{}{}
	return true
}

// Has reports whether id is in the set.
func (r *RecentIDs) Has(id [16]byte) bool {
	_, ok := r.set[id]
	return ok
}
