package push

// recentIDs is a set of push ids that holds at most max of them,
// forgetting the oldest first: the pushes acknowledged lately, so that a
// late copy from another node is not delivered again. Adding is O(1):
// the ids wait in a ring, and once it is full each new id takes the
// place of the oldest. (A slice shifted down by one at each ACK cost a
// copy of the whole log, 1 MiB, per ACK once the gateway had seen
// recentAcks of them.)
type recentIDs struct {
	set  map[[16]byte]struct{}
	ring [][16]byte // the ids in set, in the order added; once full, ring[next] is the oldest
	next int
	max  int
}

func newRecentIDs(max int) *recentIDs {
	return &recentIDs{set: map[[16]byte]struct{}{}, max: max}
}

// add puts id in the set; an id already there keeps its place.
func (r *recentIDs) add(id [16]byte) {
	if _, ok := r.set[id]; ok {
		return
	}
	if len(r.ring) < r.max {
		r.ring = append(r.ring, id)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = id
		r.next = (r.next + 1) % r.max
	}
	r.set[id] = struct{}{}
}

// has reports whether id is in the set.
func (r *recentIDs) has(id [16]byte) bool {
	_, ok := r.set[id]
	return ok
}
