package tlsconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// makeCert builds a self-signed certificate for key with the given validity.
func makeCert(t testing.TB, key crypto.Signer, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0x1234abcd),
		Subject:      pkix.Name{CommonName: "test"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t testing.TB, key crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf("PRIVATE KEY", der)
}

func mustKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	var k crypto.Signer
	var err error
	switch kind {
	case "rsa1024":
		k, err = rsa.GenerateKey(rand.Reader, 1024)
	case "rsa2048":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "p224":
		k, err = ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	default:
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseKeyPairRefuses(t *testing.T) {
	now := time.Now()
	valid := func(k crypto.Signer) []byte {
		return pemOf("CERTIFICATE", makeCert(t, k, now.Add(-time.Hour), now.Add(time.Hour)).Raw)
	}
	p256, other := mustKey(t, "p256"), mustKey(t, "p256")
	rsa1024, p224 := mustKey(t, "rsa1024"), mustKey(t, "p224")
	encrypted := pemOf("ENCRYPTED PRIVATE KEY", []byte{1, 2, 3})

	tests := []struct {
		name      string
		cert, key []byte
		wantIs    error
		wantText  string
	}{
		{"rsa-1024", valid(rsa1024), pkcs8(t, rsa1024), ErrWeakKey, "1024 bits"},
		{"ec-p224", valid(p224), pkcs8(t, p224), ErrWeakKey, "P-224"},
		{"expired", pemOf("CERTIFICATE", makeCert(t, p256, now.Add(-48*time.Hour), now.Add(-time.Hour)).Raw), pkcs8(t, p256), ErrExpired, "expired"},
		{"not yet valid", pemOf("CERTIFICATE", makeCert(t, p256, now.Add(time.Hour), now.Add(48*time.Hour)).Raw), pkcs8(t, p256), ErrNotYetValid, "not yet valid"},
		{"mismatched key", valid(p256), pkcs8(t, other), ErrKeyMismatch, "does not match"},
		{"garbage", []byte("hello, not a certificate"), []byte("nor a key"), ErrNoPEM, "no CERTIFICATE"},
		{"corrupt certificate", pemOf("CERTIFICATE", []byte("junk")), pkcs8(t, p256), nil, "does not parse"},
		{"no key", valid(p256), []byte{}, errNoKeyPresent, ""},
		{"encrypted key", valid(p256), encrypted, nil, "encrypted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKeyPair(tt.cert, tt.key)
			if err == nil {
				t.Fatal("accepted, want an error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("got %v, want errors.Is %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("got %q, want it to mention %q", err, tt.wantText)
			}
		})
	}
}

func TestLoadKeyPairForms(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	rsaKey := mustKey(t, "rsa2048").(*rsa.PrivateKey)
	ecKey := mustKey(t, "p256").(*ecdsa.PrivateKey)
	ecDER, _ := x509.MarshalECPrivateKey(ecKey)
	rsaCert := pemOf("CERTIFICATE", makeCert(t, rsaKey, now.Add(-time.Hour), now.Add(time.Hour)).Raw)
	ecCert := pemOf("CERTIFICATE", makeCert(t, ecKey, now.Add(-time.Hour), now.Add(time.Hour)).Raw)
	write := func(name string, parts ...[]byte) string {
		p := filepath.Join(dir, name)
		var all []byte
		for _, b := range parts {
			all = append(all, b...)
		}
		os.WriteFile(p, all, 0o600)
		return p
	}
	tests := []struct{ name, cert, key string }{
		{"one file, key after cert", write("a.pem", rsaCert, pkcs8(t, rsaKey)), ""},
		{"one file, key before cert", write("b.pem", pkcs8(t, ecKey), ecCert), ""},
		{"two files, PKCS#1", write("c.crt", rsaCert), write("c.key", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)))},
		{"two files, SEC 1", write("d.crt", ecCert), write("d.key", pemOf("EC PRIVATE KEY", ecDER))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadKeyPair(tt.cert, tt.key)
			if err != nil {
				t.Fatal(err)
			}
			if c.Leaf == nil || c.PrivateKey == nil {
				t.Fatalf("incomplete certificate: leaf %v key %v", c.Leaf != nil, c.PrivateKey != nil)
			}
		})
	}
	if _, err := LoadKeyPair(filepath.Join(dir, "missing.pem"), ""); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want os.ErrNotExist", err)
	}
}

func TestIssueAndWrite(t *testing.T) {
	dir := t.TempDir()
	for _, kt := range KeyTypes[:2] {
		c, err := Issue(Template{CommonName: "gw", KeyType: kt, Days: 2}, nil)
		if err != nil {
			t.Fatal(err)
		}
		one := filepath.Join(dir, kt+".pem")
		if err := WriteKeyPair(c, one, ""); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(one); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", one, fi.Mode().Perm())
		}
		back, err := LoadKeyPair(one, "")
		if err != nil {
			t.Fatalf("%s: reload: %v", kt, err)
		}
		if Pin(back.Leaf) != Pin(c.Leaf) {
			t.Errorf("%s: pin changed across write and load", kt)
		}
		if d := time.Until(back.Leaf.NotAfter); d < 47*time.Hour || d > 49*time.Hour {
			t.Errorf("%s: valid for %v more, want about 48h", kt, d)
		}
	}
	if _, err := GenerateKey("dsa-1024"); err == nil {
		t.Error("GenerateKey accepted an unknown key type")
	}
}

func TestPins(t *testing.T) {
	c, _ := Issue(Template{CommonName: "x"}, nil)
	p := Pin(c.Leaf)
	if !strings.HasPrefix(p, "sha256//") || len(p) != len("sha256//")+44 {
		t.Fatalf("pin %q is not sha256// + 44 base64 characters", p)
	}
	if _, err := ParsePin(p); err != nil {
		t.Errorf("ParsePin(%q): %v", p, err)
	}
	for _, bad := range []string{"", "sha1//AAAA", "sha256//not-base64!", "sha256//AAAA"} {
		if _, err := ParsePin(bad); err == nil {
			t.Errorf("ParsePin(%q) accepted", bad)
		}
	}
}

// serveTLS runs a TLS server with cfg that answers each connection with
// "ok" and records its handshake errors.
func serveTLS(t *testing.T, cfg *tls.Config) (addr string, serverErrs chan error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	serverErrs = make(chan error, 16)
	testutil.Serve(t, ln, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		err := c.(*tls.Conn).Handshake()
		if err == nil {
			_, err = c.Write([]byte("ok"))
		}
		select {
		case serverErrs <- err:
		default: // more than a test reads: dropped, so the handler ends
		}
	})
	return ln.Addr().String(), serverErrs
}

// roundTrip connects, reads the server's "ok" and returns the state.
func roundTrip(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2)
	// ReadFull: the data and the server's close_notify may arrive in one
	// Read, which then returns both the bytes and io.EOF.
	if _, err := io.ReadFull(c, buf); err != nil {
		return c.ConnectionState(), err
	}
	return c.ConnectionState(), nil
}

func TestPinnedClient(t *testing.T) {
	dir := t.TempDir()
	server, _ := Issue(Template{CommonName: "central"}, nil)
	newKey, _ := Issue(Template{CommonName: "central-next"}, nil)
	WriteKeyPair(server, filepath.Join(dir, "s.pem"), "")
	id, err := LoadIdentity(filepath.Join(dir, "s.pem"), "")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveTLS(t, ServerConfig(id, nil))

	tests := []struct {
		name string
		pins []string
		ok   bool
	}{
		{"matching pin", []string{Pin(server.Leaf)}, true},
		{"rotation: old and new", []string{Pin(newKey.Leaf), Pin(server.Leaf)}, true},
		{"other key only", []string{Pin(newKey.Leaf)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, err := ParsePins(tt.pins)
			if err != nil {
				t.Fatal(err)
			}
			_, err = roundTrip(addr, PinnedClientConfig(set, "central"))
			if tt.ok && err != nil {
				t.Errorf("pinned handshake failed: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrPinMismatch) {
				t.Errorf("got %v, want ErrPinMismatch", err)
			}
		})
	}
}

func TestPFX(t *testing.T) {
	ca, _ := Issue(Template{CommonName: "ca", CA: true}, nil)
	agent, _ := Issue(Template{CommonName: "dev-1", Client: true}, &ca)
	for _, pw := range []string{"", "s3cret pässword"} {
		data, err := EncodePFX(agent, []*x509.Certificate{ca.Leaf}, pw)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePFX(data, pw)
		if err != nil {
			t.Fatalf("password %q: %v", pw, err)
		}
		if Fingerprint(back.Leaf) != Fingerprint(agent.Leaf) || len(back.Certificate) != 2 {
			t.Errorf("password %q: got leaf %s with %d certs, want %s with 2", pw, Fingerprint(back.Leaf), len(back.Certificate), Fingerprint(agent.Leaf))
		}
		if _, err := ParsePFX(data, pw+"x"); !errors.Is(err, ErrBadPassword) {
			t.Errorf("wrong password: got %v, want ErrBadPassword", err)
		}
		corrupt := append([]byte(nil), data...)
		corrupt = corrupt[:len(corrupt)/2]
		if _, err := ParsePFX(corrupt, pw); !errors.Is(err, ErrCorruptPFX) {
			t.Errorf("truncated PFX: got %v, want ErrCorruptPFX", err)
		}
	}
	if _, err := ParsePFX([]byte("-----BEGIN CERTIFICATE-----"), ""); !errors.Is(err, ErrCorruptPFX) {
		t.Errorf("PEM given as PFX: got %v, want ErrCorruptPFX", err)
	}
}

func FuzzParseKeyPair(f *testing.F) {
	c, _ := Issue(Template{CommonName: "seed"}, nil)
	k, _ := KeyPEM(c)
	f.Add(CertPEM(c), k)
	f.Add(append(CertPEM(c), k...), []byte{})
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		out, err := ParseKeyPair(certPEM, keyPEM)
		if err == nil && (out.Leaf == nil || out.PrivateKey == nil) {
			t.Fatal("accepted a pair without leaf or key")
		}
	})
}

func FuzzParsePFX(f *testing.F) {
	c, _ := Issue(Template{CommonName: "seed", Client: true}, nil)
	data, _ := EncodePFX(c, nil, "pw")
	f.Add(data, "pw")
	data, _ = EncodePFX(c, nil, "")
	f.Add(data, "")
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x03}, "")
	f.Fuzz(func(t *testing.T, data []byte, pw string) {
		out, err := ParsePFX(data, pw)
		if err == nil && (out.Leaf == nil || out.PrivateKey == nil) {
			t.Fatal("accepted a container without leaf or key")
		}
	})
}

// TestLoadOrRenew: a generated certificate that expires within the
// renewal window, or has expired, is renewed with the same key (the pin
// stays) and written back; one further from expiry is left alone.
func TestLoadOrRenew(t *testing.T) {
	file := filepath.Join(t.TempDir(), "gw.pem")
	tmpl := Template{CommonName: "gw", DNSNames: []string{"gw"}}
	short := tmpl
	short.Days = 10
	c, err := Issue(short, nil)
	if err != nil {
		t.Fatal(err)
	}
	WriteKeyPair(c, file, "")
	pin := Pin(c.Leaf)
	got, created, renewed, err := LoadOrRenew(file, tmpl, 30*24*time.Hour)
	if err != nil || created || !renewed || Pin(got.Leaf) != pin || time.Until(got.Leaf.NotAfter) < 800*24*time.Hour {
		t.Fatalf("10 days left: renewed %v (created %v), pin kept %v, not after %s, err %v", renewed, created, Pin(got.Leaf) == pin, got.Leaf.NotAfter, err)
	}
	if onDisk, err := LoadKeyPair(file, ""); err != nil || !onDisk.Leaf.NotAfter.Equal(got.Leaf.NotAfter) {
		t.Errorf("the renewal was not written: %v", err)
	}
	if _, _, renewed, _ := LoadOrRenew(file, tmpl, 30*24*time.Hour); renewed {
		t.Error("renewed again a certificate far from its expiry")
	}
	// Expired: 900 days later the key still renews it.
	defer func(f func() time.Time) { timeNow = f }(timeNow)
	timeNow = func() time.Time { return time.Now().Add(900 * 24 * time.Hour) }
	if _, err := LoadKeyPair(file, ""); !errors.Is(err, ErrExpired) {
		t.Fatalf("900 days on, the certificate loads: %v", err)
	}
	got, _, renewed, err = LoadOrRenew(file, tmpl, 30*24*time.Hour)
	if err != nil || !renewed || Pin(got.Leaf) != pin {
		t.Errorf("expired: renewed %v, pin kept %v, err %v", renewed, Pin(got.Leaf) == pin, err)
	}
}
