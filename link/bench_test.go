package link_test

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/dpgate/dpgate/link"
)

// BenchmarkReflector measures probes answered per second: a client keeps
// 64 probes in flight against a reflector, in this process or, with
// DPGATE_REFLECTOR=host:port, a separate one (dpgate reflect, which can
// be pinned to its own core):
//
//	taskset -c 0 go test -run '^$' -bench Reflector -cpu 1 ./link
//	taskset -c 0 dpgate reflect --listen 127.0.0.1:8620 &
//	DPGATE_REFLECTOR=127.0.0.1:8620 taskset -c 1 go test -run '^$' -bench Reflector -cpu 1 ./link
func BenchmarkReflector(b *testing.B) {
	target := os.Getenv("DPGATE_REFLECTOR")
	if target == "" {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Close()
		go (&link.Reflector{}).Serve(pc) // ends at Close
		target = pc.LocalAddr().String()
	}
	raddr, _ := net.ResolveUDPAddr("udp", target)
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	out := make([]byte, link.PacketSize)
	in := make([]byte, 1500)
	const window = 64
	seq := uint32(0)
	send := func() {
		p := link.Sender{Seq: seq, Timestamp: time.Now()}
		seq++
		c.Write(p.Marshal(out))
	}
	b.ResetTimer()
	start := time.Now()
	for range min(window, b.N) {
		send()
	}
	got := 0
	for got < b.N {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(in); err != nil { // a probe lost in a full buffer: send another
			send()
			continue
		}
		got++
		if int(seq) < b.N+window && got+window <= b.N {
			send()
		}
	}
	b.ReportMetric(float64(got)/time.Since(start).Seconds(), "probes/s")
}
