package tlsconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// Errors a caller may branch on; the returned errors wrap them with detail.
var (
	ErrWeakKey      = errors.New("key too weak")
	ErrExpired      = errors.New("certificate expired")
	ErrNotYetValid  = errors.New("certificate not yet valid")
	ErrKeyMismatch  = errors.New("private key does not match the certificate")
	ErrNoPEM        = errors.New("no PEM data")
	ErrBadPassword  = errors.New("wrong password")
	ErrCorruptPFX   = errors.New("not a valid PKCS#12 (PFX) file")
	minRSABits      = 2048
	timeNow         = time.Now
	errNoKeyPresent = errors.New("no private key")
)

// LoadKeyPair reads a certificate and its private key from PEM. keyFile may
// be empty when certFile holds both (the form central servers expect). It
// refuses weak keys, certificates outside their validity period and a key
// that does not belong to the certificate.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsconf: %w", err)
	}
	keyPEM := certPEM
	src := certFile
	if keyFile != "" {
		if keyPEM, err = os.ReadFile(keyFile); err != nil {
			return tls.Certificate{}, fmt.Errorf("tlsconf: %w", err)
		}
		src = keyFile
	}
	c, err := ParseKeyPair(certPEM, keyPEM)
	if err != nil {
		if errors.Is(err, errNoKeyPresent) {
			return c, fmt.Errorf("tlsconf: %s: no private key found (give a PEM with both certificate and key, or a key file)", src)
		}
		return c, fmt.Errorf("tlsconf: %s: %w", certFile, err)
	}
	return c, nil
}

// ParseKeyPair is LoadKeyPair on PEM bytes. Both may be the same bytes.
func ParseKeyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	var out tls.Certificate
	var rest = certPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			out.Certificate = append(out.Certificate, b.Bytes)
		}
	}
	if len(out.Certificate) == 0 {
		return out, fmt.Errorf("%w: no CERTIFICATE block found", ErrNoPEM)
	}
	leaf, err := x509.ParseCertificate(out.Certificate[0])
	if err != nil {
		return out, fmt.Errorf("certificate does not parse: %v", err)
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return out, err
	}
	if err := CheckCertificate(leaf); err != nil {
		return out, err
	}
	if err := checkKeyMatches(leaf, key); err != nil {
		return out, err
	}
	out.PrivateKey = key
	out.Leaf = leaf
	return out, nil
}

func parsePrivateKey(keyPEM []byte) (crypto.Signer, error) {
	rest := keyPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errNoKeyPresent
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the private key is encrypted: decrypt it first (openssl pkey -in KEY -out PLAIN)")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("private key (%s) does not parse: %v", b.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
		return s, nil
	}
}

// CheckCertificate refuses RSA keys under 2048 bits, EC keys under P-256 and
// certificates outside their validity period.
func CheckCertificate(c *x509.Certificate) error {
	if err := CheckPublicKey(c.PublicKey); err != nil {
		return err
	}
	now := timeNow()
	if now.After(c.NotAfter) {
		return fmt.Errorf("%w on %s (subject %q)", ErrExpired, c.NotAfter.UTC().Format(time.DateOnly), c.Subject.CommonName)
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%w until %s (subject %q)", ErrNotYetValid, c.NotBefore.UTC().Format(time.RFC3339), c.Subject.CommonName)
	}
	return nil
}

// CheckPublicKey refuses keys weaker than RSA-2048 or P-256.
func CheckPublicKey(pub any) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("%w: RSA key has %d bits, at least %d are required", ErrWeakKey, k.N.BitLen(), minRSABits)
		}
	case *ecdsa.PublicKey:
		if bits := k.Curve.Params().BitSize; bits < 256 {
			return fmt.Errorf("%w: EC key on %s, P-256 or larger is required", ErrWeakKey, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("%w: unsupported public key type %T", ErrWeakKey, pub)
	}
	return nil
}

func checkKeyMatches(c *x509.Certificate, key crypto.Signer) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	if !ok || !pub.Equal(c.PublicKey) {
		return fmt.Errorf("%w (subject %q)", ErrKeyMismatch, c.Subject.CommonName)
	}
	return nil
}

// ParseCertificatesPEM returns every certificate in PEM data.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: certificate does not parse: %v", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("tlsconf: %w: no CERTIFICATE block found", ErrNoPEM)
	}
	return certs, nil
}
