package gateway

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDataDirFullAtStartSaysSo: a data directory on a file system with
// too little room for the push queue's journal (two files of
// store.JournalSize, made in full at start) stops the gateway with an
// error that names node.data_dir and what it needs, each package's name
// once. Before: "gateway: push: push: queue: store: journal: write
// .../push-queue-0.journal: no space left on device".
func TestDataDirFullAtStartSaysSo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs; CI runs as root")
	}
	t.Parallel()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	cfg, opts := offlineConfig(t, dir)
	cfg.Push.Listen = "127.0.0.1:0"
	if err := os.MkdirAll(cfg.Node.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := New(cfg, Listeners{}, opts)
	if err == nil {
		t.Fatal("New on a 512 KiB file system: no error")
	}
	msg := err.Error()
	for _, want := range []string{"no space left on device", "node.data_dir " + filepath.Clean(cfg.Node.DataDir), "8 MiB"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "push: push:") {
		t.Errorf("error %q names the push package twice", msg)
	}
}
