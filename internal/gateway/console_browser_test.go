package gateway

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// screenshotDir keeps the console test's screenshots (test output: their
// paths are logged; DPGATE_SCREENSHOTS chooses another directory).
func screenshotDir(t *testing.T) string {
	dir := os.Getenv("DPGATE_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "dpgate-console-screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestConsoleInBrowser drives the console in a real headless Chromium
// (Debian's chromium; .ci/run installs it): sign in; filter the
// certificate table; generate an agent certificate and open the
// downloaded PFX with openssl; connect an agent with it and send it a test
// push from the devices page; delete the certificate and see the next
// handshake with it refused; switch agent certificate validation on the
// proxy; see a second node appear in the overview without a reload. The
// browser's console must log no error; screenshots at 1280x800 and at
// phone width are kept.
func TestConsoleInBrowser(t *testing.T) {
	t.Parallel()
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is needed (Debian package chromium; .ci/run installs it)")
	}
	g, _, dir := newTestGateway(t, `push:
  listen: 127.0.0.1:0
  quic: false
proxy:
  listen: 127.0.0.1:0
  upstreams:
    - address: 127.0.0.1:1
cluster:
  bind: 127.0.0.1:0
`)
	shots := screenshotDir(t)
	for _, cn := range []string{"alpha-101", "beta-202", "gamma-303"} {
		c, _ := tlsconf.Issue(tlsconf.Template{CommonName: cn, Client: true}, nil)
		if _, err := g.allow.Add(c.Leaf); err != nil {
			t.Fatal(err)
		}
	}

	downloads := filepath.Join(dir, "downloads")
	os.MkdirAll(downloads, 0o700)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.WindowSize(1280, 800), chromedp.Flag("headless", "new"))...)
	defer cancelAlloc()
	ctx, cancelCtx := chromedp.NewContext(actx)
	defer cancelCtx()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()

	var mu sync.Mutex
	var browserErrors []string
	if err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			browserErrors = append(browserErrors, "exception: "+e.ExceptionDetails.Text)
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				browserErrors = append(browserErrors, "console.error")
			}
		case *log.EventEntryAdded:
			if e.Entry.Level == log.EntryLevelError {
				browserErrors = append(browserErrors, "log: "+e.Entry.Text+" "+e.Entry.URL)
			}
		case *page.EventJavascriptDialogOpening: // the confirmations: accepted
			go chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}); err != nil {
		t.Fatal(err)
	}
	base := "http://" + g.adminAddr
	shot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			buf, err := chromedp.FullScreenshot(100)(ctx, tg) // 100: PNG
			if err != nil {
				return err
			}
			file := filepath.Join(shots, name+".png")
			t.Logf("screenshot %s", file)
			return os.WriteFile(file, buf, 0o644)
		})
	}
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			html, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("main") ? document.querySelector("main").outerHTML : document.documentElement.outerHTML`))
			if len(html) > 3000 {
				html = html[:3000]
			}
			t.Fatalf("%s: %v\nthe page:\n%s", what, err, html)
		}
	}
	visibleRows := func(table string) int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`Array.from(document.querySelectorAll(%q)).filter(r => !r.hidden && !r.classList.contains("empty")).length`, table+" tbody tr")))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	token, err := tlsconf.ReadSecretFile(first(g.cfg.AdminTokenFile()))
	if err != nil {
		t.Fatal(err)
	}
	setup := chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		if _, err := chromedp.Call(ctx, log.Enable, cdp.Empty{}); err != nil {
			return err
		}
		_, err := chromedp.Call(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: downloads, EventsEnabled: ptrTo(true)})
		return err
	})

	// Sign in.
	run("sign-in page", setup, chromedp.Navigate(base+"/"), chromedp.WaitVisible("#token"), shot("login"))
	run("signing in", chromedp.SendKeys("#token", token), chromedp.Submit("#token"), chromedp.WaitVisible("#nodes"))
	run("overview", shot("overview"))
	nodeCell, err := chromedp.Run(ctx, chromedp.Text(`#nodes tbody tr td`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(nodeCell, g.cfg.Node.Name) {
		t.Errorf("overview's cluster table starts with %q, want this node %s", nodeCell, g.cfg.Node.Name)
	}

	// Filter the certificate table.
	run("certificates", chromedp.Navigate(base+"/ui/certificates"), chromedp.WaitVisible("#certs"))
	if n := visibleRows("#certs"); n != 3 {
		t.Errorf("%d certificates listed, want 3", n)
	}
	run("filter", chromedp.SendKeys("#cert-filter", "beta"))
	if n := visibleRows("#certs"); n != 1 {
		t.Errorf("filter 'beta': %d rows shown, want 1", n)
	}
	run("clear filter", chromedp.Evaluate[chromedp.Void](`(f => { f.value = ""; f.dispatchEvent(new Event("input")) })(document.querySelector("#cert-filter"))`), shot("certificates"))

	// Generate an agent certificate: the browser downloads its PFX.
	run("generate", chromedp.SendKeys("#cn", "pc-browser"), chromedp.SendKeys("#password", "s3cret"), chromedp.Submit("#cn"))
	var pfxFile string
	waitFor(t, 30*time.Second, func() error {
		files, _ := filepath.Glob(filepath.Join(downloads, "*"))
		for _, f := range files {
			if !strings.HasSuffix(f, ".crdownload") {
				pfxFile = f
				return nil
			}
		}
		return errors.New("no download finished yet")
	})
	out, err := exec.Command("openssl", "pkcs12", "-in", pfxFile, "-passin", "pass:s3cret", "-nokeys").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CN = pc-browser") {
		t.Fatalf("openssl pkcs12 on the downloaded PFX: %v\n%s", err, out)
	}
	pfx, _ := os.ReadFile(pfxFile)
	agentCert, err := tlsconf.ParsePFX(pfx, "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	agentLeaf, err := x509.ParseCertificate(agentCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}

	// An agent with it connects; a test push from the devices page arrives.
	pins, _ := tlsconf.ParsePins([]string{g.Identity().Pin()})
	agentTLS := tlsconf.PinnedClientConfig(pins, "gw")
	agentTLS.Certificates = []tls.Certificate{agentCert}
	got := make(chan string, 4)
	c, err := client.New(client.Config{Servers: []string{g.pushAddr}, DeviceID: "pc-browser", TLS: agentTLS,
		OnPush: func(m wire.Message) { got <- string(m.Payload) }, Logger: testutil.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan struct{})
	go func() { defer close(agentDone); c.Run(agentCtx) }()
	defer func() { stopAgent(); <-agentDone }()
	waitFor(t, 30*time.Second, func() error {
		if !g.push.Holds("pc-browser") {
			return errors.New("pc-browser not connected yet")
		}
		return nil
	})
	run("devices", chromedp.Navigate(base+"/ui/devices?q=pc-browser"), chromedp.WaitVisible(`tr[data-device="pc-browser"]`), shot("devices"),
		chromedp.Click(`tr[data-device="pc-browser"] button[data-action="push"]`), chromedp.WaitVisible(".flash"))
	select {
	case p := <-got:
		if !strings.HasPrefix(p, "dpgate console test push") {
			t.Errorf("the agent got %q, want the console's test push", p)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the test push did not arrive in 30 s")
	}
	// A push for an offline device shows in the overview's queue depth,
	// without a reload.
	if _, err := g.accept(context.Background(), []string{"pc-offline"}, []byte("later"), time.Hour); err != nil {
		t.Fatal(err)
	}
	run("overview queue", chromedp.Navigate(base+"/"), chromedp.WaitVisible("#queue-depth"))
	waitFor(t, 30*time.Second, func() error {
		depth, err := chromedp.Run(ctx, chromedp.Text("#queue-depth"))
		if err != nil || depth != "1" {
			return fmt.Errorf("queue depth %q (%v), want 1", depth, err)
		}
		return nil
	})

	// Disconnect it: its session ends, and it comes back on its own.
	first, _ := g.push.Device("pc-browser")
	run("disconnect", chromedp.Navigate(base+"/ui/devices?q=pc-browser"), chromedp.WaitVisible(`tr[data-device="pc-browser"]`),
		chromedp.Click(`tr[data-device="pc-browser"] button[data-action="disconnect"]`), chromedp.WaitVisible(".flash"))
	waitFor(t, 30*time.Second, func() error {
		d, _ := g.push.Device("pc-browser")
		if !d.Connected || d.Since == nil || first.Since == nil || !d.Since.After(*first.Since) {
			return errors.New("pc-browser has not reconnected after the disconnect")
		}
		return nil
	})

	// Delete its certificate: the next handshake with it is refused.
	fp := tlsconf.Fingerprint(agentLeaf)
	run("delete", chromedp.Navigate(base+"/ui/certificates"), chromedp.WaitVisible("#certs"),
		chromedp.Click(fmt.Sprintf(`tr[data-fingerprint=%q] input[type=checkbox]`, fp)), chromedp.Click("#delete-selected"), chromedp.WaitVisible(".flash"))
	if g.allow.Check(agentLeaf) == nil {
		t.Fatal("the deleted certificate is still allowed")
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", g.pushAddr, agentTLS)
	if err == nil {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1)) // TLS 1.3: the refusal arrives as an alert on the first read
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a handshake with the deleted certificate: %v, want it refused", err)
	}

	// Validation of agent certificates on the proxy, switched live.
	proxyHandshake := func() error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", g.proxyAddr, tlsconf.PinnedClientConfig(pins, "gw"))
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		if err != nil && strings.Contains(err.Error(), "certificate") {
			return err
		}
		return nil // accepted (then closed: the upstream is not there)
	}
	if err := proxyHandshake(); err != nil {
		t.Fatalf("proxy handshake without a client certificate, validation off: %v", err)
	}
	// Each from a fresh page, so the flash awaited is the switch's own.
	run("validate on", chromedp.Navigate(base+"/ui/certificates"), chromedp.WaitVisible("#validate-toggle"),
		chromedp.Click("#validate-toggle"), chromedp.WaitVisible(".flash"), shot("certificates-validating"))
	if err := proxyHandshake(); err == nil {
		t.Error("validation switched on: a proxy handshake without a client certificate was accepted")
	}
	run("validate off", chromedp.Navigate(base+"/ui/certificates"), chromedp.WaitVisible("#validate-toggle"),
		chromedp.Click("#validate-toggle"), chromedp.WaitVisible(".flash"))
	if err := proxyHandshake(); err != nil {
		t.Errorf("validation switched off again: %v", err)
	}

	// A second node joins: the overview shows it without a reload.
	run("overview again", chromedp.Navigate(base+"/"), chromedp.WaitVisible("#nodes"))
	host := "127.0.0.2"
	g2, _, _ := newTestGateway(t, fmt.Sprintf("push:\n  listen: %s:0\n  auth: none\ncluster:\n  bind: %s:0\n  join: [%s]\n", host, host, g.clusterAddr))
	waitFor(t, 60*time.Second, func() error {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#nodes tbody tr").length`))
		if err != nil {
			return err
		}
		if n != 2 {
			return fmt.Errorf("the overview shows %d nodes, want 2 (%s joining)", n, g2.cfg.Node.Name)
		}
		return nil
	})
	run("phone width", shot("overview-2-nodes"), chromedp.EmulateViewport(390, 844), shot("overview-phone"))
	// At phone width no page is wider than the screen (wide tables scroll
	// inside their own box).
	for _, p := range []struct{ path, ready string }{{"/", "#nodes"}, {"/ui/certificates", "#certs"}, {"/ui/devices", "#devices"}, {"/ui/uplinks", "#uplinks"}} {
		name := strings.Trim(strings.ReplaceAll(p.path, "/ui/", ""), "/")
		run("phone "+p.path, chromedp.Navigate(base+p.path), chromedp.WaitVisible(p.ready), shot(cmp.Or(name, "overview")+"-phone"))
		overflow, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth - window.innerWidth`))
		if err != nil || overflow > 0 {
			t.Errorf("%s at 390 px: %d px wider than the screen (%v)", p.path, overflow, err)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	if len(browserErrors) > 0 {
		t.Errorf("the browser logged errors: %q", browserErrors)
	}
}

func ptrTo[T any](v T) *T { return &v }
