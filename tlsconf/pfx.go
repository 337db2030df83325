package tlsconf

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"software.sslmate.com/src/go-pkcs12"
)

// EncodePFX exports a certificate, its key and the issuing chain as
// PKCS#12 with modern encryption (AES-256-CBC, PBKDF2, SHA-256 MAC), the
// container agents import.
func EncodePFX(c tls.Certificate, chain []*x509.Certificate, password string) ([]byte, error) {
	if c.Leaf == nil {
		return nil, errors.New("tlsconf: certificate has no parsed leaf")
	}
	data, err := pkcs12.Modern.Encode(c.PrivateKey, c.Leaf, chain, password)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: encode PKCS#12: %w", err)
	}
	return data, nil
}

// ParsePFX reads a PKCS#12 container holding one certificate with its key
// and any chain, and applies the same checks as LoadKeyPair.
func ParsePFX(data []byte, password string) (tls.Certificate, error) {
	key, leaf, chain, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		if errors.Is(err, pkcs12.ErrIncorrectPassword) {
			return tls.Certificate{}, fmt.Errorf("%w for the PKCS#12 file", ErrBadPassword)
		}
		return tls.Certificate{}, fmt.Errorf("%w: %v", ErrCorruptPFX, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return tls.Certificate{}, fmt.Errorf("%w: unsupported key type %T", ErrCorruptPFX, key)
	}
	if err := CheckCertificate(leaf); err != nil {
		return tls.Certificate{}, err
	}
	if err := checkKeyMatches(leaf, signer); err != nil {
		return tls.Certificate{}, err
	}
	out := tls.Certificate{PrivateKey: signer, Leaf: leaf, Certificate: [][]byte{leaf.Raw}}
	for _, c := range chain {
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out, nil
}

// LoadPFX reads a PKCS#12 file; passwordFile may be empty (no password).
// The password file's trailing newline is not part of the password.
func LoadPFX(file, passwordFile string) (tls.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tlsconf: %w", err)
	}
	password, err := ReadSecretFile(passwordFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	c, err := ParsePFX(data, password)
	if err != nil {
		return c, fmt.Errorf("tlsconf: %s: %w", file, err)
	}
	return c, nil
}
