// Package tlsconf holds dpgate's certificate handling: generating and
// loading key pairs (refusing weak or invalid ones), SPKI pins in curl's
// sha256//<base64> form, PKCS#12 containers, the agent certificate
// allow-list, and the tls.Config builders the listeners and dialers use.
//
// The gateway's own certificate lives in an Identity that can be reloaded
// while running; the allow-list is checked in VerifyConnection, which runs
// on resumed handshakes too. Both changes apply to the next handshake and
// leave established connections alone.
package tlsconf

import (
	"crypto/tls"
	"errors"
	"sync/atomic"
)

// Identity is a certificate and key read from PEM files that can be
// re-read while servers use it.
type Identity struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// LoadIdentity reads the key pair (see LoadKeyPair).
func LoadIdentity(certFile, keyFile string) (*Identity, error) {
	id := &Identity{certFile: certFile, keyFile: keyFile}
	return id, id.Reload()
}

// Reload reads the files again. On error the current certificate stays.
func (id *Identity) Reload() error {
	c, err := LoadKeyPair(id.certFile, id.keyFile)
	if err != nil {
		return err
	}
	id.cur.Store(&c)
	return nil
}

// Replace writes c to the identity's files (certificate and key into the
// certificate file, or the key into its own file when there is one),
// each atomically, and serves it from the next handshake on. c must pass
// the checks LoadKeyPair makes (ParseKeyPair gives such one).
func (id *Identity) Replace(c tls.Certificate) error {
	if c.Leaf == nil {
		return errors.New("tlsconf: Replace needs the parsed certificate (Leaf)")
	}
	if err := WriteKeyPair(c, id.certFile, id.keyFile); err != nil {
		return err
	}
	return id.Reload()
}

// Certificate returns the current certificate.
func (id *Identity) Certificate() *tls.Certificate { return id.cur.Load() }

// Pin returns the current certificate's SPKI pin.
func (id *Identity) Pin() string { return Pin(id.cur.Load().Leaf) }

// GetCertificate is a tls.Config.GetCertificate serving the current one.
func (id *Identity) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return id.cur.Load(), nil
}

// GetClientCertificate is a tls.Config.GetClientCertificate.
func (id *Identity) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return id.cur.Load(), nil
}

// ServerConfig is the TLS configuration of a dpgate listener: TLS 1.2 or
// newer, the identity's certificate, and, when allow is not nil, a
// required client certificate that must be in the allow-list.
func ServerConfig(id *Identity, allow *AllowList, nextProtos ...string) *tls.Config {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: id.GetCertificate,
		NextProtos:     nextProtos,
	}
	if allow != nil {
		// The allow-list, not a CA, decides: any certificate may be offered,
		// and VerifyConnection checks it on every handshake.
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyConnection = allow.VerifyConnection
	}
	return cfg
}

// PinnedClientConfig is the TLS configuration for dialing a pinned server:
// the chain is not checked against roots, the SPKI pin is.
func PinnedClientConfig(pins PinSet, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         serverName,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyConnection:   pins.VerifyConnection,
	}
}

// KeyExchange is the key exchange groups for tls.post_quantum, for
// tls.Config.CurvePreferences: nil, Go's default, which offers the
// post-quantum hybrid X25519MLKEM768 first, or without it X25519 and
// P-256.
func KeyExchange(postQuantum bool) []tls.CurveID {
	if postQuantum {
		return nil
	}
	return []tls.CurveID{tls.X25519, tls.CurveP256}
}
