package tlsconf

import (
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
	Reason      string // "no-certificate", "unknown", "expired", "not-yet-valid"
}

func (e *RefusedError) Error() string {
	if e.Fingerprint == "" {
		return "tlsconf: client certificate refused: " + e.Reason
	}
	return fmt.Sprintf("tlsconf: client certificate %s (%s) refused: %s", e.Fingerprint, e.Subject, e.Reason)
}

// AllowList is the set of agent certificates allowed to connect. It is
// safe for concurrent use; changes persist to the store first and apply to
// the next handshake.
type AllowList struct {
	kv KV

	mu      sync.RWMutex
	entries map[string]Entry // by fingerprint
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
	a.mu.Unlock()
	return nil
}

// Add puts certificates in the list (adding one already there is no error)
// and returns their entries.
func (a *AllowList) Add(certs ...*x509.Certificate) ([]Entry, error) {
	out := make([]Entry, 0, len(certs))
	now := timeNow().UTC().Truncate(time.Second)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range certs {
		e := EntryFor(c)
		if old, ok := a.entries[e.Fingerprint]; ok {
			out = append(out, old)
			continue
		}
		e.Added = now
		b, _ := json.Marshal(e)
		if err := a.kv.Put(AllowBucket, e.Fingerprint, b); err != nil {
			return out, fmt.Errorf("tlsconf: store allow-list entry: %w", err)
		}
		a.entries[e.Fingerprint] = e
		out = append(out, e)
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
	defer a.mu.Unlock()
	for _, f := range fingerprints {
		fp := NormalizeFingerprint(f)
		e, ok := a.entries[fp]
		if !ok {
			missing = append(missing, f)
			continue
		}
		if err := a.kv.Delete(AllowBucket, fp); err != nil {
			return removed, fmt.Errorf("tlsconf: delete allow-list entry: %w", err)
		}
		delete(a.entries, fp)
		removed = append(removed, e)
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
		if strings.Contains(e.Fingerprint, fp) && strings.Contains(e.Serial, serial) {
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
	return len(a.entries)
}

// Check returns nil if the certificate is in the list and valid now, else
// a *RefusedError.
func (a *AllowList) Check(c *x509.Certificate) error {
	fp := Fingerprint(c)
	a.mu.RLock()
	_, ok := a.entries[fp]
	a.mu.RUnlock()
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
