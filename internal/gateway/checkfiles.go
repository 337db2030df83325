package gateway

import (
	"fmt"
	"strconv"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/tlsconf"
	"github.com/dpgate/dpgate/wake"
)

// CheckFiles loads every file the configuration names, as the gateway
// will at start, without creating any: tls.cert and tls.key, each
// upstream's PKCS#12 client certificate with its password file, the admin
// token file, the push token keys, the wake secret and the cluster's
// gossip key, and that none of the secret ones may be read by every user.
// The error names the key. (Files the gateway makes in the data directory
// on first start are not required.)
func CheckFiles(cfg *config.Config) error {
	if err := checkSecretFiles(cfg); err != nil {
		return err
	}
	if cfg.TLS.Cert != "" {
		if _, err := tlsconf.LoadKeyPair(cfg.TLS.Cert, cfg.TLS.Key); err != nil {
			return fmt.Errorf("tls.cert: %w", err)
		}
	}
	for i, u := range cfg.Proxy.Upstreams {
		if u.ClientCert == "" {
			continue
		}
		if _, err := tlsconf.LoadPFX(u.ClientCert, u.ClientCertPasswordFile); err != nil {
			return fmt.Errorf("proxy.upstreams[%s].client_cert: %w", strconv.Itoa(i), err)
		}
	}
	if file, generated := cfg.AdminTokenFile(); !generated {
		if _, err := admin.LoadToken(file, false); err != nil {
			return fmt.Errorf("admin.token_file: %w", err)
		}
	}
	if cfg.Push.TokenKeyFile != "" && config.Enabled(cfg.Push.Listen) {
		if _, err := TokenKeys(cfg); err != nil {
			return err // names push.token_key_file
		}
	}
	if cfg.Wake.SecretFile != "" {
		if _, err := wake.LoadOrCreateKeys(cfg.Node.DataDir, cfg.Wake.SecretFile); err != nil {
			return err // names wake.secret_file; a configured file is never created
		}
	}
	if _, err := clusterKeys(cfg); err != nil {
		return err
	}
	return nil
}
