package gateway

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"html"
	"io"
	"math/big"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/tlsconf"
)

// consolePages are the console's GET routes that show data.
var consolePages = []string{"/", "/?fragment=live", "/ui/certificates", "/ui/certificates?fragment=live", "/ui/certificates/gateway.pem",
	"/ui/devices", "/ui/devices?fragment=live", "/ui/uplinks", "/ui/uplinks?fragment=live", "/ui/nothing-here"}

// consoleActions are its state-changing routes.
var consoleActions = []string{"/ui/logout", "/ui/certificates/gateway/generate", "/ui/certificates/gateway/upload", "/ui/certificates/delete", "/ui/certificates/agent", "/ui/certificates/upload",
	"/ui/certificates/validate", "/ui/devices/push", "/ui/devices/wake", "/ui/devices/disconnect", "/ui/devices/delete"}

// TestConsoleNeedsSession: without a session every console route answers
// the sign-in page (401), never data; a wrong token does not sign in; a
// signed-in POST without the CSRF token is refused (403).
func TestConsoleNeedsSession(t *testing.T) {
	t.Parallel()
	g, _, _ := newTestGateway(t, "")
	base := "http://" + g.adminAddr
	pin := g.Identity().Pin()
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	anon := &http.Client{CheckRedirect: noRedirect}
	get := func(c *http.Client, method, path string, form url.Values) (int, string) {
		t.Helper()
		var resp *http.Response
		var err error
		if method == "GET" {
			resp, err = c.Get(base + path)
		} else {
			resp, err = c.PostForm(base+path, form)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, html.UnescapeString(string(b))
	}
	for _, p := range consolePages {
		code, body := get(anon, "GET", p, nil)
		if code != http.StatusSeeOther || strings.Contains(body, pin) || strings.Contains(body, "BEGIN CERTIFICATE") {
			t.Errorf("GET %s without a session: %d, want a redirect to the sign-in page (303) and no data", p, code)
		}
	}
	for _, p := range consoleActions {
		if code, _ := get(anon, "POST", p, url.Values{"cn": {"pc-x"}}); code != http.StatusSeeOther {
			t.Errorf("POST %s without a session: %d, want a redirect to the sign-in page (303)", p, code)
		}
	}
	if code, body := get(anon, "GET", "/ui/login", nil); code != http.StatusOK || !strings.Contains(body, "Admin token") {
		t.Errorf("the sign-in page: %d", code)
	}
	if code, body := get(anon, "POST", "/ui/login", url.Values{"token": {"wrong"}}); code != http.StatusUnauthorized || !strings.Contains(body, "not the admin token") {
		t.Errorf("sign-in with a wrong token: %d", code)
	}
	if n := g.allow.Len(); n != 0 {
		t.Fatalf("%d certificates allowed after unauthenticated POSTs", n)
	}

	jar, _ := cookiejar.New(nil)
	user := &http.Client{Jar: jar, CheckRedirect: noRedirect}
	token, err := tlsconf.ReadSecretFile(first(g.cfg.AdminTokenFile()))
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := get(user, "POST", "/ui/login", url.Values{"token": {token}}); code != http.StatusSeeOther {
		t.Fatalf("sign-in: %d, want 303", code)
	}
	code, body := get(user, "GET", "/ui/certificates", nil)
	if code != http.StatusOK || !strings.Contains(body, pin) {
		t.Fatalf("certificates page signed in: %d", code)
	}
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if csrf == nil {
		t.Fatal("no CSRF token on the page")
	}
	for _, p := range consoleActions {
		if code, _ := get(user, "POST", p, url.Values{"cn": {"pc-x"}, "csrf": {"not-it"}}); code != http.StatusForbidden {
			t.Errorf("POST %s with a wrong CSRF token: %d, want 403", p, code)
		}
	}
	if code, _ := get(user, "POST", "/ui/certificates/agent", url.Values{"cn": {"pc-x"}, "csrf": {csrf[1]}}); code != http.StatusOK || g.allow.Len() != 1 {
		t.Errorf("generating an agent certificate with the CSRF token: %d, %d allowed", code, g.allow.Len())
	}
	if code, _ := get(user, "POST", "/ui/logout", url.Values{"csrf": {csrf[1]}}); code != http.StatusSeeOther {
		t.Errorf("sign-out: %d", code)
	}
	if code, _ := get(user, "GET", "/ui/certificates", nil); code != http.StatusSeeOther {
		t.Errorf("after sign-out: %d, want a redirect to the sign-in page", code)
	}
}

// consoleGet is the page at path of g's console, read by the client c
// (signed in).
func consoleGet(t *testing.T, c *http.Client, g *Gateway, path string) []byte {
	t.Helper()
	resp, err := c.Get("http://" + g.adminAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

// signIn returns a client signed in to g's console and the CSRF token.
func signIn(t *testing.T, g *Gateway) (*http.Client, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	token, err := tlsconf.ReadSecretFile(first(g.cfg.AdminTokenFile()))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.PostForm("http://"+g.adminAddr+"/ui/login", url.Values{"token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("signed in, but the page has no CSRF token (%d)", resp.StatusCode)
	}
	return c, string(m[1])
}

// TestConsoleReplacesGatewayCertificate: a generated certificate is in use
// at once and on disk for the next start; an upload with a key under
// 2048 bits or an expired certificate is refused, the old one kept.
func TestConsoleReplacesGatewayCertificate(t *testing.T) {
	t.Parallel()
	g, _, dir := newTestGateway(t, "")
	c, csrf := signIn(t, g)
	base := "http://" + g.adminAddr
	before := g.Identity().Pin()
	resp, err := c.PostForm(base+"/ui/certificates/gateway/generate", url.Values{"csrf": {csrf}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	after := g.Identity().Pin()
	if after == before || !strings.Contains(html.UnescapeString(string(body)), "must be given the new certificate") {
		t.Fatalf("generate: pin %s -> %s; the page says re-pin: %v", before, after, strings.Contains(string(body), "re-pin"))
	}
	onDisk, err := tlsconf.LoadKeyPair(filepath.Join(dir, "data", CertFile), "")
	if err != nil || tlsconf.Pin(onDisk.Leaf) != after {
		t.Errorf("the certificate file after generating: %v, pin %s, want %s", err, tlsconf.Pin(onDisk.Leaf), after)
	}

	upload := func(certPEM, keyPEM []byte) string {
		t.Helper()
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		mw.WriteField("csrf", csrf)
		fw, _ := mw.CreateFormFile("cert", "gw.pem")
		fw.Write(certPEM)
		fw, _ = mw.CreateFormFile("key", "gw.key")
		fw.Write(keyPEM)
		mw.Close()
		resp, err := c.Post(base+"/ui/certificates/gateway/upload", mw.FormDataContentType(), &buf)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return html.UnescapeString(string(b))
	}
	selfSigned := func(key crypto.Signer, notAfter time.Time) ([]byte, []byte) {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "gw"}, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: notAfter}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	}
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	if page := upload(selfSigned(weak, time.Now().Add(time.Hour))); !strings.Contains(page, "at least 2048") || g.Identity().Pin() != after {
		t.Errorf("an RSA-1024 upload: pin %s (want %s kept); page mentions 2048: %v", g.Identity().Pin(), after, strings.Contains(page, "2048"))
	}
	good, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if page := upload(selfSigned(good, time.Now().Add(-time.Hour))); !strings.Contains(page, "expired") || g.Identity().Pin() != after {
		t.Errorf("an expired upload: pin %s (want %s kept); page mentions expired: %v", g.Identity().Pin(), after, strings.Contains(page, "expired"))
	}
	certPEM, keyPEM := selfSigned(good, time.Now().Add(24*time.Hour))
	upload(certPEM, keyPEM)
	want, _ := tlsconf.ParseKeyPair(certPEM, keyPEM)
	if g.Identity().Pin() != tlsconf.Pin(want.Leaf) {
		t.Errorf("a good upload: pin %s, want %s", g.Identity().Pin(), tlsconf.Pin(want.Leaf))
	}
}

// TestAdminTLSOffLoopback: an admin listener off loopback serves the API
// and the console over TLS with the gateway's certificate (plain HTTP gets
// nothing), and the console's cookie is Secure.
func TestAdminTLSOffLoopback(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin.token")
	os.WriteFile(tokenFile, []byte("a-token-for-the-tls-test-0123456789"), 0o600)
	cf := filepath.Join(dir, "dpgate.yaml")
	os.WriteFile(cf, []byte(fmt.Sprintf("node:\n  name: tls-admin\n  data_dir: data\nadmin:\n  listen: 0.0.0.0:0\n  token_file: %s\npush:\n  listen: \"off\"\n", tokenFile)), 0o644)
	cfg, err := config.Load(cf)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := startTestGateway(t, cfg)
	t.Cleanup(func() { g.Close() })
	_, port, _ := net.SplitHostPort(g.adminAddr)
	addr := net.JoinHostPort("127.0.0.1", port) // the wildcard listener, reached on loopback

	plain := &http.Client{Timeout: 10 * time.Second}
	if resp, err := plain.Get("http://" + addr + "/healthz"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// Go's TLS server answers plain HTTP with 400 "Client sent an
		// HTTP request to an HTTPS server", and nothing else.
		if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(b), "status") {
			t.Errorf("plain HTTP to the off-loopback admin listener: %d %q, want no API answer", resp.StatusCode, b)
		}
	}
	pins, _ := tlsconf.ParsePins([]string{g.Identity().Pin()})
	jar, _ := cookiejar.New(nil)
	pinned := &http.Client{Timeout: 10 * time.Second, Jar: jar, Transport: &http.Transport{TLSClientConfig: tlsconf.PinnedClientConfig(pins, "gw")},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := pinned.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HTTPS /healthz: %d", resp.StatusCode)
	}
	resp, err = pinned.PostForm("https://"+addr+"/ui/login", url.Values{"token": {"a-token-for-the-tls-test-0123456789"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cs := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(cs) == 0 || !cs[0].Secure || !cs[0].HttpOnly {
		t.Errorf("console sign-in over TLS: %d, cookies %+v, want a Secure HttpOnly session cookie", resp.StatusCode, cs)
	}
}

// TestConsoleUploadsAgentCertificates: a PEM certificate and a PKCS#12
// container (with its password) are both taken into the allow-list; a
// PFX with the wrong password is refused.
func TestConsoleUploadsAgentCertificates(t *testing.T) {
	t.Parallel()
	g, _, _ := newTestGateway(t, "")
	c, csrf := signIn(t, g)
	upload := func(name string, data []byte, password string) string {
		t.Helper()
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		mw.WriteField("csrf", csrf)
		mw.WriteField("password", password)
		fw, _ := mw.CreateFormFile("file", name)
		fw.Write(data)
		mw.Close()
		resp, err := c.Post("http://"+g.adminAddr+"/ui/certificates/upload", mw.FormDataContentType(), &buf)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return html.UnescapeString(string(b))
	}
	pemCert, _ := tlsconf.Issue(tlsconf.Template{CommonName: "pem-agent", Client: true}, nil)
	upload("agent.pem", tlsconf.CertPEM(pemCert), "")
	pfxCert, _ := tlsconf.Issue(tlsconf.Template{CommonName: "pfx-agent", Client: true}, nil)
	pfx, err := tlsconf.EncodePFX(pfxCert, nil, "pw")
	if err != nil {
		t.Fatal(err)
	}
	if page := upload("agent.pfx", pfx, "wrong"); !strings.Contains(page, "neither a PEM certificate nor a PKCS#12") || g.allow.Len() != 1 {
		t.Errorf("a PFX with the wrong password: %d allowed, page says why: %v", g.allow.Len(), strings.Contains(page, "PKCS#12"))
	}
	upload("agent.pfx", pfx, "pw")
	if g.allow.Check(pemCert.Leaf) != nil || g.allow.Check(pfxCert.Leaf) != nil || g.allow.Len() != 2 {
		t.Errorf("after uploading a PEM and a PFX: %d allowed, want both", g.allow.Len())
	}
}

// TestValidationSwitchReplicated: switching agent certificate validation
// in one node's console switches it on every node of the cluster.
func TestValidationSwitchReplicated(t *testing.T) {
	t.Parallel()
	gs, _ := testClusterWith(t, 2, "proxy:\n  listen: 127.0.0.1:0\n  upstreams:\n    - address: 127.0.0.1:1\n", Options{})
	c, csrf := signIn(t, gs[0])
	for _, on := range []bool{true, false} {
		resp, err := c.PostForm("http://"+gs[0].adminAddr+"/ui/certificates/validate", url.Values{"csrf": {csrf}, "on": {fmt.Sprint(on)}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		waitFor(t, 30*time.Second, func() error {
			for _, g := range gs {
				if g.validatesAgentCerts() != on {
					return fmt.Errorf("%s validates agent certificates: %v, want %v", g.cfg.Node.Name, !on, on)
				}
			}
			return nil
		})
	}
}

// TestConsoleListsQueuedDevices: a device that never connected but has a
// push waiting is on the devices page, seen never, so an operator finds
// what waits for it (or a mistyped id) and can delete it.
func TestConsoleListsQueuedDevices(t *testing.T) {
	t.Parallel()
	g, api, _ := newTestGateway(t, "")
	data := "job"
	if err := api.Do(context.Background(), "POST", "/v1/devices/pc-never/push", PushRequest{Data: &data}, nil); err != nil {
		t.Fatal(err)
	}
	c, _ := signIn(t, g)
	b := consoleGet(t, c, g, "/ui/devices?fragment=live")
	row := regexp.MustCompile(`(?s)<tr data-device="pc-never">.*?</tr>`).Find(b)
	if row == nil {
		t.Fatalf("devices page without pc-never, which has a push queued:\n%s", b)
	}
	if !bytes.Contains(row, []byte("<td>never</td>")) || !bytes.Contains(row, []byte("<td>1</td>")) {
		t.Errorf("pc-never's row: want last seen never and 1 queued:\n%s", row)
	}
}
