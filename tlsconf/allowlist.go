package tlsconf

import (
	"cmp"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Entry is one row of the agent certificate allow-list (the "Endpoint
// Agent certificates" table of a Sensor).
type Entry struct {
	Fingerprint string    `json:"fingerprint"` // SHA-256 of the DER certificate, lowercase hex
	Serial      string    `json:"serial"`      // serial number, uppercase hex
	Subject     string    `json:"subject"`
	NotAfter    time.Time `json:"not_after"`
	Added       time.Time `json:"added"`
	// Version orders changes across cluster nodes (last writer wins): a
	// hybrid clock, Unix nanoseconds or one more than the highest seen.
	Version uint64 `json:"version,omitempty"`
	// Deleted marks a tombstone: the removal is kept, so that merging an
	// older copy of the list from another node cannot bring it back.
	Deleted bool `json:"deleted,omitempty"`
}

// Fingerprint returns the SHA-256 fingerprint of a certificate in the form
// the allow-list uses: lowercase hex without separators.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// NormalizeFingerprint accepts the forms people paste (upper case, colons,
// "sha256:" or "SHA256 Fingerprint=" prefixes) and returns the list's form.
func NormalizeFingerprint(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if _, after, ok := strings.Cut(s, "="); ok {
		s = after
	}
	s = strings.TrimPrefix(s, "sha256:")
	return strings.NewReplacer(":", "", " ", "", "-", "").Replace(s)
}

// EntryFor describes a certificate as an allow-list row.
func EntryFor(c *x509.Certificate) Entry {
	return Entry{
		Fingerprint: Fingerprint(c),
		Serial:      strings.ToUpper(c.SerialNumber.Text(16)),
		Subject:     c.Subject.String(),
		NotAfter:    c.NotAfter.UTC(),
	}
}

// KV is the storage the allow-list persists to (internal/store.DB).
type KV interface {
	Put(bucket, key string, value []byte) error
	Delete(bucket, key string) error
	ForEach(bucket string, fn func(key, value []byte) error) error
}

// AllowBucket is the store bucket holding the allow-list.
const AllowBucket = "agent_certs"

// ErrNotInList is returned for a fingerprint the allow-list does not hold.
var ErrNotInList = errors.New("certificate not in the allow-list")

// RefusedError says why a client certificate was refused at a handshake.
type RefusedError struct {
	Fingerprint string // "" when the client sent no certificate
	Subject     string
	Reason      string // one of RefusalReasons
}

// RefusalReasons are the values of RefusedError.Reason.
var RefusalReasons = []string{"no-certificate", "unknown", "expired", "not-yet-valid"}

// Label is the reason as metrics count it: cert_ and Reason.
func (e *RefusedError) Label() string { return "cert_" + e.Reason }

// RefusalLabels are the values of Label, for metrics to declare.
func RefusalLabels() []string {
	out := make([]string, len(RefusalReasons))
	for i, r := range RefusalReasons {
		out[i] = (&RefusedError{Reason: r}).Label()
	}
	return out
}

// refusalWords say each reason in words, for errors an operator or an
// agent reads; logs and metrics keep the short tag.
var refusalWords = map[string]string{
	"no-certificate": "no client certificate was sent",
	"unknown":        "not in the allow-list",
	"expired":        "expired",
	"not-yet-valid":  "not valid yet",
}

func (e *RefusedError) Error() string {
	why := cmp.Or(refusalWords[e.Reason], e.Reason)
	if e.Fingerprint == "" {
		return "tlsconf: client certificate refused: " + why
	}
	return fmt.Sprintf("tlsconf: client certificate %s (%s) refused: %s", e.Fingerprint, e.Subject, why)
}

// AllowList is the set of agent certificates allowed to connect. It is
// safe for concurrent use; changes persist to the store first and apply to
// the next handshake.
type AllowList struct {
	kv KV

	mu       sync.RWMutex
	entries  map[string]Entry // by fingerprint, tombstones included
	clock    uint64           // highest version seen
	onChange func(Entry)      // local changes, for the cluster to broadcast
	changed  chan struct{}    // closed at the next change (Changed)
}

// Changed returns a channel closed at the next change of the list, local
// or merged from another node, or at a Reload: who holds connections
// made with certificates of the list checks them again then.
func (a *AllowList) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.changed == nil {
		a.changed = make(chan struct{})
	}
	return a.changed
}

// signal closes the channel Changed gave out. Caller holds a.mu.
func (a *AllowList) signal() {
	if a.changed != nil {
		close(a.changed)
		a.changed = nil
	}
}

// OnChange registers fn to hear every local Add and Remove (not merges),
// after they are stored. The cluster broadcasts them.
func (a *AllowList) OnChange(fn func(Entry)) {
	a.mu.Lock()
	a.onChange = fn
	a.mu.Unlock()
}

// nextVersion is a hybrid clock: wall time, but always past every version
// seen, so a change made here orders after what it has merged. Caller
// holds a.mu.
func (a *AllowList) nextVersion() uint64 {
	a.clock = max(a.clock+1, uint64(timeNow().UnixNano()))
	return a.clock
}

func (a *AllowList) store(e Entry) error {
	b, _ := json.Marshal(e)
	if err := a.kv.Put(AllowBucket, e.Fingerprint, b); err != nil {
		return fmt.Errorf("tlsconf: store allow-list entry: %w", err)
	}
	a.entries[e.Fingerprint] = e
	a.clock = max(a.clock, e.Version)
	a.signal()
	return nil
}

// NewAllowList loads the list from kv.
func NewAllowList(kv KV) (*AllowList, error) {
	a := &AllowList{kv: kv}
	return a, a.Reload()
}

// Reload reads the list from the store again.
func (a *AllowList) Reload() error {
	m := map[string]Entry{}
	err := a.kv.ForEach(AllowBucket, func(k, v []byte) error {
		var e Entry
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("tlsconf: allow-list entry %s: %w", k, err)
		}
		m[e.Fingerprint] = e
		return nil
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.entries = m
	for _, e := range m {
		a.clock = max(a.clock, e.Version)
	}
	a.signal()
	a.mu.Unlock()
	return nil
}

// Add puts certificates in the list (adding one already there is no error)
// and returns their entries.
func (a *AllowList) Add(certs ...*x509.Certificate) ([]Entry, error) {
	out := make([]Entry, 0, len(certs))
	now := timeNow().UTC().Truncate(time.Second)
	var changed []Entry
	a.mu.Lock()
	for _, c := range certs {
		e := EntryFor(c)
		if old, ok := a.entries[e.Fingerprint]; ok && !old.Deleted {
			out = append(out, old)
			continue
		}
		e.Added = now
		e.Version = a.nextVersion()
		if err := a.store(e); err != nil {
			a.mu.Unlock()
			return out, err
		}
		out = append(out, e)
		changed = append(changed, e)
	}
	notify := a.onChange
	a.mu.Unlock()
	if notify != nil {
		for _, e := range changed {
			notify(e)
		}
	}
	return out, nil
}

// Remove deletes entries by fingerprint (any form NormalizeFingerprint
// accepts). Unknown fingerprints give ErrNotInList after the known ones
// are removed.
func (a *AllowList) Remove(fingerprints ...string) ([]Entry, error) {
	var removed []Entry
	var missing []string
	a.mu.Lock()
	for _, f := range fingerprints {
		fp := NormalizeFingerprint(f)
		e, ok := a.entries[fp]
		if !ok || e.Deleted {
			missing = append(missing, f)
			continue
		}
		tomb := e
		tomb.Deleted = true
		tomb.Version = a.nextVersion()
		if err := a.store(tomb); err != nil {
			a.mu.Unlock()
			return removed, err
		}
		removed = append(removed, e)
	}
	notify := a.onChange
	a.mu.Unlock()
	if notify != nil {
		for _, e := range removed {
			notify(a.entry(e.Fingerprint)) // the tombstone
		}
	}
	if len(missing) > 0 {
		return removed, fmt.Errorf("%w: %s", ErrNotInList, strings.Join(missing, ", "))
	}
	return removed, nil
}

// Filter selects entries; empty fields match everything. Matching is by
// case-insensitive substring, as in a Sensor's table filter.
type Filter struct {
	Fingerprint string
	Serial      string
}

// List returns the matching entries, sorted by subject then fingerprint.
func (a *AllowList) List(f Filter) []Entry {
	fp := NormalizeFingerprint(f.Fingerprint)
	serial := strings.ToUpper(strings.NewReplacer(":", "", " ", "").Replace(f.Serial))
	a.mu.RLock()
	out := make([]Entry, 0, len(a.entries))
	for _, e := range a.entries {
		if !e.Deleted && strings.Contains(e.Fingerprint, fp) && strings.Contains(e.Serial, serial) {
			out = append(out, e)
		}
	}
	a.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Subject != out[j].Subject {
			return out[i].Subject < out[j].Subject
		}
		return out[i].Fingerprint < out[j].Fingerprint
	})
	return out
}

// Len returns the number of entries.
func (a *AllowList) Len() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	n := 0
	for _, e := range a.entries {
		if !e.Deleted {
			n++
		}
	}
	return n
}

func (a *AllowList) entry(fp string) Entry {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.entries[fp]
}

// Snapshot returns every entry, tombstones included: the state another
// node merges.
func (a *AllowList) Snapshot() []Entry {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]Entry, 0, len(a.entries))
	for _, e := range a.entries {
		out = append(out, e)
	}
	return out
}

// Merge applies entries from another node: for each fingerprint the
// higher version wins, and at equal versions a tombstone wins, so every
// node ends with the same list whatever order the changes arrive in. It
// returns how many entries changed here.
func (a *AllowList) Merge(entries []Entry) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	changed := 0
	for _, e := range entries {
		if e.Fingerprint == "" || e.Version == 0 {
			continue // not a replicated entry
		}
		cur, ok := a.entries[e.Fingerprint]
		if ok && (cur.Version > e.Version || (cur.Version == e.Version && (cur.Deleted || !e.Deleted))) {
			continue
		}
		if err := a.store(e); err != nil {
			return changed, err
		}
		changed++
	}
	return changed, nil
}

// Check returns nil if the certificate is in the list and valid now, else
// a *RefusedError.
func (a *AllowList) Check(c *x509.Certificate) error {
	fp := Fingerprint(c)
	a.mu.RLock()
	e, ok := a.entries[fp]
	a.mu.RUnlock()
	ok = ok && !e.Deleted
	refuse := func(reason string) error {
		return &RefusedError{Fingerprint: fp, Subject: c.Subject.String(), Reason: reason}
	}
	now := timeNow()
	switch {
	case !ok:
		return refuse("unknown")
	case now.After(c.NotAfter):
		return refuse("expired")
	case now.Before(c.NotBefore):
		return refuse("not-yet-valid")
	}
	return nil
}

// VerifyConnection is a tls.Config.VerifyConnection for servers that
// require agent certificates. It runs on every handshake, resumed ones
// too, so a removed certificate is refused at once even with a session
// ticket issued before the removal.
func (a *AllowList) VerifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return &RefusedError{Reason: "no-certificate"}
	}
	return a.Check(cs.PeerCertificates[0])
}
