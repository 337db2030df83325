//go:build linux

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/e2e"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/tlsconf"
)

// nobody is the unprivileged local user of the test (uid and gid 65534).
const nobody = 65534

// TestLocalUserLockedOut runs the real gateway with no token configured,
// as root, the way a package installs it, and tries the API as another
// local user: the CLI cannot read the token, a guessed token and no token
// get 401 on every route, and the certificate that user tried to add is
// not in the allow-list. The owner's CLI works with no flag.
func TestLocalUserLockedOut(t *testing.T) {
	t.Parallel() // its own ports and data directory
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a command as another user (uid 65534); CI runs as root")
	}
	// A tree nobody may traverse and read, as /etc/dpgate and /usr/bin are;
	// the gateway makes its data directory 0700 inside it.
	dir, err := os.MkdirTemp("", "dpgate-uid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	exe := filepath.Join(dir, "dpgate")
	if b, err := os.ReadFile(bin); err != nil || os.WriteFile(exe, b, 0o755) != nil {
		t.Fatalf("copying the binary: %v", err)
	}
	adminAddr := testutil.FreePort(t)
	sock := filepath.Join(dir, "run", "admin.sock")
	cfg := writeConfig(t, dir, adminAddr, "push:\n  listen: 127.0.0.1:0\n  auth: none\n  quic: false\n")
	body, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(body), "admin:\n", "admin:\n  socket: "+sock+"\n", 1)), 0o644)
	s := startServe(t, nil, "-c", cfg)
	s.WaitLog(t, `msg="admin API listening"`)

	asNobody := func(env []string, args ...string) result {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		return e2e.RunCmd(t, cmd)
	}
	stranger, _ := tlsconf.Issue(tlsconf.Template{CommonName: "stranger", Client: true}, nil)
	strangerPEM := filepath.Join(dir, "stranger.pem")
	os.WriteFile(strangerPEM, tlsconf.CertPEM(stranger), 0o644)

	r := asNobody(nil, "cert", "add", "-c", cfg, strangerPEM)
	if r.Code == 0 || !strings.Contains(r.Stderr, "permission denied") || !strings.Contains(r.Stderr, "DPGATE_TOKEN") {
		t.Errorf("cert add as uid %d: exit %d, stderr %q; want a failure saying the token could not be read", nobody, r.Code, r.Stderr)
	}
	r = asNobody([]string{"DPGATE_TOKEN=guessed"}, "cert", "add", "-c", cfg, strangerPEM)
	if r.Code == 0 || !strings.Contains(r.Stderr, "bearer token") {
		t.Errorf("cert add as uid %d with a guessed token: exit %d, stderr %q; want a 401", nobody, r.Code, r.Stderr)
	}

	// Every route, raw, from that user: 401 with no token or a guessed one.
	routes := []string{"GET /v1/status", "GET /v1/metrics", "GET /metrics", "POST /v1/reload", "GET /v1/store/check",
		"GET /v1/certs", "POST /v1/certs", "DELETE /v1/certs/" + strings.Repeat("ab", 32), "GET /v1/links",
		"GET /v1/devices", "GET /v1/devices/pc-1", "DELETE /v1/devices/pc-1", "POST /v1/devices/pc-1/push",
		"POST /v1/devices/pc-1/wake", "POST /v1/push", "GET /debug/pprof/", "GET /debug/pprof/heap", "GET /debug/pprof/cmdline"}
	for _, route := range routes {
		method, path, _ := strings.Cut(route, " ")
		for _, hdr := range []string{"X-None: 1", "Authorization: Bearer guessed"} {
			out, code := toolAs(t, nobody, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "-H", hdr,
				"--data-binary", "{}", "http://"+adminAddr+path)
			if code != 0 || out != "401" {
				t.Errorf("%s as uid %d with %q: curl exit %d, status %s; want 401", route, nobody, hdr, code, out)
			}
		}
	}
	if out, _ := toolAs(t, nobody, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://"+adminAddr+"/healthz"); out != "200" {
		t.Errorf("/healthz as uid %d: %s, want 200 (it stays open for probes)", nobody, out)
	}

	// The Unix socket: the owner needs no token over it; another user
	// cannot reach it (0600 in a 0700 directory), and if its mode is
	// loosened by mistake, the peer's uid still keeps them out (Linux).
	if out, code := tool(t, nil, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "http://dpgate/v1/status"); code != 0 || out != "200" {
		t.Errorf("GET /v1/status over the socket as the owner, no token: curl exit %d, %s; want 200", code, out)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	if out, code := toolAs(t, nobody, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "http://dpgate/v1/status"); code == 0 {
		t.Errorf("uid %d reached the admin socket: %s", nobody, out)
	}
	os.Chmod(filepath.Dir(sock), 0o755)
	os.Chmod(sock, 0o666)
	if out, _ := toolAs(t, nobody, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "http://dpgate/v1/status"); out != "401" {
		t.Errorf("uid %d over a socket left mode 0666: %s, want 401 (SO_PEERCRED)", nobody, out)
	}
	os.Chmod(sock, 0o600)

	// The owner notices nothing: the same CLI, no new flag.
	r = dpgate(t, nil, "cert", "list", "-c", cfg)
	if r.Code != 0 {
		t.Fatalf("cert list as the owner: exit %d: %s", r.Code, r.Stderr)
	}
	if strings.Contains(r.Stdout, tlsconf.Fingerprint(stranger.Leaf)) {
		t.Errorf("the stranger's certificate is in the allow-list:\n%s", r.Stdout)
	}
	if r := dpgate(t, nil, "push", "-c", cfg, "pc-1", "hello"); r.Code != 0 {
		t.Errorf("push as the owner: exit %d: %s", r.Code, r.Stderr)
	}
	if r := asNobody(nil, "push", "-c", cfg, "pc-1", "from a stranger"); r.Code == 0 {
		t.Errorf("push as uid %d succeeded: %s", nobody, r.Stdout)
	}
	var d struct{ Queued int }
	if err := apiClient(t, cfg).Do(context.Background(), "GET", "/v1/devices/pc-1", nil, &d); err != nil || d.Queued != 1 {
		t.Errorf("device pc-1: %+v, %v; want the owner's one push queued", d, err)
	}
}

// toolAs runs an external program as another user.
func toolAs(t *testing.T, uid uint32, name string, args ...string) (string, int) {
	t.Helper()
	return toolWith(t, nil, &syscall.Credential{Uid: uid, Gid: uid}, name, args...)
}
