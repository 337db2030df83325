//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dpgate/dpgate/internal/testutil"
)

// TestDamagedStoreRefused runs the real binary on the store files an
// operator or a failing disk leaves behind: a file cut short, an empty
// file, a missing file in a data directory that held one, and a payload
// byte changed. Each damaged file is refused at start with exit 1 and a
// message naming the file and the next step (no panic); "dpgate store
// check" reports it; "dpgate store recover" copies what can be read, after
// which the gateway starts and has the intact records.
func TestDamagedStoreRefused(t *testing.T) {
	t.Parallel() // its own ports and data directory
	dir := t.TempDir()
	cfg := writeConfig(t, dir, testutil.FreePort(t), "push:\n  listen: 127.0.0.1:0\n  quic: false\n")
	db := filepath.Join(dir, "data", "dpgate.db")
	s := startServe(t, nil, "-c", cfg)
	s.WaitLog(t, `msg="push server listening"`)
	const n = 12
	for i := range n {
		if r := dpgate(t, nil, "push", "-c", cfg, "device-1", fmt.Sprintf("job-%02d", i)); r.Code != 0 {
			t.Fatalf("push %d: exit %d: %s", i, r.Code, r.Stderr)
		}
	}
	if code, _ := s.Stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	good, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	if r := dpgate(t, nil, "store", "check", "-c", cfg); r.Code != 0 {
		t.Fatalf("store check of a sound store: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}

	refused := func(t *testing.T, want string) {
		t.Helper()
		r := dpgate(t, nil, "serve", "-c", cfg) // dpgate() fails the test on a panic
		if r.Code != 1 {
			t.Fatalf("serve on a damaged store: exit %d, want 1\n%s", r.Code, r.Stderr)
		}
		for _, w := range []string{db, want} {
			if !strings.Contains(r.Stderr, w) {
				t.Errorf("serve's error does not say %q:\n%s", w, r.Stderr)
			}
		}
	}
	t.Run("cut short", func(t *testing.T) {
		os.WriteFile(db, good[:12288], 0o600)
		refused(t, "dpgate store recover")
		r := dpgate(t, nil, "store", "check", "-c", cfg)
		if r.Code != 1 || !strings.Contains(r.Stdout, "cut short") {
			t.Errorf("store check: exit %d, want 1 and \"cut short\":\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
	})
	t.Run("empty", func(t *testing.T) {
		os.WriteFile(db, nil, 0o600)
		refused(t, "empty (0 bytes)")
	})
	t.Run("missing", func(t *testing.T) {
		os.Remove(db)
		refused(t, "dpgate store reset")
		if _, err := os.Stat(db); err == nil {
			t.Error("serve re-created the missing store")
		}
	})
	t.Run("payload altered, then recovered", func(t *testing.T) {
		bad := bytes.ReplaceAll(good, []byte("job-07"), []byte("job-7X"))
		os.WriteFile(db, bad, 0o600)
		r := dpgate(t, nil, "store", "check", "-c", cfg)
		if r.Code != 1 || !strings.Contains(r.Stdout, "push_queue") {
			t.Fatalf("store check: exit %d, want 1 naming push_queue:\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		r = dpgate(t, nil, "store", "recover", "-c", cfg)
		if r.Code != 0 || !strings.Contains(r.Stdout, "lost 1 failing their checksum") {
			t.Fatalf("store recover: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
		matches, _ := filepath.Glob(db + ".damaged-*")
		if len(matches) != 1 {
			t.Errorf("damaged file kept as %v, want one dpgate.db.damaged-*", matches)
		}
		if r := dpgate(t, nil, "store", "check", "-c", cfg); r.Code != 0 {
			t.Errorf("store check after recover: exit %d\n%s", r.Code, r.Stdout)
		}
		s := startServe(t, nil, "-c", cfg)
		s.WaitLog(t, `msg="push server listening"`)
		r = dpgate(t, nil, "push", "-c", cfg, "device-1", "after-recover")
		if r.Code != 0 {
			t.Fatalf("push after recover: exit %d: %s", r.Code, r.Stderr)
		}
		s.Stop(t, syscall.SIGTERM)
	})
	t.Run("reset", func(t *testing.T) {
		os.Remove(db)
		if r := dpgate(t, nil, "store", "reset", "-c", cfg); r.Code != 2 {
			t.Errorf("store reset without --force: exit %d, want 2", r.Code)
		}
		if r := dpgate(t, nil, "store", "reset", "--force", "-c", cfg); r.Code != 0 {
			t.Fatalf("store reset --force: exit %d: %s", r.Code, r.Stderr)
		}
		s := startServe(t, nil, "-c", cfg)
		s.WaitLog(t, `msg="push server listening"`)
		s.Stop(t, syscall.SIGTERM)
	})
}
