//go:build linux

// Package wine runs the Windows build of dpgate, and the Windows builds
// of the agent's packages' tests, under Wine against the Linux build:
// cmd/dpgate's end-to-end tests for the other platform, in a package of
// their own (they take a Wine prefix, seconds of CPU to make).
package wine

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/e2e"
)

var bin string // the Linux dpgate binary

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "dpgate-wine")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "dpgate")
	if err := e2e.Build(bin, ".."); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	prepareWine()
	code := m.Run()
	stopWine()
	os.RemoveAll(dir)
	os.Exit(code)
}

// adminAPI is a client of the admin API on addr of the gateway whose
// data directory is dir/data, with its token.
func adminAPI(t *testing.T, dir, addr string) *admin.Client {
	t.Helper()
	token, err := os.ReadFile(filepath.Join(dir, "data", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return admin.NewClient(addr, strings.TrimSpace(string(token)))
}
