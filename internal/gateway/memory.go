package gateway

import (
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Returning memory after a storm. Go keeps the heap a storm of new
// connections freed (handshakes allocate tens of KiB each, most of it
// garbage a moment later) up to its next collection's goal, about twice
// the live heap: after 15,000 agents connect, about 100 MB that nothing
// uses stays resident while they idle (pushpeers: 22 KiB per idle
// connection, 7 of them this). When the gateway has gone quiet (no
// collection for quietFor) holding at least minReturn of such memory,
// and more than a quarter of what is live, it is given back at once
// (debug.FreeOSMemory: one collection, then the free pages returned).
// Under steady load collections come more often than quietFor and
// nothing is done; at most one return per collection cycle.
const (
	quietFor       = 5 * time.Second
	minReturn      = 32 << 20
	memoryInterval = time.Second
)

// memoryReturner watches the runtime's heap figures.
type memoryReturner struct {
	returned prometheus.Counter
	samples  []rtmetrics.Sample
	cycles   uint64    // GC cycles at the last look
	since    time.Time // when cycles last changed
	stop     chan struct{}
	stopOnce sync.Once
}

func newMemoryReturner(reg prometheus.Registerer) *memoryReturner {
	m := &memoryReturner{
		returned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dpgate_memory_returned_bytes_total",
			Help: "Freed heap given back to the operating system once the gateway went quiet (no collection for 5 s) holding at least 32 MiB of it, as after a storm of new connections.",
		}),
		samples: []rtmetrics.Sample{
			{Name: "/gc/cycles/total:gc-cycles"},
			{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
			{Name: "/memory/classes/heap/objects:bytes"}, // live and not yet swept
		},
		since: time.Now(),
		stop:  make(chan struct{}),
	}
	reg.MustRegister(m.returned)
	return m
}

// check looks once; it returns the bytes given back (0: nothing done).
func (m *memoryReturner) check(now time.Time) uint64 {
	rtmetrics.Read(m.samples)
	cycles, free, objects := m.samples[0].Value.Uint64(), m.samples[1].Value.Uint64(), m.samples[2].Value.Uint64()
	if cycles != m.cycles {
		m.cycles, m.since = cycles, now
		return 0
	}
	if now.Sub(m.since) < quietFor || free < minReturn || free < objects/4 {
		return 0
	}
	debug.FreeOSMemory()
	rtmetrics.Read(m.samples)
	m.cycles, m.since = m.samples[0].Value.Uint64(), now
	left := m.samples[1].Value.Uint64()
	if left >= free {
		return 0
	}
	m.returned.Add(float64(free - left))
	return free - left
}

// run checks every memoryInterval until close.
func (m *memoryReturner) run(g *Gateway) error {
	t := time.NewTicker(memoryInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return nil
		case now := <-t.C:
			if n := m.check(now); n > 0 {
				g.log.Info("gave freed memory back to the system after a quiet spell", "mib", n>>20)
			}
		}
	}
}

// newMemory adds the returner as a part of the gateway.
func (g *Gateway) newMemory() {
	m := newMemoryReturner(g.tel.Registry)
	g.add(part{name: "memory",
		serve: []func() error{func() error { return m.run(g) }},
		close: func() error { m.stopOnce.Do(func() { close(m.stop) }); return nil },
	})
}
