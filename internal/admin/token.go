package admin

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dpgate/dpgate/tlsconf"
)

// MinTokenLen is the shortest admin token accepted. Any local user may
// connect to the admin API on loopback and try tokens (some 17,000 a
// second on a 2-core machine): a few characters fall in hours, 16 random
// ones never. The generated token has 43.
const MinTokenLen = 16

// LoadToken reads the bearer token from file. With create (the generated
// default in the data directory) a missing file is created with a random
// token, mode 0600, and an existing one that other users may read is
// refused: the file's permissions are what keeps local users out. A file
// the operator named (create false) must exist and is read as it is.
func LoadToken(file string, create bool) (string, error) {
	token, err := tlsconf.ReadSecretFile(file)
	switch {
	case err == nil:
	case create && errors.Is(err, os.ErrNotExist):
		return newToken(file)
	default:
		return "", fmt.Errorf("admin token: %w", err)
	}
	if len(token) < MinTokenLen {
		fix := fmt.Sprintf("write a random one: (umask 077; head -c 32 /dev/urandom | base64 > %s)", file)
		if create {
			fix = "remove it to have a new one made, or " + fix
		}
		return "", fmt.Errorf("admin token: %s holds %d characters, want at least %d (any local user may try tokens on the admin API): %s",
			file, len(token), MinTokenLen, fix)
	}
	if create {
		fi, err := os.Stat(file)
		if err != nil {
			return "", fmt.Errorf("admin token: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("admin token: %s has mode %04o, so other users may read it: chmod 600 %s (and check who did)",
				file, fi.Mode().Perm(), file)
		}
	}
	return token, nil
}

func newToken(file string) (string, error) {
	b := make([]byte, 32)
	rand.Read(b)
	token := base64.RawURLEncoding.EncodeToString(b)
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	if err := tlsconf.WriteFileAtomic(file, []byte(token+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return token, nil
}
