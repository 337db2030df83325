//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/e2e"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/tlsconf"
)

var (
	bin        string // the dpgate binary under test
	centralBin string // the stand-in central server (testdata/central)
	update     = flag.Bool("update", false, "rewrite golden files")
)

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "dpgate-bin")
	if err != nil {
		panic(err)
	}
	bin, centralBin = filepath.Join(dir, "dpgate"), filepath.Join(dir, "central")
	for _, b := range [][2]string{{bin, "."}, {centralBin, "./testdata/central"}} {
		if err := e2e.Build(b[0], b[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one finished dpgate run.
type result = e2e.Result

// dpgate runs the binary to completion (bounded by a minute).
func dpgate(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return e2e.Run(t, bin, env, args...)
}

// tool runs an external program (openssl, curl) and returns its output and exit code.
func tool(t *testing.T, stdin []byte, name string, args ...string) (string, int) {
	t.Helper()
	return toolWith(t, stdin, nil, name, args...)
}

// toolWith is tool run as the user cred names (nil: this one).
func toolWith(t *testing.T, stdin []byte, cred *syscall.Credential, name string, args ...string) (string, int) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is not installed: .ci/run installs it (apt-get install %s)", name, name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out), 0
}

// server is a running "dpgate serve".
type server = e2e.Server

// startServe runs "dpgate serve ARGS...".
func startServe(t *testing.T, env []string, args ...string) *server {
	t.Helper()
	return e2e.StartServe(t, bin, env, args...)
}

// writeConfig writes a config with a temporary data dir and admin address.
var writeConfig = e2e.WriteConfig

// apiClient is the admin client the CLI would use with -c cfgFile: the
// address and the token (data_dir/admin.token) from the configuration.
func apiClient(t *testing.T, cfgFile string) *admin.Client {
	t.Helper()
	c, _, err := adminClient(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readmeCommands returns the commands in the README's ```sh blocks.
func readmeCommands(t *testing.T) []string {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for _, block := range strings.Split(string(data), "```sh\n")[1:] {
		body, _, _ := strings.Cut(block, "```")
		cmds = append(cmds, strings.TrimSpace(body))
	}
	return cmds
}

func TestReadmeSetUpCommands(t *testing.T) {
	cmds := readmeCommands(t)
	if len(cmds) != 2 {
		t.Fatalf("README has %d set-up commands, want exactly 2: %q", len(cmds), cmds)
	}
	// CI runs exactly the README's test command (which does its own
	// set-up), as its last line.
	ci, _ := os.ReadFile("../../.ci/run")
	lines := strings.Split(strings.TrimSpace(string(ci)), "\n")
	if last := strings.TrimSpace(lines[len(lines)-1]); last != cmds[1] {
		t.Errorf(".ci/run ends with %q, want the README's test command %q", last, cmds[1])
	}
}

// TestServeOnDefaults runs the README's first command (as the built
// binary): no config at all. The data directory comes from
// STATE_DIRECTORY, as under systemd, so the test does not touch /var/lib.
func TestServeOnDefaults(t *testing.T) {
	args, ok := strings.CutPrefix(readmeCommands(t)[0], "go run ./cmd/dpgate ")
	if !ok {
		t.Fatalf("README's first command %q is not go run ./cmd/dpgate ...", readmeCommands(t)[0])
	}
	if c, err := net.Dial("tcp", "127.0.0.1:13290"); err == nil {
		c.Close()
		t.Fatal("127.0.0.1:13290 is taken by another process; this test runs dpgate on its defaults and needs it")
	}
	dataDir := t.TempDir()
	s := startServe(t, []string{"STATE_DIRECTORY=" + dataDir}, strings.Fields(args)[1:]...)
	m := s.WaitLog(t, `msg="generated gateway certificate" file=(\S+) pin="?(sha256//[A-Za-z0-9+/=]+)`)
	if m[1] != filepath.Join(dataDir, "gateway.pem") {
		t.Errorf("certificate written to %s, want %s", m[1], filepath.Join(dataDir, "gateway.pem"))
	}
	if r := dpgate(t, nil, "cert", "pin", m[1]); strings.TrimSpace(r.Stdout) != m[2] {
		t.Errorf("logged pin %s, cert pin says %s", m[2], r.Stdout)
	}
	s.WaitLog(t, `msg="admin API listening" addr=127.0.0.1:13290`)
	waitFor(t, 10*time.Second, func() error {
		resp, err := http.Get("http://127.0.0.1:13290/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("/healthz answered %s", resp.Status)
		}
		return nil
	})
	code, took := s.Stop(t, syscall.SIGINT)
	if code != 0 {
		t.Errorf("exit code %d after SIGINT, want 0", code)
	}
	if took > 5*time.Second {
		t.Errorf("took %v to exit after SIGINT, want at most 5s", took)
	}
	t.Logf("exited %v after SIGINT", took)
}

func TestCertGenReadByOpenSSL(t *testing.T) {
	dir := t.TempDir()
	one := filepath.Join(dir, "one.pem")
	r := dpgate(t, nil, "cert", "gen", "--cn", "gw.example", "--dns", "gw.example", "--ip", "127.0.0.1", "--out", one)
	if r.Code != 0 {
		t.Fatalf("cert gen: exit %d: %s", r.Code, r.Stderr)
	}
	pin := strings.TrimSpace(r.Stdout)
	if fi, _ := os.Stat(one); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", one, fi.Mode().Perm())
	}
	out, code := tool(t, nil, "openssl", "x509", "-in", one, "-noout", "-subject", "-ext", "subjectAltName")
	if code != 0 || !strings.Contains(out, "gw.example") || !strings.Contains(out, "127.0.0.1") {
		t.Errorf("openssl x509 (exit %d) did not show the subject and SANs:\n%s", code, out)
	}
	if out, code := tool(t, nil, "openssl", "pkey", "-in", one, "-noout"); code != 0 {
		t.Errorf("openssl pkey cannot read the key in the one-file PEM (exit %d): %s", code, out)
	}
	// The pin is the same digest openssl computes from the public key.
	pub, _ := tool(t, nil, "openssl", "x509", "-in", one, "-noout", "-pubkey")
	der, _ := tool(t, []byte(pub), "openssl", "pkey", "-pubin", "-outform", "DER")
	digest, _ := tool(t, []byte(der), "openssl", "dgst", "-sha256", "-binary")
	b64, _ := tool(t, []byte(digest), "openssl", "base64", "-A")
	if want := "sha256//" + strings.TrimSpace(b64); pin != want {
		t.Errorf("cert gen printed pin %s, openssl computes %s", pin, want)
	}

	crt, key := filepath.Join(dir, "two.crt"), filepath.Join(dir, "two.key")
	if r := dpgate(t, nil, "cert", "gen", "--cn", "central", "--key", "rsa-2048", "--days", "30", "--cert-out", crt, "--key-out", key); r.Code != 0 {
		t.Fatalf("cert gen two files: exit %d: %s", r.Code, r.Stderr)
	}
	out, _ = tool(t, nil, "openssl", "x509", "-in", crt, "-noout", "-text")
	if !strings.Contains(out, "Public-Key: (2048 bit)") {
		t.Errorf("openssl x509 does not show a 2048-bit key:\n%s", out)
	}
	if out, code := tool(t, nil, "openssl", "rsa", "-in", key, "-check", "-noout"); code != 0 || !strings.Contains(out, "RSA key ok") {
		t.Errorf("openssl rsa -check (exit %d): %s", code, out)
	}
	if r := dpgate(t, nil, "cert", "gen", "--cn", "x", "--out", one); r.Code != 1 || !strings.Contains(r.Stderr, "exists") {
		t.Errorf("overwriting without --force: exit %d %q, want 1 and a message that the file exists", r.Code, r.Stderr)
	}
}

func TestAgentGenReadByOpenSSL(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, testutil.FreePort(t), "") // no gateway runs: offline on data_dir
	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("correct horse\n"), 0o600)

	cases := []struct {
		name, pwFlag, pass string
	}{
		{"with password", pwFile, "pass:correct horse"},
		{"without password", "", "pass:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".pfx")
			args := []string{"cert", "agent-gen", "-c", cfg, "--cn", "device-42", "--out", out}
			if tc.pwFlag != "" {
				args = append(args, "--password-file", tc.pwFlag)
			}
			if r := dpgate(t, nil, args...); r.Code != 0 {
				t.Fatalf("agent-gen: exit %d: %s", r.Code, r.Stderr)
			}
			text, code := tool(t, nil, "openssl", "pkcs12", "-in", out, "-passin", tc.pass, "-nodes")
			if code != 0 || !strings.Contains(text, "CN = device-42") || !strings.Contains(text, "PRIVATE KEY") {
				t.Errorf("openssl pkcs12 (exit %d) did not show the certificate and key:\n%s", code, text)
			}
			if !strings.Contains(text, "dpgate agent CA e2e") {
				t.Errorf("the PFX does not carry the agent CA:\n%s", text)
			}
			if _, code := tool(t, nil, "openssl", "pkcs12", "-in", out, "-passin", "pass:wrong", "-nokeys"); code == 0 {
				t.Error("openssl accepted a wrong password")
			}
		})
	}
	r := dpgate(t, nil, "cert", "list", "-c", cfg, "--json")
	var list admin.CertList
	if err := json.Unmarshal([]byte(r.Stdout), &list); err != nil || list.Count != 2 {
		t.Errorf("offline cert list: %d entries, %v; want 2 (%s)", list.Count, err, r.Stderr)
	}
}

// TestCurlPinnedPubkey: curl's own pin check accepts a TLS listener that
// serves the certificate whose pin "cert pin" printed, and refuses another.
func TestCurlPinnedPubkey(t *testing.T) {
	dir := t.TempDir()
	good, other := filepath.Join(dir, "good.pem"), filepath.Join(dir, "other.pem")
	dpgate(t, nil, "cert", "gen", "--cn", "localhost", "--out", good)
	dpgate(t, nil, "cert", "gen", "--cn", "localhost", "--out", other)
	pin := strings.TrimSpace(dpgate(t, nil, "cert", "pin", good).Stdout)

	for _, tc := range []struct {
		name     string
		serve    string
		wantCode int
	}{
		{"same certificate", good, 0},
		{"different certificate", other, 90}, // CURLE_SSL_PINNEDPUBKEYNOTMATCH
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tlsconf.LoadIdentity(tc.serve, "")
			if err != nil {
				t.Fatal(err)
			}
			ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconf.ServerConfig(id, nil))
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "pinned ok") })}
			go srv.Serve(ln)
			defer srv.Close()
			out, code := tool(t, nil, "curl", "-sS", "-k", "--max-time", "20", "--pinnedpubkey", pin, "https://"+ln.Addr().String()+"/")
			if code != tc.wantCode {
				t.Errorf("curl exit %d, want %d: %s", code, tc.wantCode, out)
			}
			if tc.wantCode == 0 && !strings.Contains(out, "pinned ok") {
				t.Errorf("curl output %q, want the page", out)
			}
		})
	}
}

// writeBadPair writes a certificate/key pair broken in the named way.
func writeBadPair(t *testing.T, dir, kind string) string {
	t.Helper()
	now := time.Now()
	var key any
	notBefore, notAfter := now.Add(-time.Hour), now.Add(time.Hour)
	switch kind {
	case "rsa1024":
		key, _ = rsa.GenerateKey(rand.Reader, 1024)
	case "expired":
		key, _ = rsa.GenerateKey(rand.Reader, 2048)
		notBefore, notAfter = now.Add(-72*time.Hour), now.Add(-24*time.Hour)
	default:
		key, _ = rsa.GenerateKey(rand.Reader, 2048)
	}
	signer := key.(*rsa.PrivateKey)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: kind}, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	if kind == "mismatch" {
		signer, _ = rsa.GenerateKey(rand.Reader, 2048)
	}
	f := filepath.Join(dir, kind+".pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	data = append(data, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(signer)})...)
	os.WriteFile(f, data, 0o600)
	return f
}

// TestBadInput: each bad input gets a clear error, no panic, and the
// documented exit code (2: command line or configuration file; 1: a
// failure while running, such as an unusable certificate file).
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		f := filepath.Join(dir, name)
		os.WriteFile(f, []byte(body), 0o600)
		return f
	}
	tlsConfig := func(cert string) string {
		return writeConfig(t, t.TempDir(), testutil.FreePort(t), "tls:\n  cert: "+cert+"\n")
	}
	pfxFile := filepath.Join(dir, "good.pfx")
	pw := write("pw", "right\n")
	wrongPW := write("wrongpw", "wrong\n")
	agentCfg := writeConfig(t, t.TempDir(), testutil.FreePort(t), "")
	if r := dpgate(t, nil, "cert", "agent-gen", "-c", agentCfg, "--cn", "d", "--out", pfxFile, "--password-file", pw); r.Code != 0 {
		t.Fatalf("agent-gen: %s", r.Stderr)
	}
	pfxData, _ := os.ReadFile(pfxFile)
	corruptPFX := write("corrupt.pfx", string(pfxData[:len(pfxData)/2]))
	garbage := write("garbage.pem", "this is not PEM\n")
	// Secrets every user may read: the gateway refuses them, and so do
	// the commands that sign with them.
	openKey := write("open.key", "ZHBnYXRlIHRlc3QgY2x1c3RlciBnb3NzaXAga2V5ISE=\n")
	os.Chmod(openKey, 0o644)
	openSecrets := writeConfig(t, t.TempDir(), testutil.FreePort(t), "push:\n  token_key_file: "+openKey+"\nwake:\n  secret_file: "+openKey+"\n")

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"unknown config key", []string{"serve", "-c", write("unknown.yaml", "node:\n  nmae: x\n")}, 2, "unknown.yaml:2: node.nmae: unknown key"},
		{"wrong config type", []string{"serve", "-c", write("type.yaml", "push:\n  max_connections: many\n")}, 2, "push.max_connections: \"many\" is not an integer"},
		{"missing config file", []string{"serve", "-c", filepath.Join(dir, "nope.yaml")}, 2, "no such file"},
		{"argument to serve", []string{"serve", "now"}, 2, `serve takes no arguments, got ["now"]`},
		{"argument to store check", []string{"store", "check", "dpgate.db"}, 2, `store check takes no arguments, got ["dpgate.db"]`},
		{"RSA-1024 certificate", []string{"serve", "-c", tlsConfig(writeBadPair(t, dir, "rsa1024"))}, 1, "RSA key has 1024 bits, at least 2048"},
		{"expired certificate", []string{"serve", "-c", tlsConfig(writeBadPair(t, dir, "expired"))}, 1, "certificate expired"},
		{"mismatched key", []string{"serve", "-c", tlsConfig(writeBadPair(t, dir, "mismatch"))}, 1, "private key does not match the certificate"},
		{"garbage PEM as certificate", []string{"serve", "-c", tlsConfig(garbage)}, 1, "no CERTIFICATE block"},
		{"garbage PEM to cert pin", []string{"cert", "pin", garbage}, 1, "neither PEM"},
		{"garbage PEM to cert add", []string{"cert", "add", "-c", agentCfg, garbage}, 1, "no CERTIFICATE block"},
		{"corrupt PFX", []string{"cert", "pin", corruptPFX, "--password-file", pw}, 1, "not a valid PKCS#12"},
		{"wrong PFX password", []string{"cert", "pin", pfxFile, "--password-file", wrongPW}, 1, "wrong password"},
		{"agent certificate for a bad device id", []string{"cert", "agent-gen", "-c", agentCfg, "--cn", "has space", "--out", filepath.Join(dir, "bad.pfx")}, 2, "white-space"},
		{"token signed with a key every user may read", []string{"token", "issue", "-c", openSecrets, "pc-1"}, 1, "push.token_key_file " + openKey + " may be read by every user"},
		{"wake secret every user may read", []string{"wake", "key", "--device", "pc-1", "-c", openSecrets}, 1, "wake.secret_file " + openKey + " may be read by every user"},
		{"token for a 129-byte device id", []string{"token", "issue", "-c", agentCfg, strings.Repeat("a", 129)}, 2, "device id of 129 bytes"},
		{"push to an empty device id", []string{"push", "-c", agentCfg, "", "job"}, 2, "push: device id is empty"},
		// Before: queued with push.queue_ttl (a day by default), as if no --ttl were given.
		{"push with a negative ttl", []string{"push", "-c", agentCfg, "--ttl", "-5s", "pc-1", "job"}, 2, "--ttl -5s is not a positive duration"},
		{"push with a wait beyond the minute", []string{"push", "-c", agentCfg, "--wait", "5m", "pc-1", "job"}, 2, "--wait 5m0s is longer than 1m"},
		{"device show of an id with a space", []string{"device", "show", "-c", agentCfg, "pc 1"}, 2, "white-space"},
		{"device rm of an empty id", []string{"device", "rm", "-c", agentCfg, "pc-1", ""}, 2, "device rm: device id is empty"},
		{"wake of an empty device id", []string{"wake", "-c", agentCfg, ""}, 2, "wake: device id is empty"},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"unknown flag", []string{"serve", "--bogus"}, 2, "flag provided but not defined"},
		{"missing required flag", []string{"cert", "gen", "--out", filepath.Join(dir, "x.pem")}, 2, "--cn is required"},
		{"bad key type", []string{"cert", "gen", "--cn", "x", "--key", "rsa-1024", "--out", filepath.Join(dir, "x.pem")}, 2, "not one of"},
		{"rm unknown fingerprint", []string{"cert", "rm", "-c", agentCfg, strings.Repeat("00ff", 16)}, 1, "not in the allow-list"},
		{"rm part of a fingerprint", []string{"cert", "rm", "-c", agentCfg, "c802"}, 2, `"c802" is not a SHA-256 fingerprint: 64 hex digits`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dpgate(t, nil, tt.args...)
			if r.Code != tt.wantCode {
				t.Errorf("exit code %d, want %d (stderr: %s)", r.Code, tt.wantCode, r.Stderr)
			}
			if !strings.Contains(r.Stderr, tt.wantErr) {
				t.Errorf("stderr %q does not say %q", r.Stderr, tt.wantErr)
			}
		})
	}
	// The right password works, so the failure above was the password.
	if r := dpgate(t, nil, "cert", "pin", pfxFile, "--password-file", pw); r.Code != 0 || !strings.HasPrefix(r.Stdout, "sha256//") {
		t.Errorf("cert pin with the right password: exit %d, %q", r.Code, r.Stdout)
	}
}

// TestCertCommandsOnlineAndOffline: list/add/rm go through the running
// gateway's API (the gateway logs them), and work on the data directory
// once it has stopped. SIGHUP reloads the certificate.
func TestCertCommandsOnlineAndOffline(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, testutil.FreePort(t), "")
	s := startServe(t, nil, "-c", cfg)
	s.WaitLog(t, "admin API listening")

	agentPEM := filepath.Join(dir, "agent.pem")
	dpgate(t, nil, "cert", "gen", "--cn", "device-1", "--out", agentPEM)
	if r := dpgate(t, nil, "cert", "add", "-c", cfg, agentPEM); r.Code != 0 || !strings.Contains(r.Stdout, "CN=device-1") {
		t.Fatalf("cert add: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	s.WaitLog(t, `msg="agent certificates added" count=1`)
	r := dpgate(t, nil, "cert", "list", "-c", cfg, "--json")
	var list admin.CertList
	json.Unmarshal([]byte(r.Stdout), &list)
	if list.Count != 1 || !strings.Contains(r.Stderr, "read from the running gateway") {
		t.Fatalf("online list: %d entries, want 1; stderr %q should say it read the running gateway", list.Count, r.Stderr)
	}
	fp := list.Certs[0].Fingerprint

	// Reload on SIGHUP: replace the generated certificate, expect its pin.
	gwPEM := filepath.Join(dir, "data", "gateway.pem")
	os.Remove(gwPEM)
	newPin := strings.TrimSpace(dpgate(t, nil, "cert", "gen", "--cn", "e2e", "--out", gwPEM).Stdout)
	s.Cmd.Process.Signal(syscall.SIGHUP)
	s.WaitLog(t, `msg=reloaded pin="?`+regexp.QuoteMeta(newPin))

	if r := dpgate(t, nil, "cert", "rm", "-c", cfg, strings.ToUpper(fp)); r.Code != 0 {
		t.Fatalf("cert rm: exit %d: %s", r.Code, r.Stderr)
	}
	s.WaitLog(t, `msg="agent certificate removed" fingerprint=`+fp)
	dpgate(t, nil, "cert", "add", "-c", cfg, agentPEM)

	if code, _ := s.Stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	r = dpgate(t, nil, "cert", "list", "-c", cfg, "--fingerprint", fp[5:15])
	if r.Code != 0 || !strings.Contains(r.Stdout, fp) || !strings.Contains(r.Stderr, "offline (no gateway answered)") {
		t.Errorf("offline list after the gateway stopped: exit %d, want the entry and a word that it read the data directory offline\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
}

// TestHelpGolden checks every command's --help against testdata/help.
func TestHelpGolden(t *testing.T) {
	cmds := [][]string{
		{}, {"serve"}, {"config"}, {"version"}, {"cert"}, {"push"}, {"agent"}, {"token"}, {"token", "issue"}, {"wake"}, {"wake", "key"}, {"probe"}, {"reflect"},
		{"store"}, {"store", "check"}, {"store", "recover"}, {"store", "reset"},
		{"cert", "gen"}, {"cert", "pin"}, {"cert", "agent-gen"}, {"cert", "list"}, {"cert", "add"}, {"cert", "rm"},
		{"device"}, {"device", "list"}, {"device", "show"}, {"device", "rm"}, {"upgrade"}, {"status"}, {"members"}, {"members", "forget"}, {"devices"}, {"completion"}, {"man"}, {"service"},
	}
	for _, c := range commands() { // a new command needs its golden too
		if !slices.ContainsFunc(cmds, func(args []string) bool { return len(args) == 1 && args[0] == c.name }) {
			t.Errorf("command %s is missing from TestHelpGolden", c.name)
		}
	}
	for _, c := range cmds {
		name := strings.Join(append([]string{"dpgate"}, c...), "_")
		t.Run(name, func(t *testing.T) {
			r := dpgate(t, nil, append(c, "--help")...)
			if r.Code != 0 {
				t.Errorf("--help exited %d, want 0", r.Code)
			}
			file := filepath.Join("testdata", "help", name+".txt")
			if *update {
				os.MkdirAll(filepath.Dir(file), 0o755)
				os.WriteFile(file, []byte(r.Stdout), 0o644)
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (go test -update writes it)", err)
			}
			if r.Stdout != string(want) {
				t.Errorf("--help output differs from %s:\n%s", file, r.Stdout)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	r := dpgate(t, nil, "version")
	if r.Code != 0 || !strings.HasPrefix(r.Stdout, "dpgate ") || !strings.Contains(r.Stdout, "commit ") || !strings.Contains(r.Stdout, "go1.") {
		t.Errorf("version: exit %d, output %q; want version, commit and Go version", r.Code, r.Stdout)
	}
}

// waitFor is testutil.WaitFor under the short name these tests use.
var waitFor = testutil.WaitFor

// TestConfigLoadsNamedFiles: "dpgate config" loads every file the
// configuration names and exits 2 naming the key (before, a missing
// tls.cert passed with 0 and serve failed with 1).
func TestConfigLoadsNamedFiles(t *testing.T) {
	dir := t.TempDir()
	agent, _ := tlsconf.Issue(tlsconf.Template{CommonName: "gw-client", Client: true}, nil)
	pfx, _ := tlsconf.EncodePFX(agent, nil, "right")
	os.WriteFile(filepath.Join(dir, "client.pfx"), pfx, 0o600)
	os.WriteFile(filepath.Join(dir, "wrong.pw"), []byte("wrong\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "right.pw"), []byte("right\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "gossip.key"), []byte("not base64 of a key\n"), 0o600)
	for _, tc := range []struct{ name, yaml, want string }{
		{"missing certificate", "tls:\n  cert: /nonexistent.pem\n", "tls.cert"},
		{"PFX with the wrong password", "proxy:\n  upstreams:\n    - address: 127.0.0.1:1\n      client_cert: client.pfx\n      client_cert_password_file: wrong.pw\n", "proxy.upstreams[0].client_cert"},
		{"missing admin token", "admin:\n  token_file: nothere.token\n", "admin.token_file"},
		{"missing token keys", "push:\n  auth: token\n  token_key_file: nothere.key\n", "push.token_key_file"},
		{"missing wake secret", "wake:\n  secret_file: nothere.key\n", "wake.secret_file"},
		{"bad gossip key", "cluster:\n  bind: 127.0.0.1:0\n  secret_key_file: gossip.key\n", "cluster.secret_key_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, "dpgate.yaml")
			os.WriteFile(f, []byte("node:\n  data_dir: data\n"+tc.yaml), 0o644)
			r := dpgate(t, nil, "config", "-c", f)
			if r.Code != 2 || !strings.Contains(r.Stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 naming %s", r.Code, r.Stderr, tc.want)
			}
		})
	}
	f := filepath.Join(dir, "good.yaml")
	os.WriteFile(f, []byte("node:\n  data_dir: data\nproxy:\n  upstreams:\n    - address: 127.0.0.1:1\n      client_cert: client.pfx\n      client_cert_password_file: right.pw\n"), 0o644)
	if r := dpgate(t, nil, "config", "-c", f); r.Code != 0 {
		t.Errorf("a configuration whose files load: exit %d, %s", r.Code, r.Stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Error("dpgate config created the data directory")
	}
}

// TestServiceIsWindowsOnly: here "dpgate service" says what runs dpgate
// instead (systemd, launchd), exit 1.
func TestServiceIsWindowsOnly(t *testing.T) {
	r := dpgate(t, nil, "service", "install", "x", "--", "serve")
	if r.Code != 1 || !strings.Contains(r.Stderr, "Windows only") || !strings.Contains(r.Stderr, "configs/dpgate.service") {
		t.Errorf("service on Linux: exit %d, %q", r.Code, r.Stderr)
	}
}

// TestLogPrioritiesForJournald: under systemd, standard error goes to the
// journal, which filed every line as info: journalctl -p warning showed
// none of the gateway's warnings or errors. With standard error the
// stream JOURNAL_STREAM names, each line carries its syslog priority
// (<4> a warning, <6> info) for journald to file it by; elsewhere (a
// file, a terminal, standard error redirected) the lines are as before.
func TestLogPrioritiesForJournald(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := writeConfig(t, dir, testutil.FreePort(t), "")
	// A damaged QUIC reset key: a warning at start.
	os.MkdirAll(filepath.Join(dir, "data"), 0o700)
	os.WriteFile(filepath.Join(dir, "data", "quic-reset.key"), []byte("damaged"), 0o600)
	for _, journal := range []bool{true, false} {
		out, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := out.Stat()
		st := fi.Sys().(*syscall.Stat_t)
		stream := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
		if !journal {
			stream = fmt.Sprintf("%d:%d", st.Dev, st.Ino+1) // another file's
		}
		cmd := exec.Command(bin, "serve", "-c", cfg)
		cmd.Env = append(os.Environ(), "JOURNAL_STREAM="+stream)
		cmd.Stderr = out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var log string
		waitFor(t, 30*time.Second, func() error {
			b, _ := os.ReadFile(out.Name())
			if log = string(b); !strings.Contains(log, `msg="push server listening"`) {
				return errors.New("the push server has not started")
			}
			return nil
		})
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		out.Close()
		b, _ := os.ReadFile(out.Name())
		log = string(b)
		for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
			prefixed := regexp.MustCompile(`^<\d>`).MatchString(line)
			want := map[bool]string{true: "<6>", false: ""}[journal]
			if strings.Contains(line, "level=WARN") && journal {
				want = "<4>"
			}
			if prefixed != journal || !strings.HasPrefix(line, want+"time=") {
				t.Errorf("journal %v: line %q, want it after %q", journal, line, want)
			}
		}
		if !strings.Contains(log, "level=WARN") {
			t.Errorf("no warning logged (the damaged QUIC key's):\n%s", log)
		}
	}
}
