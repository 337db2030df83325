//go:build unix

package gateway

// What other users of the machine may do to the gateway's files: a local
// user is not trusted to be the operator (docs/operations.md).

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/dpgate/dpgate/internal/config"
)

// checkDataDir refuses a data directory that another user may write to,
// or that another user owns: they could replace the store, the
// certificate's key or the admin token with their own (the token's own
// check looks at its mode, which they would set to 0600). As sshd's
// StrictModes does for a home directory. The directory is made (0700)
// when it does not exist yet.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("data_dir %s has mode %04o, so other users may replace its files (the store, the certificate, the admin token): chmod go-w %s (and check who did)",
			dir, perm, dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() && st.Uid != 0 {
		return fmt.Errorf("data_dir %s belongs to uid %d, not to the user dpgate runs as (uid %d) or root: chown it to that user (and check who did)",
			dir, st.Uid, os.Geteuid())
	}
	return nil
}

// checkSecretFiles refuses a configuration file every user may change,
// and the secret files it names when every user on the machine may read
// them: the admin token, the
// cluster's gossip key (which lets its holder speak for a node), the
// device token keys, the wake secret, the certificate's private key and
// the upstreams' client certificates and passwords. Group read is
// allowed (0640 root:dpgate), as are files that do not exist (the
// loaders say so).
func checkSecretFiles(cfg *config.Config) error {
	type file struct{ key, path string }
	files := []file{
		{"admin.token_file", cfg.Admin.TokenFile},
		{"cluster.secret_key_file", cfg.Cluster.SecretKeyFile},
		{"push.token_key_file", cfg.Push.TokenKeyFile},
		{"wake.secret_file", cfg.Wake.SecretFile},
		{"tls.key", cfg.TLS.Key},
	}
	if cfg.TLS.Key == "" {
		files = append(files, file{"tls.cert (it holds the key)", cfg.TLS.Cert})
	}
	for i, u := range cfg.Proxy.Upstreams {
		at := "proxy.upstreams[" + strconv.Itoa(i) + "]."
		files = append(files, file{at + "client_cert", u.ClientCert}, file{at + "client_cert_password_file", u.ClientCertPasswordFile})
	}
	if file := cfg.File(); file != "" {
		// Not a secret, but it names them: whoever may rewrite it may
		// point admin.token_file at a token of their own.
		if fi, err := os.Stat(file); err == nil && fi.Mode().Perm()&0o002 != 0 {
			return fmt.Errorf("the configuration file %s may be changed by every user on this machine (mode %04o), and it names the admin token and the keys: chmod o-w %s (and check who did)", file, fi.Mode().Perm(), file)
		}
	}
	for _, f := range files {
		if err := CheckSecretFile(f.key, f.path); err != nil {
			return err
		}
	}
	return nil
}

// CheckSecretFile refuses a secret file (what names it: a key of the
// configuration, a flag) that every user on this machine may read. Group
// read is allowed; an empty name or a missing file passes (the loader
// says so).
func CheckSecretFile(what, path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil
	}
	if perm := fi.Mode().Perm(); perm&0o004 != 0 {
		return fmt.Errorf("%s %s may be read by every user on this machine (mode %04o): chmod o-r %s (and check who read it)", what, path, perm, path)
	}
	return nil
}
