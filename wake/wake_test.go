package wake

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"

	"github.com/dpgate/dpgate/internal/testutil"
)

// testKeys are keys from a random secret, kept in memory only: the tests
// that use them also run under Wine, where Go cannot remove a temporary
// directory with a file in it (os.RemoveAll: "Invalid function").
func testKeys(t testing.TB) *Keys {
	return keysFrom([]byte(rand.Text()))
}

// TestDatagramLayout checks the byte offsets documented in PROTOCOL.md.
func TestDatagramLayout(t *testing.T) {
	d := &Datagram{Version: 1, Kind: KindWakeUp, DeviceID: "pc-7", Timestamp: 1767225600000, Nonce: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}}
	SignHMAC(d, []byte("0123456789abcdef"))
	b, err := Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	want := "4450574b" + "01" + "01" + "02" + "04" + hex.EncodeToString([]byte("pc-7")) +
		"0000019b76daa800" + "0102030405060708"
	if got := hex.EncodeToString(b[:len(b)-32]); got != want {
		t.Errorf("signed part\n got %s\nwant %s", got, want)
	}
	if len(b) != 8+4+8+8+32 {
		t.Errorf("length %d, want %d", len(b), 8+4+8+8+32)
	}
	var back Datagram
	if err := back.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil {
		t.Fatal(err)
	}
	if back.DeviceID != "pc-7" || back.Timestamp != d.Timestamp || back.Nonce != d.Nonce || !bytes.Equal(back.Signature, d.Signature) {
		t.Errorf("decoded %+v, want %+v", back, d)
	}
}

func TestWakeOnLANLayout(t *testing.T) {
	mac, _ := net.ParseMAC("00:11:22:33:44:55")
	for _, pw := range [][]byte{nil, {1, 2, 3, 4}, {1, 2, 3, 4, 5, 6}} {
		b, err := Marshal(&WakeOnLAN{MAC: mac, Password: pw})
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != 102+len(pw) || !bytes.Equal(b[:6], bytes.Repeat([]byte{0xFF}, 6)) || !bytes.Equal(b[96:102], mac) {
			t.Errorf("magic packet with %d-byte password: % x", len(pw), b)
		}
		var w WakeOnLAN
		if err := w.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil || w.MAC.String() != mac.String() || !bytes.Equal(w.Password, pw) {
			t.Errorf("decoded %v %x, %v", w.MAC, w.Password, err)
		}
	}
	bad := bytes.Repeat([]byte{0xFF}, 102)
	bad[50] = 0
	if err := new(WakeOnLAN).DecodeFromBytes(bad, gopacket.NilDecodeFeedback); !errors.Is(err, ErrNotMagic) {
		t.Errorf("a broken repetition decoded: %v", err)
	}
}

// TestCheckRejects: forged, replayed, expired, truncated, wrong kind.
func TestCheckRejects(t *testing.T) {
	k := testKeys(t)
	s, _ := New(Config{Keys: k, Lookup: func(string) (Target, bool) { return Target{}, false }, Logger: testutil.Quiet()})
	key := func(string) []byte { return k.Secret }
	good := func(ts time.Time) []byte {
		d := NewDatagram(KindRequest, "pc-1", ts.UnixMilli())
		SignHMAC(d, k.Secret)
		b, _ := Marshal(d)
		return b
	}
	b := good(time.Now())
	if _, err := s.Check(b, KindRequest, key); err != nil {
		t.Fatalf("a good request: %v", err)
	}
	forged := bytes.Clone(good(time.Now()))
	forged[9] ^= 1 // the device id
	// Well signed, but the id breaks the device id rule (docs/PROTOCOL.md),
	// laid out by hand because Marshal refuses such ids.
	badID := func(id string) []byte {
		d := NewDatagram(KindRequest, id, time.Now().UnixMilli())
		SignHMAC(d, k.Secret)
		return append(d.Signed(), d.Signature...)
	}
	cases := []struct {
		name string
		b    []byte
		kind uint8
		want string
	}{
		{"replayed", b, KindRequest, "replay"},
		{"forged", forged, KindRequest, "signature"},
		{"expired", good(time.Now().Add(-time.Minute)), KindRequest, "expired"},
		{"from the future", good(time.Now().Add(time.Minute)), KindRequest, "expired"},
		{"truncated", good(time.Now())[:30], KindRequest, "truncated"},
		{"wrong kind", good(time.Now()), KindShutdown, "kind"},
		{"not ours", []byte("GET / HTTP/1.1\r\n\r\n"), KindRequest, "not_dpgate"},
		{"129-byte id", badID(strings.Repeat("a", 129)), KindRequest, "malformed"},
		{"id with a space", badID("pc 1"), KindRequest, "malformed"},
		{"id with a newline", badID("pc\n1"), KindRequest, "malformed"},
		{"id not UTF-8", badID("pc\xff"), KindRequest, "malformed"},
	}
	for _, c := range cases {
		_, err := s.Check(c.b, c.kind, key)
		if err == nil || reason(err) != c.want {
			t.Errorf("%s: %v (reason %q), want reason %q", c.name, err, reason(err), c.want)
		}
	}
	if _, err := Marshal(NewDatagram(KindRequest, strings.Repeat("a", 129), 0)); err == nil {
		t.Error("Marshal wrote a datagram with a 129-byte device id")
	}
	// Signed with another key.
	d := NewDatagram(KindRequest, "pc-1", time.Now().UnixMilli())
	SignHMAC(d, []byte("not the gateway's secret"))
	other, _ := Marshal(d)
	if _, err := s.Check(other, KindRequest, key); reason(err) != "signature" {
		t.Errorf("other key: %v", err)
	}
}

// TestWakeSendsDatagramAndMagicPackets captures what Wake sends on
// loopback, verifies the datagram with the public key an agent is given,
// decodes both with gopacket (wake/capture's test reads them from a pcap
// file).
func TestWakeSendsDatagramAndMagicPackets(t *testing.T) {
	k := testKeys(t)
	agent, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	defer agent.Close()
	wol, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	defer wol.Close()
	mac, _ := net.ParseMAC("02:00:00:00:00:07")
	s, _ := New(Config{Keys: k, AgentPort: agent.LocalAddr().(*net.UDPAddr).Port, WOLPorts: []int{wol.LocalAddr().(*net.UDPAddr).Port},
		Lookup: func(d string) (Target, bool) {
			return Target{Addr: netip.MustParseAddr("127.0.0.1"), MAC: mac}, d == "pc-7"
		}, Logger: testutil.Quiet()})

	r := s.Wake("pc-7", "api")
	if !r.Sent() {
		t.Fatalf("nothing sent: %+v", r)
	}
	if last, ok := s.Last("pc-7"); !ok || last.Reason != "api" {
		t.Errorf("Last = %+v, %v", last, ok)
	}
	read := func(pc net.PacketConn) []byte {
		pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2048)
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n]
	}
	dgram, magic := read(agent), read(wol)
	v, err := ParseKey(k.PublicKeyString())
	if err != nil {
		t.Fatal(err)
	}
	var d Datagram
	if err := d.DecodeFromBytes(dgram, gopacket.NilDecodeFeedback); err != nil || d.DeviceID != "pc-7" || d.Kind != KindWakeUp {
		t.Fatalf("datagram %+v, %v", d, err)
	}
	if err := v.Verify(&d); err != nil {
		t.Errorf("the agent's key does not verify the wake-up: %v", err)
	}

	var w WakeOnLAN
	if err := w.DecodeFromBytes(magic, gopacket.NilDecodeFeedback); err != nil || w.MAC.String() != mac.String() {
		t.Errorf("magic packet for %s, %v; want one for %s", w.MAC, err, mac)
	}
}

func TestRateLimits(t *testing.T) {
	s, _ := New(Config{Keys: testKeys(t), Lookup: func(string) (Target, bool) { return Target{}, false }, Logger: testutil.Quiet()})
	limited := 0
	for range 10 {
		if s.Wake("pc-1", "api").Limited {
			limited++
		}
	}
	if limited != 7 {
		t.Errorf("%d of 10 wake-ups in a row limited, want 7 (burst of 3)", limited)
	}
	if s.Wake("pc-2", "api").Limited {
		t.Error("another device is limited by the first one's wake-ups")
	}
}

func FuzzDatagram(f *testing.F) {
	d := NewDatagram(KindWakeUp, "pc-1", 1)
	SignHMAC(d, []byte("0123456789abcdef"))
	b, _ := Marshal(d)
	f.Add(b)
	SignEd25519(d, testKeys(f).Signing)
	b, _ = Marshal(d)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Datagram
		if d.DecodeFromBytes(b, gopacket.NilDecodeFeedback) != nil {
			return
		}
		out, err := Marshal(&d)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("decoded %x, re-encoded %x, %v", b, out, err)
		}
	})
}

func FuzzWakeOnLAN(f *testing.F) {
	b, _ := Marshal(&WakeOnLAN{MAC: net.HardwareAddr{1, 2, 3, 4, 5, 6}, Password: []byte{1, 2, 3, 4}})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var w WakeOnLAN
		if w.DecodeFromBytes(b, gopacket.NilDecodeFeedback) != nil {
			return
		}
		out, err := Marshal(&w)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("decoded %x, re-encoded %x, %v", b, out, err)
		}
	})
}

// TestConfiguredSecretFileMustExist: a wake.secret_file that names a
// missing file is an error naming it, and nothing is created there (a
// typo would otherwise split a cluster's shared key); the default path in
// the data directory is still created on first start.
func TestConfiguredSecretFileMustExist(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "typo", "wake.secret")
	_, err := LoadOrCreateKeys(dir, missing)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("LoadOrCreateKeys with a missing secret_file: %v, want an error naming it", err)
	}
	if _, err := os.Stat(filepath.Dir(missing)); err == nil {
		t.Error("the missing path's directory was created")
	}
	if _, err := LoadOrCreateKeys(dir, ""); err != nil {
		t.Fatalf("default path: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, SecretFile)); err != nil {
		t.Errorf("default secret not created: %v", err)
	}
}

// TestWakeStateBounded: wake-ups of ever new ids keep state for at most
// MaxDevices of them, and those of unknown devices log nothing at info.
func TestWakeStateBounded(t *testing.T) {
	var logs bytes.Buffer
	s, _ := New(Config{Keys: testKeys(t), Lookup: func(string) (Target, bool) { return Target{}, false }, MaxDevices: 100, Total: 1e6,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	for i := range 1000 {
		s.Wake(fmt.Sprintf("pc-%d", i), "push")
	}
	if _, ok := s.Last("pc-0"); ok {
		t.Error("the first of 1,000 ids is still tracked with MaxDevices 100")
	}
	if r, ok := s.Last("pc-999"); !ok || !r.Unknown {
		t.Errorf("the last id: %+v, %v; want its unknown-device result", r, ok)
	}
	s.mu.Lock()
	perDev, last := s.perDev.Len(), s.last.Len()
	s.mu.Unlock()
	if perDev > 100 || last > 100 {
		t.Errorf("%d limiters and %d results kept, want at most 100 each", perDev, last)
	}
	if strings.Contains(logs.String(), "wake-up") {
		t.Errorf("wake-ups of unknown devices logged at info:\n%.300s", logs.String())
	}
	// A recent device keeps its limiter: the 4th wake-up in a row is limited.
	for range 3 {
		s.Wake("pc-999", "api")
	}
	if r := s.Wake("pc-999", "api"); !r.Limited {
		t.Error("pc-999's fifth wake-up in a row (burst 3) was not rate limited")
	}
}

// TestAgentSideDatagrams: what the reference agent does with datagrams,
// without a socket (so it also runs under Wine, whose UDP sockets Go
// cannot open). A wake-up as the gateway signs it (Ed25519, or HMAC with
// the device's secret) passes the agent's Receiver once; a replay, a
// wake-up for another device, a shutdown notice and a forged one do not.
// The agent's shutdown notice passes the gateway's check, and not when
// signed with another device's secret.
func TestAgentSideDatagrams(t *testing.T) {
	k := testKeys(t)
	wakeUp := func(device string, kind uint8, sign func(*Datagram)) []byte {
		d := NewDatagram(kind, device, time.Now().UnixMilli())
		sign(d)
		b, err := Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ed := func(d *Datagram) { SignEd25519(d, k.Signing) }
	hmacOf := func(device string) func(*Datagram) {
		return func(d *Datagram) { SignHMAC(d, k.DeviceSecret(device)) }
	}
	public, err := ParseKey(k.PublicKeyString())
	if err != nil {
		t.Fatal(err)
	}
	secret, err := ParseKey(k.DeviceSecretString("pc-7"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		key  Verifier
		sign func(*Datagram)
	}{{"ed25519", public, ed}, {"hmac", secret, hmacOf("pc-7")}} {
		r := NewReceiver(c.key)
		b := wakeUp("pc-7", KindWakeUp, c.sign)
		if d, err := r.Check(b, "pc-7"); err != nil || d.DeviceID != "pc-7" {
			t.Errorf("%s: a wake-up for this device: %v", c.name, err)
		}
		forged := bytes.Clone(wakeUp("pc-7", KindWakeUp, c.sign))
		forged[len(forged)-1] ^= 1
		for _, bad := range []struct {
			what, want string
			b          []byte
		}{
			{"replayed", "replay", b},
			{"forged", "signature", forged},
			{"a shutdown notice", "kind", wakeUp("pc-7", KindShutdown, c.sign)},
		} {
			if _, err := r.Check(bad.b, "pc-7"); Reason(err) != bad.want {
				t.Errorf("%s: %s: %v (reason %q), want reason %q", c.name, bad.what, err, Reason(err), bad.want)
			}
		}
		if _, err := r.Check(wakeUp("pc-8", KindWakeUp, ed), "pc-7"); err == nil {
			t.Errorf("%s: a wake-up for another device passed", c.name)
		}
	}

	s, _ := New(Config{Keys: k, Lookup: func(string) (Target, bool) { return Target{}, false }, Logger: testutil.Quiet()})
	notice, err := ShutdownNotice("pc-7", secret)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := s.Check(notice, KindShutdown, k.DeviceSecret); err != nil || d.DeviceID != "pc-7" {
		t.Errorf("the agent's shutdown notice: %v", err)
	}
	other, _ := ParseKey(k.DeviceSecretString("pc-8"))
	forged, _ := ShutdownNotice("pc-7", other)
	if _, err := s.Check(forged, KindShutdown, k.DeviceSecret); Reason(err) != "signature" {
		t.Errorf("a notice for pc-7 signed with pc-8's secret: %v", err)
	}
	if _, err := ShutdownNotice("pc-7", public); err == nil {
		t.Error("a shutdown notice signed with the gateway's public key")
	}
}

// TestPushWakeThatFails: a node that may hold the device did not answer
// (PushWake's error): the result lists that push attempt with its error,
// and the datagram still goes out. A device connected to no node
// (ErrNotConnected) lists no push attempt.
func TestPushWakeThatFails(t *testing.T) {
	agent, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	defer agent.Close()
	var pushErr error
	s, _ := New(Config{Keys: testKeys(t), AgentPort: agent.LocalAddr().(*net.UDPAddr).Port, WOLPorts: []int{},
		Lookup:   func(string) (Target, bool) { return Target{Addr: netip.MustParseAddr("127.0.0.1")}, true },
		PushWake: func(string) (string, error) { return "node-2", pushErr },
		Logger:   testutil.Quiet()})

	pushErr = fmt.Errorf("node node-2: %w", os.ErrDeadlineExceeded)
	r := s.Wake("pc-1", "api")
	failed, ok := r.FailedPush()
	if !ok || failed.To != "node-2" || !strings.Contains(failed.Err, "i/o timeout") {
		t.Errorf("attempts %+v: want the failed push to node-2 listed with its error", r.Attempts)
	}
	if !r.Sent() || r.Attempts[len(r.Attempts)-1].Via != "datagram" {
		t.Errorf("attempts %+v: want the datagram sent after the failed push", r.Attempts)
	}

	pushErr = ErrNotConnected
	r = s.Wake("pc-2", "api")
	if _, ok := r.FailedPush(); ok || len(r.Attempts) != 1 || r.Attempts[0].Via != "datagram" {
		t.Errorf("attempts %+v: want the datagram alone for a device connected to no node", r.Attempts)
	}
}
