package wake

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dpgate/dpgate/tlsconf"
)

// Keys are the gateway's wake keys, all from one secret (so the nodes of
// a cluster share them by sharing wake.secret_file): wake requests from
// the management server are HMAC-signed with the secret itself; the
// Ed25519 key that signs wake-ups (agents verify them with its public
// half) and each device's own secret (for its shutdown notices, or for
// wake-ups when the agent was given a secret instead of the public key)
// are derived from it.
type Keys struct {
	Signing ed25519.PrivateKey
	Secret  []byte
}

// SecretFile is the secret in the data directory when wake.secret_file
// is not set.
const SecretFile = "wake.key"

// LoadOrCreateKeys reads the keys (base64 in a file of mode 0600).
// secretFile may be empty: dataDir/wake.key, created on first start. A
// configured secretFile must exist: it is the secret a cluster shares, and
// generating one at a mistyped path would split the cluster's key.
func LoadOrCreateKeys(dataDir, secretFile string) (*Keys, error) {
	if secretFile != "" {
		if _, err := os.Stat(secretFile); err != nil {
			return nil, fmt.Errorf("wake: wake.secret_file %s: %w (a configured secret is never generated: copy the cluster's file there, or create one with: (umask 077; head -c 32 /dev/urandom | base64 > %s))",
				secretFile, err, secretFile)
		}
	} else {
		secretFile = filepath.Join(dataDir, SecretFile)
	}
	secret, err := tlsconf.LoadOrCreateKey(secretFile, 32, 16)
	if err != nil {
		return nil, err
	}
	return keysFrom(secret), nil
}

// keysFrom derives the keys from the secret.
func keysFrom(secret []byte) *Keys {
	return &Keys{Signing: ed25519.NewKeyFromSeed(derive(secret, "dpgate wake ed25519 seed")), Secret: secret}
}

// DeviceSecret is the device's own HMAC secret.
func (k *Keys) DeviceSecret(device string) []byte {
	return derive(k.Secret, "dpgate wake device\x00"+device)
}

// derive is HMAC-SHA256(secret, label): 32 bytes.
func derive(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// PublicKeyString is how an agent is given the key that verifies
// wake-ups: "ed25519:" and the base64 public key.
func (k *Keys) PublicKeyString() string {
	return "ed25519:" + base64.StdEncoding.EncodeToString(k.Signing.Public().(ed25519.PublicKey))
}

// DeviceSecretString is how an agent is given its own secret:
// "hmac:" and the base64 secret.
func (k *Keys) DeviceSecretString(device string) string {
	return "hmac:" + base64.StdEncoding.EncodeToString(k.DeviceSecret(device))
}

// Verifier checks datagrams with one key: an Ed25519 public key or an
// HMAC secret, as written by PublicKeyString and DeviceSecretString.
type Verifier struct {
	Alg    uint8
	Public ed25519.PublicKey
	Secret []byte
}

// ParseKey reads "ed25519:BASE64" or "hmac:BASE64".
func ParseKey(s string) (Verifier, error) {
	kind, b64, ok := strings.Cut(strings.TrimSpace(s), ":")
	b, err := base64.StdEncoding.DecodeString(b64)
	switch {
	case !ok || err != nil:
		return Verifier{}, fmt.Errorf("wake: key %q: want ed25519:BASE64 or hmac:BASE64", s)
	case kind == SignatureEd25519 && len(b) == ed25519.PublicKeySize:
		return Verifier{Alg: AlgEd25519, Public: b}, nil
	case kind == SignatureHMAC && len(b) >= 16:
		return Verifier{Alg: AlgHMAC, Secret: b}, nil
	}
	return Verifier{}, fmt.Errorf("wake: key %q: want ed25519: and a 32-byte public key, or hmac: and 16 bytes or more", s)
}

// ErrSignature is returned for a datagram whose signature does not verify.
var ErrSignature = errors.New("wake: bad signature")

// Verify checks d's signature.
func (v Verifier) Verify(d *Datagram) error {
	if d.Alg != v.Alg {
		return fmt.Errorf("%w: signed with algorithm %d, this key is for %d", ErrSignature, d.Alg, v.Alg)
	}
	switch v.Alg {
	case AlgEd25519:
		if !ed25519.Verify(v.Public, d.Signed(), d.Signature) {
			return ErrSignature
		}
	case AlgHMAC:
		m := hmac.New(sha256.New, v.Secret)
		m.Write(d.Signed())
		if !hmac.Equal(m.Sum(nil), d.Signature) {
			return ErrSignature
		}
	default:
		return ErrAlg
	}
	return nil
}

// SignEd25519 signs d with key (setting Alg).
func SignEd25519(d *Datagram, key ed25519.PrivateKey) {
	d.Alg = AlgEd25519
	d.Signature = ed25519.Sign(key, d.Signed())
}

// SignHMAC signs d with secret (setting Alg).
func SignHMAC(d *Datagram, secret []byte) {
	d.Alg = AlgHMAC
	m := hmac.New(sha256.New, secret)
	m.Write(d.Signed())
	d.Signature = m.Sum(nil)
}

// NewDatagram is a datagram of kind for device, stamped now with a random
// nonce; sign it before sending.
func NewDatagram(kind uint8, device string, nowMillis int64) *Datagram {
	d := &Datagram{Version: Version, Kind: kind, DeviceID: device, Timestamp: nowMillis}
	rand.Read(d.Nonce[:])
	return d
}
