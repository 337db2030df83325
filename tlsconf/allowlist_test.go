package tlsconf

import (
	"crypto/tls"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/store"
)

func openStore(t *testing.T, dir string) *store.DB {
	t.Helper()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestAllowListOperations(t *testing.T) {
	dir := t.TempDir()
	db := openStore(t, dir)
	a, err := NewAllowList(db)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := Issue(Template{CommonName: "ca", CA: true}, nil)
	var certs []tls.Certificate
	for _, cn := range []string{"dev-a", "dev-b", "dev-c"} {
		c, _ := Issue(Template{CommonName: cn, Client: true}, &ca)
		certs = append(certs, c)
	}
	added, err := a.Add(certs[0].Leaf, certs[1].Leaf, certs[2].Leaf)
	if err != nil || len(added) != 3 {
		t.Fatalf("Add: %d entries, %v; want 3", len(added), err)
	}
	if again, _ := a.Add(certs[0].Leaf); len(again) != 1 || a.Len() != 3 {
		t.Errorf("adding a present certificate: got %d entries and %d in the list, want 1 and 3", len(again), a.Len())
	}

	fp := added[1].Fingerprint
	serial := added[2].Serial
	filters := []struct {
		name string
		f    Filter
		want int
	}{
		{"all", Filter{}, 3},
		{"fingerprint part, upper case with colons", Filter{Fingerprint: strings.ToUpper(fp[2:4] + ":" + fp[4:12])}, 1},
		{"serial part, lower case", Filter{Serial: strings.ToLower(serial[3:12])}, 1},
		{"both must match", Filter{Fingerprint: fp[:10], Serial: serial[:12]}, 0},
		{"no match", Filter{Serial: "ZZZ"}, 0},
	}
	for _, tt := range filters {
		if got := a.List(tt.f); len(got) != tt.want {
			t.Errorf("%s: List returned %d entries, want %d", tt.name, len(got), tt.want)
		}
	}

	removed, err := a.Remove(fp, "00ff")
	if !errors.Is(err, ErrNotInList) || len(removed) != 1 {
		t.Errorf("Remove(known, unknown) = %d removed, %v; want 1 removed and ErrNotInList", len(removed), err)
	}
	if err := a.Check(certs[1].Leaf); err == nil {
		t.Error("removed certificate still passes Check")
	}
	if err := a.Check(certs[0].Leaf); err != nil {
		t.Errorf("listed certificate refused: %v", err)
	}

	// The list persists: a new AllowList on a reopened store sees it.
	db.Close()
	db = openStore(t, dir)
	defer db.Close()
	b, err := NewAllowList(db)
	if err != nil {
		t.Fatal(err)
	}
	if b.Len() != 2 {
		t.Errorf("after reopening: %d entries, want 2", b.Len())
	}
}

func TestNormalizeFingerprint(t *testing.T) {
	for in, want := range map[string]string{
		"AB:CD:EF":                 "abcdef",
		"sha256:abcd":              "abcd",
		"SHA256 Fingerprint=AB:CD": "abcd",
		" 0a1b2c ":                 "0a1b2c",
	} {
		if got := NormalizeFingerprint(in); got != want {
			t.Errorf("NormalizeFingerprint(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestAllowListAppliesToResumedSessions: a certificate removed from the
// list is refused at the next handshake even when the client resumes a
// session from before the removal.
func TestAllowListAppliesToResumedSessions(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			dir := t.TempDir()
			db := openStore(t, dir)
			defer db.Close()
			allow, _ := NewAllowList(db)
			server, _ := Issue(Template{CommonName: "gw"}, nil)
			WriteKeyPair(server, filepath.Join(dir, "gw.pem"), "")
			id, _ := LoadIdentity(filepath.Join(dir, "gw.pem"), "")
			agent, _ := Issue(Template{CommonName: "dev-1", Client: true}, nil)
			stranger, _ := Issue(Template{CommonName: "dev-2", Client: true}, nil)
			allow.Add(agent.Leaf)

			scfg := ServerConfig(id, allow)
			scfg.MaxVersion = v
			addr, serverErrs := serveTLS(t, scfg)
			pins, _ := ParsePins([]string{id.Pin()})
			client := func(c tls.Certificate, cache tls.ClientSessionCache) *tls.Config {
				cfg := PinnedClientConfig(pins, "gw")
				cfg.Certificates = []tls.Certificate{c}
				cfg.ClientSessionCache = cache
				cfg.MaxVersion = v
				return cfg
			}
			cache := tls.NewLRUClientSessionCache(4)

			if _, err := roundTrip(addr, client(agent, cache)); err != nil {
				t.Fatalf("allowed agent refused: %v (server: %v)", err, <-serverErrs)
			}
			if err := <-serverErrs; err != nil {
				t.Fatalf("server side of allowed agent: %v", err)
			}
			// Control: the next connection does resume, so the case below
			// really exercises resumption.
			cs, err := roundTrip(addr, client(agent, cache))
			<-serverErrs
			if err != nil || !cs.DidResume {
				t.Fatalf("second connection: resumed %v, err %v; want a resumed session", cs.DidResume, err)
			}

			if _, err := allow.Remove(Fingerprint(agent.Leaf)); err != nil {
				t.Fatal(err)
			}
			roundTrip(addr, client(agent, cache))
			var re *RefusedError
			if err := <-serverErrs; !errors.As(err, &re) || re.Reason != "unknown" {
				t.Errorf("resumed session after removal: server got %v, want a refusal with reason unknown", err)
			}

			roundTrip(addr, client(stranger, tls.NewLRUClientSessionCache(1)))
			if err := <-serverErrs; !errors.As(err, &re) {
				t.Errorf("unknown certificate: server got %v, want a refusal", err)
			}

			noCert := PinnedClientConfig(pins, "gw")
			noCert.MaxVersion = v
			roundTrip(addr, noCert)
			select {
			case err := <-serverErrs:
				if err == nil {
					t.Error("client without certificate was accepted")
				}
			case <-time.After(10 * time.Second):
				t.Error("no server result for a client without certificate")
			}
		})
	}
}

func TestIdentityReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "gw.pem")
	first, _ := Issue(Template{CommonName: "gw"}, nil)
	WriteKeyPair(first, file, "")
	id, err := LoadIdentity(file, "")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveTLS(t, ServerConfig(id, nil))
	seen := func() string {
		cs, err := roundTrip(addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		return Pin(cs.PeerCertificates[0])
	}
	if got := seen(); got != Pin(first.Leaf) {
		t.Fatalf("served %s, want %s", got, Pin(first.Leaf))
	}
	second, _ := Issue(Template{CommonName: "gw"}, nil)
	WriteKeyPair(second, file, "")
	if err := id.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := seen(); got != Pin(second.Leaf) {
		t.Errorf("after reload served %s, want %s", got, Pin(second.Leaf))
	}
	// A broken file keeps the current certificate.
	WriteFileAtomic(file, []byte("garbage"), 0o600)
	if err := id.Reload(); err == nil {
		t.Error("reload of a garbage file succeeded")
	}
	if got := seen(); got != Pin(second.Leaf) {
		t.Errorf("after a failed reload served %s, want %s", got, Pin(second.Leaf))
	}
}

// TestAllowListMerge: two nodes' lists converge whatever order changes
// arrive in; a removal is not undone by an older copy of the entry.
func TestAllowListMerge(t *testing.T) {
	a, _ := NewAllowList(openStore(t, t.TempDir()))
	b, _ := NewAllowList(openStore(t, t.TempDir()))
	var heard []Entry
	a.OnChange(func(e Entry) { heard = append(heard, e) })
	c, _ := Issue(Template{CommonName: "dev-m", Client: true}, nil)
	fp := Fingerprint(c.Leaf)

	a.Add(c.Leaf)
	if len(heard) != 1 || heard[0].Version == 0 {
		t.Fatalf("OnChange heard %+v, want one versioned entry", heard)
	}
	oldCopy := a.Snapshot()
	if n, _ := b.Merge(oldCopy); n != 1 || b.Check(c.Leaf) != nil {
		t.Fatalf("merge of an added entry: %d changed, check %v", n, b.Check(c.Leaf))
	}
	// Removed on b; the tombstone reaches a.
	if _, err := b.Remove(fp); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Merge(b.Snapshot()); n != 1 || a.Check(c.Leaf) == nil {
		t.Fatalf("merge of a tombstone: %d changed, a still allows the certificate", n)
	}
	// An older copy does not bring it back.
	if n, _ := b.Merge(oldCopy); n != 0 || b.Check(c.Leaf) == nil {
		t.Errorf("merging the older addition changed %d entries / allowed the certificate again", n)
	}
	if a.Len() != 0 || len(a.List(Filter{})) != 0 {
		t.Errorf("tombstone counted: Len %d, List %d", a.Len(), len(a.List(Filter{})))
	}
	// Added again later: the newer version wins everywhere.
	a.Add(c.Leaf)
	if n, _ := b.Merge(a.Snapshot()); n != 1 || b.Check(c.Leaf) != nil {
		t.Errorf("re-adding after removal: %d changed, b check %v", n, b.Check(c.Leaf))
	}
	// Equal versions: the tombstone wins on both sides.
	e := a.Snapshot()[0]
	tomb := e
	tomb.Deleted = true
	b.Merge([]Entry{tomb})
	a.Merge([]Entry{tomb})
	b.Merge([]Entry{e})
	if a.Check(c.Leaf) == nil || b.Check(c.Leaf) == nil {
		t.Error("an equal-version conflict left the certificate allowed on a node")
	}
	// Tombstones persist across a restart of the node.
	if err := a.Reload(); err != nil || a.Check(c.Leaf) == nil {
		t.Errorf("after reload: %v, allowed %v", err, a.Check(c.Leaf) == nil)
	}
}

// TestAllowListChangedSignals: Changed's channel is closed by a local
// change, by a merged one from another node and by a Reload, not by a
// merge that changes nothing (the push server checks its sessions again
// at each).
func TestAllowListChangedSignals(t *testing.T) {
	a, _ := NewAllowList(openStore(t, t.TempDir()))
	b, _ := NewAllowList(openStore(t, t.TempDir()))
	c, _ := Issue(Template{CommonName: "dev-s", Client: true}, nil)
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	ch := a.Changed()
	if closed(ch) {
		t.Fatal("closed before any change")
	}
	a.Add(c.Leaf)
	if !closed(ch) {
		t.Error("Add did not signal")
	}
	b.Merge(a.Snapshot())
	ch = a.Changed()
	if b.Remove(Fingerprint(c.Leaf)); closed(ch) {
		t.Error("a change on another list signalled this one")
	}
	a.Merge(b.Snapshot()) // the tombstone
	if !closed(ch) {
		t.Error("a merged removal did not signal")
	}
	ch = a.Changed()
	if a.Merge(b.Snapshot()); closed(ch) {
		t.Error("a merge that changed nothing signalled")
	}
	a.Reload()
	if !closed(ch) {
		t.Error("Reload did not signal")
	}
}

// TestRefusedErrorInWords: what an agent and an operator read says why in
// words ("refused: unknown" read as if the certificate were unknown to
// the agent); metrics keep the tag.
func TestRefusedErrorInWords(t *testing.T) {
	e := &RefusedError{Fingerprint: "ab", Subject: "CN=pc-1", Reason: "unknown"}
	if got := e.Error(); !strings.HasSuffix(got, "refused: not in the allow-list") || e.Label() != "cert_unknown" {
		t.Errorf("Error() = %q, Label() = %q", got, e.Label())
	}
	for _, r := range RefusalReasons {
		if refusalWords[r] == "" {
			t.Errorf("reason %q has no words", r)
		}
	}
}
