package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/tlsconf"
)

var gatewaySeq atomic.Int64

// newTestGateway starts a gateway on a temporary data dir with the admin
// API on 127.0.0.1:0 and returns it with an API client.
//
// Every test of this package but TestMemoryReturned (it reads the
// process's heap) runs in parallel: each has its own gateways, ports and
// data dirs, and most of their time is waiting (for gossip, a browser,
// link probes, failover), 30 s on two cores when most ran one after
// another.
func newTestGateway(t testing.TB, yaml string) (*Gateway, *admin.Client, string) {
	t.Helper()
	return newTestGatewayWith(t, yaml, Options{})
}

// testGossipKey is the cluster key of the test clusters (base64 of 32
// bytes).
const testGossipKey = "ZHBnYXRlIHRlc3QgY2x1c3RlciBnb3NzaXAga2V5ISE="

// newTestGatewayWith is newTestGateway with options for New (a quiet
// logger unless they name one). A cluster in yaml gets the test key.
func newTestGatewayWith(t testing.TB, yaml string, opts Options) (*Gateway, *admin.Client, string) {
	t.Helper()
	dir := t.TempDir()
	f := filepath.Join(dir, "dpgate.yaml")
	if !strings.Contains(yaml, "push:") {
		yaml += "push:\n  listen: 127.0.0.1:0\n"
	}
	if !strings.Contains(yaml, "wake:") { // not the standard ports: tests run side by side
		yaml += "wake:\n  listen: 127.0.0.1:0\n  shutdown_listen: 127.0.0.1:0\n"
	}
	if strings.Contains(yaml, "cluster:\n") && !strings.Contains(yaml, "secret_key_file") {
		// The gossip key every test cluster shares (required with bind).
		key := filepath.Join(dir, "gossip.key")
		os.WriteFile(key, []byte(testGossipKey+"\n"), 0o600)
		yaml = strings.Replace(yaml, "cluster:\n", "cluster:\n  secret_key_file: "+key+"\n", 1)
	}
	// Unique names: gateways in one test may form a cluster.
	name := fmt.Sprintf("gw-test-%d", gatewaySeq.Add(1))
	os.WriteFile(f, []byte("node:\n  name: "+name+"\n  data_dir: data\nadmin:\n  listen: 127.0.0.1:0\n"+yaml), 0o644)
	cfg, err := config.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	g, api := startTestGatewayWith(t, cfg, opts)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return g, api, dir
}

// startTestGateway builds and starts a gateway from cfg and returns it
// with a client of its admin API; the caller stops it.
func startTestGateway(t testing.TB, cfg *config.Config) (*Gateway, *admin.Client) {
	t.Helper()
	return startTestGatewayWith(t, cfg, Options{})
}

func startTestGatewayWith(t testing.TB, cfg *config.Config, opts Options) (*Gateway, *admin.Client) {
	t.Helper()
	ls, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = testutil.Logger(t, cfg.Node.Name)
	}
	g, err := New(cfg, ls, opts)
	if err != nil {
		t.Fatal(err)
	}
	g.Start()
	token, err := tlsconf.ReadSecretFile(first(cfg.AdminTokenFile()))
	if err != nil {
		t.Fatal(err)
	}
	return g, admin.NewClient(ls.Admin.Addr().String(), token)
}

func TestFirstStartGeneratesCertificate(t *testing.T) {
	t.Parallel()
	g, c, dir := newTestGateway(t, "")
	file := filepath.Join(dir, "data", CertFile)
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatalf("no generated certificate: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", file, fi.Mode().Perm())
	}
	var st Status
	if err := c.Do(context.Background(), "GET", "/v1/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Pin != g.Identity().Pin() || st.Node != g.cfg.Node.Name {
		t.Errorf("status pin %s node %s, want %s and %s", st.Pin, st.Node, g.Identity().Pin(), g.cfg.Node.Name)
	}
}

func TestCertsAPI(t *testing.T) {
	t.Parallel()
	g, c, _ := newTestGateway(t, "")
	ctx := context.Background()
	agent, _ := tlsconf.Issue(tlsconf.Template{CommonName: "dev-7", Client: true}, nil)

	var change admin.CertChange
	if err := c.Do(ctx, "POST", "/v1/certs", tlsconf.CertPEM(agent), &change); err != nil {
		t.Fatal(err)
	}
	if len(change.Added) != 1 || g.AllowList().Len() != 1 {
		t.Fatalf("POST added %d, list holds %d; want 1 and 1", len(change.Added), g.AllowList().Len())
	}
	fp := change.Added[0].Fingerprint

	var list admin.CertList
	c.Do(ctx, "GET", "/v1/certs?fingerprint="+strings.ToUpper(fp[10:20]), nil, &list)
	if list.Count != 1 {
		t.Errorf("filter by fingerprint part: %d entries, want 1", list.Count)
	}
	c.Do(ctx, "GET", "/v1/certs?serial=nomatch", nil, &list)
	if list.Count != 0 {
		t.Errorf("filter by unknown serial: %d entries, want 0", list.Count)
	}

	err := c.Do(ctx, "POST", "/v1/certs", []byte("not pem"), nil)
	var he *admin.HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusBadRequest {
		t.Errorf("POST garbage: got %v, want a 400", err)
	}
	if err := c.Do(ctx, "POST", "/v1/certs", map[string]string{"pem": string(tlsconf.CertPEM(agent))}, nil); err != nil {
		t.Errorf("POST JSON form: %v", err)
	}

	if err := c.Do(ctx, "DELETE", "/v1/certs/"+fp, nil, &change); err != nil || len(change.Removed) != 1 {
		t.Errorf("DELETE: %v, removed %d; want 1", err, len(change.Removed))
	}
	if err := c.Do(ctx, "DELETE", "/v1/certs/"+fp, nil, nil); !errors.As(err, &he) || he.Status != http.StatusNotFound {
		t.Errorf("DELETE again: got %v, want a 404", err)
	}
}

func TestTokenRequiredWhenConfigured(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("s3cret-s3cret-s3cret\n"), 0o600)
	_, c, _ := newTestGateway(t, "  token_file: "+tokenFile+"\n")
	ctx := context.Background()
	if err := c.Do(ctx, "GET", "/v1/certs", nil, nil); err != nil {
		t.Errorf("with the right token: %v", err)
	}
	// The same server without the token, and with a wrong one.
	for _, tok := range []string{"", "wrong"} {
		bad := admin.NewClient(strings.TrimPrefix(c.Base(), "http://"), tok)
		var he *admin.HTTPError
		if err := bad.Do(ctx, "GET", "/v1/certs", nil, nil); !errors.As(err, &he) || he.Status != http.StatusUnauthorized {
			t.Errorf("token %q: got %v, want a 401", tok, err)
		}
		if err := bad.Do(ctx, "GET", "/healthz", nil, nil); err != nil {
			t.Errorf("token %q: /healthz should stay open: %v", tok, err)
		}
	}
	// Profiles are behind the token too.
	for _, tok := range []string{"", "s3cret-s3cret-s3cret"} {
		req, _ := http.NewRequest("GET", c.Base()+"/debug/pprof/heap?debug=1", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := map[string]int{"": http.StatusUnauthorized, "s3cret-s3cret-s3cret": http.StatusOK}[tok]; resp.StatusCode != want || tok != "" && !strings.Contains(string(body), "heap profile") {
			t.Errorf("heap profile with token %q: %s, want %d and a profile", tok, resp.Status, want)
		}
	}
}

// TestEveryRouteNeedsToken: with no token configured the gateway makes
// one (data_dir/admin.token, 0600), and every route but /healthz refuses
// a request without it or with a wrong one, on loopback too: a local user
// who cannot read the file has no rights.
func TestEveryRouteNeedsToken(t *testing.T) {
	t.Parallel()
	g, c, dir := newTestGateway(t, "")
	file := filepath.Join(dir, "data", config.AdminTokenFileName)
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatalf("no generated admin token: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", file, fi.Mode().Perm())
	}
	token, _ := tlsconf.ReadSecretFile(file)
	if len(token) < 40 {
		t.Errorf("generated token %q is shorter than 40 characters", token)
	}
	routes := g.admin.Routes()
	if len(routes) < 20 {
		t.Fatalf("only %d routes registered: %v", len(routes), routes)
	}
	for _, route := range routes {
		method, path, _ := strings.Cut(route, " ")
		path = strings.NewReplacer("{id}", "pc-1", "{fingerprint}", strings.Repeat("ab", 32)).Replace(path)
		if strings.HasSuffix(path, "/profile") || strings.HasSuffix(path, "/trace") {
			path += "?seconds=1"
		}
		for _, auth := range []string{"", "Bearer ", "Bearer wrong", "Bearer " + token + "x", "Basic " + token, token} {
			req, _ := http.NewRequest(method, c.Base()+path, strings.NewReader("{}"))
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			open := admin.Open(strings.Split(path, "?")[0])
			if open && resp.StatusCode == http.StatusUnauthorized || !open && resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s with Authorization %q: %s", method, path, auth, resp.Status)
			}
			if !open && resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s: 401 without WWW-Authenticate", method, path)
			}
		}
		req, _ := http.NewRequest(method, c.Base()+path, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized {
			t.Errorf("%s %s with the generated token: %s", method, path, resp.Status)
		}
	}
	// Unknown paths too: authentication comes before routing.
	req, _ := http.NewRequest("GET", c.Base()+"/v1/no-such-route", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unknown path without a token: %v %v", resp.Status, err)
	}
}

// TestGeneratedTokenKeptAndGuarded: a second start reads the same token;
// a generated token file others may read is refused, naming the fix.
func TestGeneratedTokenKeptAndGuarded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Node.DataDir = filepath.Join(dir, "data")
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Push.Listen, cfg.Wake.Listen, cfg.Wake.ShutdownListen = "off", "off", "off"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	quiet := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	g, err := New(cfg, Listeners{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	file, _ := cfg.AdminTokenFile()
	before, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if g, err = New(cfg, Listeners{}, quiet); err != nil {
		t.Fatal(err)
	}
	g.Close()
	if after, _ := os.ReadFile(file); string(after) != string(before) {
		t.Errorf("second start: token file changed from %q to %q", before, after)
	}
	os.Chmod(file, 0o644)
	if _, err := New(cfg, Listeners{}, quiet); err == nil || !strings.Contains(err.Error(), "chmod 600 "+file) {
		t.Errorf("New with a token file of mode 0644: %v, want an error naming chmod 600", err)
	}
}

func first[T, U any](v T, _ U) T { return v }

// metricsOf is the gateway's /metrics page.
func metricsOf(t testing.TB, c *admin.Client) string {
	t.Helper()
	body, err := c.Raw(context.Background(), "GET", "/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	g, c, _ := newTestGateway(t, "")
	g.Reload()
	body := metricsOf(t, c)
	for _, want := range []string{`dpgate_config_reloads_total{result="ok"} 1`, "dpgate_config_last_reload_successful 1", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestReloadSwapsCertificate: after a certificate change and a reload, a
// new handshake gets the new certificate while a connection made before
// the reload keeps working.
func TestReloadSwapsCertificate(t *testing.T) {
	t.Parallel()
	g, c, dir := newTestGateway(t, "")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconf.ServerConfig(g.Identity(), nil))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, ln, testutil.Echo)
	dial := func() *tls.Conn {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	old := dial()
	defer old.Close()
	oldPin := tlsconf.Pin(old.ConnectionState().PeerCertificates[0])

	next, _ := tlsconf.Issue(tlsconf.Template{CommonName: "gw-test"}, nil)
	tlsconf.WriteKeyPair(next, filepath.Join(dir, "data", CertFile), "")
	if err := c.Do(context.Background(), "POST", "/v1/reload", nil, nil); err != nil {
		t.Fatal(err)
	}
	fresh := dial()
	defer fresh.Close()
	if got := tlsconf.Pin(fresh.ConnectionState().PeerCertificates[0]); got != tlsconf.Pin(next.Leaf) || got == oldPin {
		t.Errorf("after reload the server presents %s, want the new %s", got, tlsconf.Pin(next.Leaf))
	}
	// The connection from before the reload still works.
	old.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := old.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(old, buf); err != nil || string(buf) != "ping" {
		t.Errorf("old connection after reload: read %q, %v; want ping", buf, err)
	}
}

func TestNewRefusesBadCertificate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("garbage"), 0o600)
	cfg := config.Default()
	cfg.Node.DataDir = filepath.Join(dir, "data")
	cfg.TLS.Cert = bad
	_, err := New(cfg, Listeners{}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "tls.cert") {
		t.Errorf("New with a garbage certificate: got %v, want an error naming tls.cert", err)
	}
}

// TestNewUnwindsOnError: a part that fails to build (here the push
// server, built after the store, the admin API and the cluster) leaves
// nothing open: every socket New was given is closed and the store is
// free for the next attempt.
func TestNewUnwindsOnError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Node.DataDir = filepath.Join(dir, "data")
	cfg.Admin.Listen, cfg.Cluster.Bind, cfg.Push.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Wake.Listen, cfg.Wake.ShutdownListen = "off", "off"
	cfg.Push.Auth, cfg.Push.TokenKeyFile = push.AuthToken, filepath.Join(dir, "push-token.key") // not there yet
	cfg.Cluster.SecretKeyFile = filepath.Join(dir, "gossip.key")
	os.WriteFile(cfg.Cluster.SecretKeyFile, []byte(testGossipKey+"\n"), 0o600)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	quiet := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ls, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, ls, quiet); err == nil || !strings.Contains(err.Error(), "push.token_key_file") {
		t.Fatalf("New without the token key file: %v, want an error naming push.token_key_file", err)
	}
	for name, ln := range map[string]net.Listener{"admin": ls.Admin, "push": ls.Push, "cluster": ls.ClusterTCP} {
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s listener after the failed New: Accept gave %v, want it closed", name, err)
		}
	}
	for name, pc := range map[string]net.PacketConn{"push (QUIC)": ls.PushUDP, "cluster (UDP)": ls.ClusterUDP} {
		if _, _, err := pc.ReadFrom(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s socket after the failed New: ReadFrom gave %v, want it closed", name, err)
		}
	}
	os.WriteFile(cfg.Push.TokenKeyFile, []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"), 0o600)
	if ls, err = Listen(cfg); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { // the store's lock would keep this waiting
		g, err := New(cfg, ls, quiet)
		if err == nil {
			g.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("New after the key file exists: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("New did not return in 60 s: the failed New left the store open")
	}
}

// TestLiveAndReady: /livez answers while the process serves; /readyz says
// why the node should get no traffic (every upstream ejected, draining),
// both without a token; /healthz keeps its old meaning.
func TestLiveAndReady(t *testing.T) {
	t.Parallel()
	g, _, _ := newTestGateway(t, "proxy:\n  listen: 127.0.0.1:0\n  health_interval: 20ms\n  upstreams:\n    - address: 127.0.0.1:1\n")
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + g.adminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The only upstream does not answer: ejected after a few checks.
	waitFor(t, 30*time.Second, func() error {
		if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no healthy upstream") {
			return fmt.Errorf("/readyz %d %s, want 503 naming the upstreams", code, body)
		}
		return nil
	})
	if code, _ := get("/livez"); code != http.StatusOK {
		t.Errorf("/livez with every upstream ejected: %d, want 200 (the process is fine)", code)
	}
	if code, _ := get("/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz: %d, want 503 as before", code)
	}
	g.draining.Store(true)
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("/readyz while draining: %d %s", code, body)
	}
}

// TestReadyWhenServing: a node that serves every part it runs is ready.
func TestReadyWhenServing(t *testing.T) {
	t.Parallel()
	g, _, _ := newTestGateway(t, "")
	resp, err := http.Get("http://" + g.adminAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz: %d %s, want 200", resp.StatusCode, b)
	}
}

// TestCertificateRenewal: the generated certificate, 10 days from its
// expiry, is renewed at start with the same key (the pin agents hold stays
// valid) and the expiry gauge shows the new date; an expired configured
// certificate's error says what to do.
func TestCertificateRenewal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o700)
	old, _ := tlsconf.Issue(tlsconf.Template{CommonName: "old", Days: 10}, nil)
	tlsconf.WriteKeyPair(old, filepath.Join(data, CertFile), "")
	cfg := config.Default()
	cfg.Node.DataDir = data
	cfg.Admin.Listen, cfg.Push.Listen, cfg.Wake.Listen, cfg.Wake.ShutdownListen = "127.0.0.1:0", "off", "off", "off"
	g, api := startTestGateway(t, cfg)
	defer g.Close()
	leaf := g.Identity().Certificate().Leaf
	if g.Identity().Pin() != tlsconf.Pin(old.Leaf) || time.Until(leaf.NotAfter) < 800*24*time.Hour {
		t.Errorf("after start: pin kept %v, not after %s; want the same pin, about 825 days", g.Identity().Pin() == tlsconf.Pin(old.Leaf), leaf.NotAfter)
	}
	if m := metricsOf(t, api); !strings.Contains(m, "dpgate_tls_cert_not_after_timestamp_seconds "+strconv.FormatFloat(float64(leaf.NotAfter.Unix()), 'g', -1, 64)) {
		t.Errorf("the expiry gauge does not show %d", leaf.NotAfter.Unix())
	}

	// A configured certificate is the operator's: expired, it is refused
	// with the fix named.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gw"}, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	expired := filepath.Join(dir, "expired.pem")
	os.WriteFile(expired, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})...), 0o600)
	cfg2 := config.Default()
	cfg2.Node.DataDir = filepath.Join(dir, "data2")
	cfg2.TLS.Cert = expired
	_, err := New(cfg2, Listeners{}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "expired") || !strings.Contains(err.Error(), "install a renewed certificate") {
		t.Errorf("an expired tls.cert: %v, want the error to name the fix", err)
	}
}

// TestReloadAppliesConfig: a reload re-reads the file and applies the
// upstreams (added, removed), the validation switch, the limits and the
// log level live, names what needs a restart, and changes nothing when
// the new file is wrong.
func TestReloadAppliesConfig(t *testing.T) {
	t.Parallel()
	g, api, _ := newTestGateway(t, "proxy:\n  listen: 127.0.0.1:0\n  health_interval: 1h\n  upstreams:\n    - address: 127.0.0.1:1\n")
	var level slog.LevelVar
	g.logLevel = &level
	file := g.cfg.File()
	body, _ := os.ReadFile(file)
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	addrs := func() []string {
		var out []string
		for _, u := range g.proxy.Status().Upstreams {
			out = append(out, u.Address)
		}
		return out
	}
	next := strings.Replace(string(body), "    - address: 127.0.0.1:1\n", "    - address: 127.0.0.1:2\n    - address: 127.0.0.1:3\n  validate_agent_certs: true\n  max_connections: 5\n", 1)
	next = strings.Replace(next, "node:\n", "log:\n  level: debug\nnode:\n", 1)
	next = strings.Replace(next, "push:\n  listen: 127.0.0.1:0\n", "push:\n  listen: 127.0.0.1:0\n  max_connections: 7\n  keepalive: 45s\n", 1)
	write(next)
	res, err := g.reload()
	if err != nil {
		t.Fatal(err)
	}
	if got := addrs(); !slices.Equal(got, []string{"127.0.0.1:2", "127.0.0.1:3"}) {
		t.Errorf("upstreams after the reload: %v", got)
	}
	// The removed upstream's series go with it; the new ones are there.
	m := metricsOf(t, api)
	if strings.Contains(m, `upstream="127.0.0.1:1"`) || !strings.Contains(m, `dpgate_proxy_upstream_healthy{upstream="127.0.0.1:3"} 1`) {
		t.Errorf("after the reload /metrics has %q", testutil.GrepLines(m, "upstream="))
	}
	if !g.validatesAgentCerts() || level.Level() != slog.LevelDebug {
		t.Errorf("validation %v, log level %v; want on and debug", g.validatesAgentCerts(), level.Level())
	}
	for _, k := range []string{"proxy.upstreams", "proxy.validate_agent_certs", "proxy.max_connections", "push.max_connections", "log.level"} {
		if !slices.Contains(res.Applied, k) {
			t.Errorf("applied %v, want %s in it", res.Applied, k)
		}
	}
	if !slices.Equal(res.RestartNeeded, []string{"push.keepalive"}) {
		t.Errorf("restart needed for %v, want exactly push.keepalive", res.RestartNeeded)
	}
	// A wrong file changes nothing.
	write(strings.Replace(next, "127.0.0.1:2", "not an address", 1))
	if _, err := g.reload(); err == nil {
		t.Fatal("a reload of a wrong file succeeded")
	}
	if got := addrs(); !slices.Equal(got, []string{"127.0.0.1:2", "127.0.0.1:3"}) {
		t.Errorf("upstreams after a failed reload: %v", got)
	}
	m = metricsOf(t, api)
	for _, want := range []string{`dpgate_config_reloads_total{result="failed"} 1`, `dpgate_config_reloads_total{result="ok"} 1`, "dpgate_config_last_reload_successful 0"} {
		if !strings.Contains(m, want) {
			t.Errorf("after a failed reload /metrics lacks %s", want)
		}
	}
}

// TestNothingMissingOnLinux: on Linux, the platform every figure and
// feature is built for, no capability is reported missing at start.
func TestNothingMissingOnLinux(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skipf("PlatformLimits on %s: %v", runtime.GOOS, PlatformLimits())
	}
	if l := PlatformLimits(); len(l) != 0 {
		t.Errorf("on Linux, PlatformLimits says %v, want nothing", l)
	}
}

// TestDamagedQUICResetKeyReplaced: the QUIC stateless-reset key is the
// gateway's own, and what the old one made (resets for the sessions of a
// process that is gone) is worth nothing after a restart. A damaged one
// (empty after a crash, garbage) is set aside with a warning and a new
// one made; it no longer stops the gateway, proxy and push with it.
func TestDamagedQUICResetKeyReplaced(t *testing.T) {
	t.Parallel()
	for name, content := range map[string]string{"empty": "", "garbage": "\x90\xfcsq not base64\n", "short": "c2hvcnQ=\n"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := bareConfig(t, t.TempDir(), "127.0.0.1:0", "")
			file := filepath.Join(cfg.Node.DataDir, QUICResetKeyFile)
			os.WriteFile(file, []byte(content), 0o600)
			var log testutil.Buffer
			g, _ := startTestGatewayWith(t, cfg, Options{Logger: log.Logger(slog.LevelInfo)})
			defer g.Close()
			if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), QUICResetKeyFile) {
				t.Errorf("no warning naming the damaged key; log:\n%s", log.String())
			}
			aside, _ := filepath.Glob(file + ".damaged-*")
			if len(aside) != 1 {
				t.Fatalf("damaged key set aside as %v, want one file", aside)
			}
			if b, _ := os.ReadFile(aside[0]); string(b) != content {
				t.Errorf("set aside %q, want the damaged content %q", b, content)
			}
			if _, err := tlsconf.LoadOrCreateKey(file, 32, 32); err != nil {
				t.Errorf("the new key: %v", err)
			}
		})
	}
}

// TestShortAdminTokenRefused: any local user may connect to the admin API
// on loopback and try tokens, some 17,000 a second here; a token of a few
// characters falls in hours. One shorter than admin.MinTokenLen is
// refused at start, configured or generated (then damaged).
func TestShortAdminTokenRefused(t *testing.T) {
	t.Parallel()
	for name, content := range map[string]string{"configured": "s3cret\n", "generated": "x\n"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			file := filepath.Join(dir, "data", "admin.token")
			if name == "configured" {
				file = filepath.Join(dir, "admin.token")
			}
			cfg := bareConfig(t, dir, "off", map[bool]string{true: file}[name == "configured"])
			os.WriteFile(file, []byte(content), 0o600)
			_, err := New(cfg, Listeners{}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "at least 16") {
				t.Errorf("New with the admin token %q: %v, want an error naming %s and the length wanted", content, err, file)
			}
			if err := CheckFiles(cfg); name == "configured" && (err == nil || !strings.Contains(err.Error(), "admin.token_file")) {
				t.Errorf("CheckFiles with the admin token %q: %v, want an error naming admin.token_file", content, err)
			}
		})
	}
}

// TestWrongAdminTokensCountedAndLoggedSparingly: wrong tokens on the API
// and the console's sign-in are counted by a metric and warned about
// once in 10 s, not once per attempt (a guessing local user would
// otherwise flood the journal, or go unseen on the API).
func TestWrongAdminTokensCountedAndLoggedSparingly(t *testing.T) {
	t.Parallel()
	var log testutil.Buffer
	_, c, _ := newTestGatewayWith(t, "", Options{Logger: log.Logger(slog.LevelInfo)})
	bad := admin.NewClient(strings.TrimPrefix(c.Base(), "http://"), "a-wrong-token-of-some-length")
	for range 20 {
		if err := bad.Do(context.Background(), "GET", "/v1/status", nil, nil); err == nil {
			t.Fatal("a wrong token was let in")
		}
	}
	for range 5 {
		resp, err := http.PostForm(c.Base()+"/ui/login", url.Values{"token": {"wrong"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	body := metricsOf(t, c)
	for _, want := range []string{`dpgate_admin_auth_failures_total{via="api"} 20`, `dpgate_admin_auth_failures_total{via="console"} 5`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, line := range []string{"admin: requests with a wrong token", "console: sign-in with a wrong token"} {
		if n := strings.Count(log.String(), line); n != 1 {
			t.Errorf("%d log lines %q for the attempts, want one; log:\n%s", n, line, log.String())
		}
	}
}

// TestDamagedGeneratedCertificateSaysWhatToDo: the generated certificate
// damaged (a torn write, a bad disk) is refused, and the error says what
// to do: every agent pins its key, so a new one is not the remedy it is
// for the gateway's other generated files.
func TestDamagedGeneratedCertificateSaysWhatToDo(t *testing.T) {
	t.Parallel()
	cfg := bareConfig(t, t.TempDir(), "off", "")
	os.WriteFile(filepath.Join(cfg.Node.DataDir, CertFile), []byte("-----BEGIN CERTIFICATE-----\nMIIB"), 0o600)
	_, err := New(cfg, Listeners{}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "backup") || !strings.Contains(err.Error(), "pin") {
		t.Errorf("New with a damaged generated certificate: %v, want an error saying to restore it (agents pin its key)", err)
	}
}

// bareConfig is the default configuration with its data directory (made)
// in dir, the admin API and push (an address, or "off") on loopback
// ports of their own, wake off and, if tokenFile is set, that admin
// token file; validated.
func bareConfig(t testing.TB, dir, push, tokenFile string) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Node.DataDir = filepath.Join(dir, "data")
	cfg.Admin.Listen, cfg.Admin.TokenFile, cfg.Push.Listen = "127.0.0.1:0", tokenFile, push
	cfg.Wake.Listen, cfg.Wake.ShutdownListen = "off", "off"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cfg.Node.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return cfg
}
