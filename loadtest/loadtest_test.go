package loadtest

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpgate/dpgate/tlsconf"
)

// newSink runs a sink on 127.0.0.1:0 and returns a direct target for it.
func newSink(t *testing.T) (*Sink, Target) {
	t.Helper()
	c, err := tlsconf.Issue(tlsconf.Template{CommonName: "sink"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "sink.pem")
	tlsconf.WriteKeyPair(c, f, "")
	id, err := tlsconf.LoadIdentity(f, "")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewSink(tlsconf.ServerConfig(id, nil))
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	pins, _ := tlsconf.ParsePins([]string{id.Pin()})
	cfg := tlsconf.PinnedClientConfig(pins, "sink")
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	return s, Target{Name: "direct", Addr: ln.Addr().String(), TLS: cfg, PID: os.Getpid()}
}

// TestThroughputAccounting: what the streams report equals what the
// sink read, stream by stream.
func TestThroughputAccounting(t *testing.T) {
	s, target := newSink(t)
	r, err := Throughput(context.Background(), target, 3, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Mismatch != 0 || r.Bytes == 0 || r.Bytes != s.Received() {
		t.Errorf("throughput reports %d bytes (%d mismatched streams), sink read %d; want equal and non-zero", r.Bytes, r.Mismatch, s.Received())
	}
	// The target's PID is this process, which encrypted and decrypted
	// every byte: some CPU per GiB, and not absurdly much (a second per
	// MiB would mean the ticks were misread).
	if r.CPUPerGiB <= 0 || r.CPUPerGiB > 1024 {
		t.Errorf("CPU per GiB %v s, want a positive figure below 1024 s", r.CPUPerGiB)
	}
}

func TestLatencyAndConnect(t *testing.T) {
	_, target := newSink(t)
	l, err := Latency(context.Background(), target, 2, 32, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if l.Requests == 0 || l.P50us <= 0 || l.P99us < l.P50us {
		t.Errorf("latency result %+v: want requests and p99 >= p50 > 0", l)
	}
	c := ConnectRate(context.Background(), target, 2, 200*time.Millisecond)
	if c.OK == 0 || c.Failed != 0 {
		t.Errorf("connect result %+v: want successes and no failures (first error %q)", c, c.FirstErr)
	}
	// A target nobody listens on: every attempt fails and says why.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := target
	dead.Addr = ln.Addr().String()
	ln.Close()
	if c := ConnectRate(context.Background(), dead, 1, 100*time.Millisecond); c.OK != 0 || c.Failed == 0 || c.FirstErr == "" {
		t.Errorf("connect to a closed port: %+v, want only failures with an error", c)
	}
}

func TestIdleMemoryAndRSS(t *testing.T) {
	_, target := newSink(t)
	rss, err := ProcessRSS(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("ProcessRSS(self) = %d, %v", rss, err)
	}
	r, err := IdleMemory(context.Background(), target, 50, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Conns != 50 || r.RSSAfterBytes <= 0 {
		t.Errorf("idle result %+v", r)
	}
	target.PID = 0
	if _, err := IdleMemory(context.Background(), target, 1, 0); err == nil {
		t.Error("IdleMemory without a PID succeeded")
	}
}
