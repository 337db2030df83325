package push

import (
	"encoding/binary"
	"testing"

	"github.com/dpgate/dpgate/push/wire"
)

// BenchmarkAckedIDs is the cost of recording one ACK in a gateway that
// has already seen recentAcks of them (every gateway after its first
// 65,536 ACKs).
//
//	go test -run '^$' -bench AckedIDs ./push
func BenchmarkAckedIDs(b *testing.B) {
	s := &Server{recent: wire.NewRecentIDs(recentAcks), idWaiters: map[[16]byte][]chan struct{}{}}
	id := func(n int) (id [16]byte) {
		binary.BigEndian.PutUint64(id[8:], uint64(n))
		return id
	}
	for n := range recentAcks {
		s.ackedIDs([][16]byte{id(n)})
	}
	b.ResetTimer()
	for n := range b.N {
		s.ackedIDs([][16]byte{id(recentAcks + n)})
	}
}
