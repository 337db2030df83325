package loadtest

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// TestTCPRelayDelaysAndKeepsBytes: 20 ms each way adds 40 ms to a round
// trip, a rate cap stretches a transfer, and the bytes arrive intact and
// in order.
func TestTCPRelayDelaysAndKeepsBytes(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, echo, testutil.Echo)
	r, err := NewTCPRelay("127.0.0.1:0", echo.Addr().String(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	d := Impairment{Delay: 20 * time.Millisecond}
	r.Set(d, d)
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1)
	start := time.Now()
	c.Write([]byte{1})
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 40*time.Millisecond {
		t.Errorf("round trip %s through 20 ms each way, want at least 40 ms", rtt)
	}
	// 256 KiB at 1 MiB/s each way: at least a quarter of a second.
	r.Set(Impairment{Rate: 1 << 20}, Impairment{Rate: 1 << 20})
	c2, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	data := make([]byte, 256<<10)
	rand.Read(data)
	start = time.Now()
	go c2.Write(data)
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c2, got); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Errorf("256 KiB at 1 MiB/s took %s, want at least 250 ms", el)
	}
	if !bytes.Equal(got, data) {
		t.Error("bytes changed or reordered on the way")
	}
}

// TestUDPRelayIsReproducible: the same seed drops the same datagrams.
func TestUDPRelayIsReproducible(t *testing.T) {
	run := func() []int {
		sink, _ := net.ListenPacket("udp", "127.0.0.1:0")
		defer sink.Close()
		r, err := NewUDPRelay("127.0.0.1:0", sink.LocalAddr().String(), 99)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		r.Set(Impairment{Loss: 0.3}, Impairment{})
		c, _ := net.Dial("udp", r.Addr())
		defer c.Close()
		for i := range 200 {
			c.Write([]byte{byte(i)})
			time.Sleep(200 * time.Microsecond) // keep the sink's buffer from overflowing
		}
		var got []int
		buf := make([]byte, 16)
		for {
			sink.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, _, err := sink.ReadFrom(buf)
			if err != nil {
				return got
			}
			if n == 1 {
				got = append(got, int(buf[0]))
			}
		}
	}
	a, b := run(), run()
	if len(a) < 100 || len(a) > 180 || len(a) != len(b) {
		t.Fatalf("delivered %d and %d of 200 at 30 %% loss, want the same number, about 140", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("runs differ at %d: %d vs %d", i, a[i], b[i])
		}
	}
}
