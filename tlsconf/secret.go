package tlsconf

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ReadSecretFile reads a one-line secret (password, token), dropping the
// trailing newline. An empty name gives an empty secret.
func ReadSecretFile(name string) (string, error) {
	if name == "" {
		return "", nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return "", fmt.Errorf("tlsconf: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// ErrDamagedKey: a key file that does not decode, or holds a key shorter
// than its minimum.
var ErrDamagedKey = errors.New("not base64 of a key long enough")

// LoadOrCreateKey reads a base64 key from file or, when the file does not
// exist, creates a random one of size bytes there (mode 0600, its
// directory 0700). A key that does not decode or is shorter than min bytes
// is an error (ErrDamagedKey), never replaced.
func LoadOrCreateKey(file string, size, min int) ([]byte, error) {
	s, err := ReadSecretFile(file)
	if err == nil {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
		if err != nil || len(b) < min {
			return nil, fmt.Errorf("tlsconf: %s is %w (%d bytes or more): restore it from a backup, or remove it to have a new key made (what the old one made or signed stops working)", file, ErrDamagedKey, min)
		}
		return b, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	b := make([]byte, size)
	rand.Read(b)
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, fmt.Errorf("tlsconf: %w", err)
	}
	if err := WriteFileAtomic(file, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600); err != nil {
		return nil, err
	}
	return b, nil
}
