package gateway

import (
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/series"
)

// Returning memory after a storm. Go keeps the heap a storm of new
// connections freed (handshakes allocate tens of KiB each, most of it
// garbage a moment later) up to its next collection's goal, about twice
// the live heap: after 15,000 agents connect, about 100 MB that nothing
// uses stays resident while they idle (pushpeers: 22 KiB per idle
// connection, 7 of them this). It is given back at once
// (debug.FreeOSMemory: one collection, then the free pages returned)
// when the gateway could free at least minReturn (free pages, and
// garbage made since the last collection), and more than a quarter of
// what is live, and either
//   - a storm ended: at least stormSessions push sessions opened since
//     the last return and none for stormOver, or
//   - it went quiet: less than quietAlloc allocated in quietFor.
//
// Under steady load sessions keep opening or memory keeps being
// allocated, and nothing is done.
const (
	quietFor       = 5 * time.Second
	quietAlloc     = 4 << 20
	stormSessions  = 1000
	stormOver      = 2 * time.Second
	minReturn      = 32 << 20
	memoryInterval = time.Second
)

// memoryReturner watches the runtime's heap figures and the sessions
// opened.
type memoryReturner struct {
	returned prometheus.Counter
	samples  []rtmetrics.Sample
	allocs   uint64    // bytes allocated so far, when the quiet window began
	since    time.Time // when the quiet window began

	opened       func() uint64 // sessions opened so far; nil: no push server
	openedAt     uint64        // at the last return
	openedLast   uint64        // at the last look
	openedChange time.Time     // when openedLast last changed

	stop     chan struct{}
	stopOnce sync.Once
}

func newMemoryReturner(reg prometheus.Registerer, opened func() uint64) *memoryReturner {
	m := &memoryReturner{
		returned: series.On(reg).Counter("dpgate_memory_returned_bytes_total",
			"Freed heap given back to the operating system (when at least 32 MiB could be) after a storm of new push sessions ended or once the gateway went quiet."),
		samples: []rtmetrics.Sample{
			{Name: "/gc/heap/allocs:bytes"},              // allocated so far
			{Name: "/memory/classes/heap/free:bytes"},    // free, not yet returned
			{Name: "/memory/classes/heap/objects:bytes"}, // live and garbage not yet swept
			{Name: "/gc/heap/live:bytes"},                // live at the last collection
			{Name: "/memory/classes/heap/released:bytes"},
		},
		opened: opened,
		since:  time.Now(),
		stop:   make(chan struct{}),
	}
	m.openedChange = m.since
	return m
}

// check looks once; it returns the bytes given back (0: nothing done).
func (m *memoryReturner) check(now time.Time) uint64 {
	rtmetrics.Read(m.samples)
	allocs, free, objects, live, released := m.samples[0].Value.Uint64(), m.samples[1].Value.Uint64(),
		m.samples[2].Value.Uint64(), m.samples[3].Value.Uint64(), m.samples[4].Value.Uint64()
	if allocs-m.allocs > quietAlloc {
		m.allocs, m.since = allocs, now
	}
	var opened uint64
	if m.opened != nil {
		opened = m.opened()
	}
	if opened != m.openedLast {
		m.openedLast, m.openedChange = opened, now
	}
	quiet := now.Sub(m.since) >= quietFor
	stormEnded := opened-m.openedAt >= stormSessions && now.Sub(m.openedChange) >= stormOver
	// What a collection now would leave free: the free pages, and the
	// garbage made since the last one (a storm's handshakes).
	reclaimable := free + objects - min(live, objects)
	if !(quiet || stormEnded) || reclaimable < minReturn || reclaimable < live/4 {
		return 0
	}
	debug.FreeOSMemory()
	rtmetrics.Read(m.samples)
	m.allocs, m.since, m.openedAt = m.samples[0].Value.Uint64(), now, opened
	after := m.samples[4].Value.Uint64()
	if after <= released {
		return 0
	}
	m.returned.Add(float64(after - released))
	return after - released
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
				g.log.Info("gave freed memory back to the system", "mib", n>>20)
			}
		}
	}
}

// newMemory adds the returner as a part of the gateway.
func (g *Gateway) newMemory() {
	var opened func() uint64
	if g.push != nil {
		opened = g.push.SessionsOpened
	}
	m := newMemoryReturner(g.tel.Registry, opened)
	g.add(part{name: "memory",
		serve: []func() error{func() error { return m.run(g) }},
		close: func() error { m.stopOnce.Do(func() { close(m.stop) }); return nil },
	})
}
