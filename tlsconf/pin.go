package tlsconf

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// PinPrefix starts every pin: the form curl's --pinnedpubkey takes.
const PinPrefix = "sha256//"

// Pin returns the SPKI SHA-256 pin of a certificate: "sha256//" followed by
// the base64 SHA-256 of its DER SubjectPublicKeyInfo. The pin survives
// re-issuing a certificate with the same key.
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return PinPrefix + base64.StdEncoding.EncodeToString(sum[:])
}

// ParsePin checks a pin's form and returns its 32-byte digest.
func ParsePin(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(s), PinPrefix)
	if !ok {
		return nil, fmt.Errorf("pin %q does not start with %s", s, PinPrefix)
	}
	sum, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("pin %q is not %s followed by a base64 SHA-256 digest", s, PinPrefix)
	}
	return sum, nil
}

// ErrPinMismatch is returned when a peer's key matches none of the pins.
var ErrPinMismatch = errors.New("tlsconf: server key matches no configured pin")

// PinSet is a set of accepted pins; two allow a key rotation.
type PinSet [][]byte

// ParsePins parses every pin.
func ParsePins(pins []string) (PinSet, error) {
	set := make(PinSet, 0, len(pins))
	for _, p := range pins {
		sum, err := ParsePin(p)
		if err != nil {
			return nil, err
		}
		set = append(set, sum)
	}
	return set, nil
}

// Match reports whether the certificate's key is pinned.
func (s PinSet) Match(cert *x509.Certificate) bool {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	for _, p := range s {
		if subtle.ConstantTimeCompare(p, sum[:]) == 1 {
			return true
		}
	}
	return false
}

// VerifyConnection checks the leaf certificate of a handshake against the
// pins. Use it with InsecureSkipVerify, which then skips only the chain
// check: the pin replaces it.
func (s PinSet) VerifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tlsconf: peer sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	if !s.Match(leaf) {
		return fmt.Errorf("%w (got %s)", ErrPinMismatch, Pin(leaf))
	}
	return nil
}
