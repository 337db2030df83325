package tlsconf

import (
	"bytes"
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
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// KeyTypes lists the key types Generate accepts, the default first.
var KeyTypes = []string{"ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096"}

// GenerateKey makes a private key of one of KeyTypes.
func GenerateKey(keyType string) (crypto.Signer, error) {
	switch keyType {
	case "", "ecdsa-p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa-2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "rsa-3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "rsa-4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("tlsconf: unknown key type %q (want one of %v)", keyType, KeyTypes)
}

// Template describes a certificate to issue.
type Template struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	// Days of validity. Default: 825 (the longest browsers accept, and
	// pinning makes a renewal with the same key painless).
	Days int
	// KeyType is one of KeyTypes. Default: ecdsa-p256.
	KeyType string
	// Client makes a client-authentication (agent) certificate; otherwise a
	// server certificate usable for both.
	Client bool
	// CA makes a certificate authority.
	CA bool
	// Key, when set, is used instead of a new one: a renewal that keeps
	// the SPKI pin.
	Key crypto.Signer
}

// Issue creates a key and a certificate signed by the issuer, or
// self-signed when issuer is nil.
func Issue(t Template, issuer *tls.Certificate) (tls.Certificate, error) {
	key := t.Key
	if key == nil {
		var err error
		if key, err = GenerateKey(t.KeyType); err != nil {
			return tls.Certificate{}, err
		}
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	days := t.Days
	if days <= 0 {
		days = 825
	}
	now := timeNow()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: t.CommonName, Organization: []string{"dpgate"}},
		NotBefore:             now.Add(-5 * time.Minute), // tolerate small clock skew
		NotAfter:              now.Add(time.Duration(days) * 24 * time.Hour),
		DNSNames:              t.DNSNames,
		IPAddresses:           t.IPs,
		BasicConstraintsValid: true,
	}
	switch {
	case t.CA:
		tmpl.IsCA = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	case t.Client:
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	default:
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	if _, isRSA := key.Public().(*rsa.PublicKey); isRSA && !t.CA {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	parent, signer := tmpl, crypto.Signer(key)
	if issuer != nil {
		parent, signer = issuer.Leaf, issuer.PrivateKey.(crypto.Signer)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsconf: create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// CertPEM encodes the certificate chain as PEM.
func CertPEM(c tls.Certificate) []byte {
	var b bytes.Buffer
	for _, der := range c.Certificate {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return b.Bytes()
}

// KeyPEM encodes the private key as PKCS#8 PEM.
func KeyPEM(c tls.Certificate) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteKeyPair writes the certificate and key. With keyFile empty both go
// into certFile, certificate first. Files holding a key get mode 0600.
func WriteKeyPair(c tls.Certificate, certFile, keyFile string) error {
	keyPEM, err := KeyPEM(c)
	if err != nil {
		return err
	}
	if keyFile == "" {
		return WriteFileAtomic(certFile, append(CertPEM(c), keyPEM...), 0o600)
	}
	if err := WriteFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	return WriteFileAtomic(certFile, CertPEM(c), 0o644)
}

// WriteFileAtomic writes through a temporary file and a rename, so a crash
// never leaves a half-written key or certificate.
func WriteFileAtomic(name string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("tlsconf: %w", err)
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("tlsconf: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("tlsconf: write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("tlsconf: sync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("tlsconf: %w", err)
	}
	if err := os.Rename(f.Name(), name); err != nil {
		return fmt.Errorf("tlsconf: %w", err)
	}
	return nil
}

// LoadOrCreate loads the PEM key pair at file, or creates a self-signed one
// from t when the file does not exist. created says which happened.
func LoadOrCreate(file string, t Template, issuer *tls.Certificate) (c tls.Certificate, created bool, err error) {
	if _, err := os.Stat(file); err == nil {
		c, err := LoadKeyPair(file, "")
		return c, false, err
	} else if !os.IsNotExist(err) {
		return c, false, fmt.Errorf("tlsconf: %w", err)
	}
	if c, err = Issue(t, issuer); err != nil {
		return c, false, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return c, false, fmt.Errorf("tlsconf: %w", err)
	}
	return c, true, WriteKeyPair(c, file, "")
}

// LoadOrRenew is LoadOrCreate for a certificate this program generates
// and keeps up to date itself (the gateway's default certificate): when
// the one in file expires within renewBefore, or has expired, a new
// certificate for t is issued with the same key, so its SPKI pin stays
// the same, and written back. renewed reports that.
func LoadOrRenew(file string, t Template, renewBefore time.Duration) (c tls.Certificate, created, renewed bool, err error) {
	if _, err := os.Stat(file); os.IsNotExist(err) {
		c, created, err := LoadOrCreate(file, t, nil)
		return c, created, false, err
	}
	c, err = LoadKeyPair(file, "")
	if err == nil && timeNow().Add(renewBefore).Before(c.Leaf.NotAfter) {
		return c, false, false, nil
	}
	if err != nil && !errors.Is(err, ErrExpired) {
		return c, false, false, err
	}
	// Expired or expiring: the key is still good.
	data, rerr := os.ReadFile(file)
	if rerr != nil {
		return c, false, false, fmt.Errorf("tlsconf: %w", rerr)
	}
	key, kerr := parsePrivateKey(data)
	if kerr != nil {
		return c, false, false, fmt.Errorf("tlsconf: %s: %w", file, kerr)
	}
	t.Key = key
	if c, err = Issue(t, nil); err != nil {
		return c, false, false, err
	}
	return c, false, true, WriteKeyPair(c, file, "")
}
