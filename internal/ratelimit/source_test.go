package ratelimit

import (
	"net"
	"testing"
	"time"
)

func TestPerSource(t *testing.T) {
	l := New(10) // burst 20
	now := time.Unix(1e9, 0)
	a := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1000}
	b := &net.TCPAddr{IP: net.ParseIP("192.0.2.2"), Port: 1000}
	allowed := 0
	for range 100 {
		if l.Allow(a, now) {
			allowed++
		}
	}
	if allowed != 20 {
		t.Errorf("a burst of 100 from one source: %d allowed, want the burst of 20", allowed)
	}
	if !l.Allow(b, now) {
		t.Error("another source was limited by the first one's flood")
	}
	if !l.Allow(a, now.Add(200*time.Millisecond)) {
		t.Error("no token back after 200 ms at 10/s")
	}
	// One IPv6 host holds a /64: its addresses share one bucket.
	for i := range 30 {
		ip := net.ParseIP("2001:db8::1")
		ip[15] = byte(i)
		l.Allow(&net.TCPAddr{IP: ip, Port: 1}, now)
	}
	if l.Allow(&net.TCPAddr{IP: net.ParseIP("2001:db8::ffff"), Port: 1}, now) {
		t.Error("a /64 got more than its burst by changing addresses")
	}
	if l.Len() != 3 {
		t.Errorf("%d sources tracked, want 3", l.Len())
	}
	// Quiet sources are forgotten.
	l.Allow(b, now.Add(3*time.Minute))
	if l.Len() != 1 {
		t.Errorf("%d sources tracked after 3 quiet minutes, want 1", l.Len())
	}
	var none *PerSource = New(-1)
	if !none.Allow(a, now) {
		t.Error("a negative rate limited")
	}
}

// TestSourcesBounded: connections from more sources than MaxSources
// within a minute (a local user can connect from every address of
// 127.0.0.0/8; an IPv6 host may hold many /64s) keep MaxSources buckets,
// the least recently seen forgotten first. Seen: 63,535 connections from
// as many loopback addresses in 30 s grew a gateway from 36 to 57 MB,
// each source kept a minute.
func TestSourcesBounded(t *testing.T) {
	l := New(1) // burst 2
	now := time.Unix(1e9, 0)
	busy := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1000}
	l.Allow(busy, now)
	l.Allow(busy, now) // its burst spent
	for i := range MaxSources + 1000 {
		ip := net.IPv4(10, byte(i>>16), byte(i>>8), byte(i))
		if !l.Allow(&net.TCPAddr{IP: ip, Port: 1}, now) {
			t.Fatalf("the first connection from %s refused", ip)
		}
		if i%1000 == 0 && l.Allow(busy, now) { // seen again, so kept
			t.Fatalf("a source past its burst allowed after %d others", i)
		}
	}
	if n := l.Len(); n != MaxSources {
		t.Errorf("%d sources kept, want %d", n, MaxSources)
	}
}
