package tlsconf

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"

	"github.com/dpgate/dpgate/internal/store"
)

// benchHandshake measures one full (non-resumed) TLS 1.3 handshake over
// net.Pipe: both ends run in this process, so the figure is the CPU cost
// of the handshake on both sides, not network time.
func benchHandshake(b *testing.B, keyType string, withAllowList, classic bool) {
	dir := b.TempDir()
	server, _ := Issue(Template{CommonName: "gw", KeyType: keyType}, nil)
	WriteKeyPair(server, filepath.Join(dir, "gw.pem"), "")
	id, err := LoadIdentity(filepath.Join(dir, "gw.pem"), "")
	if err != nil {
		b.Fatal(err)
	}
	agent, _ := Issue(Template{CommonName: "dev", Client: true}, nil)
	var allow *AllowList
	if withAllowList {
		db, err := store.Open(dir, store.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		allow, _ = NewAllowList(db)
		// A list with other entries in it, so the lookup is not trivial.
		for i := 0; i < 200; i++ {
			c, _ := Issue(Template{CommonName: "other", Client: true, KeyType: "ecdsa-p256"}, nil)
			allow.Add(c.Leaf)
		}
		allow.Add(agent.Leaf)
	}
	scfg := ServerConfig(id, allow)
	scfg.SessionTicketsDisabled = true
	pins, _ := ParsePins([]string{id.Pin()})
	ccfg := PinnedClientConfig(pins, "gw")
	ccfg.Certificates = []tls.Certificate{agent}
	scfg.CurvePreferences = KeyExchange(!classic)
	ccfg.CurvePreferences = KeyExchange(!classic)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		c1, c2 := net.Pipe()
		errc := make(chan error, 1)
		go func() {
			errc <- tls.Server(c2, scfg).Handshake()
		}()
		c := tls.Client(c1, ccfg)
		if err := c.Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		// Close the pipe ends, not the TLS conns: over a synchronous pipe
		// two close_notify writes would block each other.
		c1.Close()
		c2.Close()
	}
}

func BenchmarkHandshake(b *testing.B) {
	for _, kt := range []string{"ecdsa-p256", "rsa-2048"} {
		b.Run(kt+"/server-auth", func(b *testing.B) { benchHandshake(b, kt, false, false) })
		b.Run(kt+"/client-cert+allow-list", func(b *testing.B) { benchHandshake(b, kt, true, false) })
	}
	// Go's default hybrid X25519MLKEM768 against plain X25519 (what
	// tls.post_quantum: false and OpenSSL 3.0 peers use).
	b.Run("ecdsa-p256/server-auth/x25519", func(b *testing.B) { benchHandshake(b, "ecdsa-p256", false, true) })
	b.Run("ecdsa-p256/client-cert+allow-list/x25519", func(b *testing.B) { benchHandshake(b, "ecdsa-p256", true, true) })
}

// BenchmarkAllowListCheck is the per-handshake cost of the allow-list
// lookup alone (SHA-256 of the certificate and a map lookup).
func BenchmarkAllowListCheck(b *testing.B) {
	db, err := store.Open(b.TempDir(), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	allow, _ := NewAllowList(db)
	agent, _ := Issue(Template{CommonName: "dev", Client: true}, nil)
	allow.Add(agent.Leaf)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := allow.Check(agent.Leaf); err != nil {
				b.Fatal(err)
			}
		}
	})
}
