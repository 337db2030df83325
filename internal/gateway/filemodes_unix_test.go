//go:build unix

package gateway

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpgate/dpgate/internal/config"
)

// offlineConfig is a configuration with its data directory in dir and
// nothing listening but the admin API on loopback.
func offlineConfig(t *testing.T, dir string) (*config.Config, Options) {
	t.Helper()
	cfg := config.Default()
	cfg.Node.DataDir = filepath.Join(dir, "data")
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Push.Listen, cfg.Wake.Listen, cfg.Wake.ShutdownListen = "off", "off", "off"
	return cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// TestDataDirOthersMayWriteRefused: a data directory that other users
// may write to is refused, naming the fix: they could replace the store,
// the certificate or the admin token (a token file they wrote, mode
// 0600, passes the token's own check). Before, the gateway started.
func TestDataDirOthersMayWriteRefused(t *testing.T) {
	t.Parallel()
	cfg, quiet := offlineConfig(t, t.TempDir())
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o777, 0o770, 0o777 | os.ModeSticky} {
		os.MkdirAll(cfg.Node.DataDir, 0o700)
		if err := os.Chmod(cfg.Node.DataDir, mode); err != nil {
			t.Fatal(err)
		}
		g, err := New(cfg, Listeners{}, quiet)
		if err == nil {
			g.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "chmod go-w "+cfg.Node.DataDir) {
			t.Errorf("data_dir of mode %v: %v; want refused, naming chmod go-w", mode, err)
		}
	}
	os.Chmod(cfg.Node.DataDir, 0o755) // others may read the names, not the files (0600)
	g, err := New(cfg, Listeners{}, quiet)
	if err != nil {
		t.Fatalf("data_dir of mode 0755: %v", err)
	}
	g.Close()
}

// TestWorldReadableSecretsRefused: a secret file the configuration names
// that every user may read (here the cluster's gossip key, which lets
// its holder speak for a node) is refused at start and by dpgate config,
// naming the key and the fix; group read is allowed. So is a
// configuration file every user may change.
func TestWorldReadableSecretsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg, quiet := offlineConfig(t, dir)
	cfg.Cluster.Bind = "127.0.0.1:0"
	cfg.Cluster.SecretKeyFile = filepath.Join(dir, "gossip.key")
	os.WriteFile(cfg.Cluster.SecretKeyFile, []byte(testGossipKey+"\n"), 0o644)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	want := "cluster.secret_key_file " + cfg.Cluster.SecretKeyFile + " may be read by every user on this machine (mode 0644): chmod o-r"
	if err := CheckFiles(cfg); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("CheckFiles: %v, want %q", err, want)
	}
	if g, err := New(cfg, Listeners{}, quiet); err == nil || !strings.Contains(err.Error(), want) {
		if err == nil {
			g.Close()
		}
		t.Errorf("New: %v, want %q", err, want)
	}
	os.Chmod(cfg.Cluster.SecretKeyFile, 0o640)
	if err := CheckFiles(cfg); err != nil {
		t.Errorf("CheckFiles with the key 0640: %v", err)
	}
	// The configuration file itself: every user may read it, not change it.
	f := filepath.Join(dir, "dpgate.yaml")
	os.WriteFile(f, []byte("node:\n  data_dir: data\n"), 0o644)
	os.Chmod(f, 0o666)
	fromFile, err := config.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckFiles(fromFile); err == nil || !strings.Contains(err.Error(), "chmod o-w "+f) {
		t.Errorf("CheckFiles with a configuration file of mode 0666: %v, want chmod o-w", err)
	}
}
