package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/loadtest"
)

// TestConnectAgainstGateway runs the built dpload connect, sharded over
// two worker processes, against an in-process gateway and checks the
// accounting: every agent connected and held, the gateway's session count
// equal to it, and its RSS per connection read from the admin API.
func TestConnectAgainstGateway(t *testing.T) {
	t.Parallel()
	bin := buildDpload(t)
	g, ls, tokenFile := startGateway(t)

	const agents = 300
	// Its pin, then another's, as for a cluster whose nodes have their
	// own certificates (before, only one --pin was taken: a list failed).
	otherNode := "sha256//" + base64.StdEncoding.EncodeToString(make([]byte, 32))
	cmd := exec.Command(bin, "connect", "--server", ls.Push.Addr().String(), "--admin", "http://"+ls.Admin.Addr().String(), "--token-file", tokenFile,
		"--pin", g.Identity().Pin()+","+otherNode, "--agents", fmt.Sprint(agents), "--procs", "2", "--ramp", "1000", "--hold", "1s", "--source-ips", "4", "--json",
		"--html", filepath.Join(filepath.Dir(bin), "report.html"))
	var rep loadtest.ConnectReport
	runJSON(t, cmd, &rep)
	if rep.Procs != 2 || rep.Connected != agents || rep.HeldAfterHold != agents {
		t.Errorf("report: %d procs, %d connected, %d held; want 2, %d, %d", rep.Procs, rep.Connected, rep.HeldAfterHold, agents, agents)
	}
	if len(rep.Nodes) != 1 || rep.Nodes[0].Sessions != agents || rep.Nodes[0].OpenFiles < agents {
		t.Errorf("node figures %+v, want %d sessions and at least as many open files", rep.Nodes, agents)
	}
	if rep.HandshakeP50 <= 0 || rep.HandshakeP99 < rep.HandshakeP50 || rep.Rate <= 0 || len(rep.Timeline) == 0 {
		t.Errorf("connect figures %+v", rep)
	}
	var bars int64
	for _, b := range rep.Latency {
		bars += b.Count
	}
	if bars != agents {
		t.Errorf("the connect-time histogram counts %d agents, want %d", bars, agents)
	}
	html, err := os.ReadFile(filepath.Join(filepath.Dir(bin), "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "<polyline", "<rect", "most held by one node", "50000 per distribution-point push server"} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("HTML report lacks %q", want)
		}
	}
	if bytes.Contains(html, []byte("<script")) || bytes.Contains(html, []byte("http://")) && bytes.Contains(html, []byte("src=")) {
		t.Error("the HTML report should be self-contained, no scripts or fetched resources")
	}
}

// TestLinkThroughImpairment runs the built dpload link through the
// impairment relay and checks its accounting and verdict.
func TestLinkThroughImpairment(t *testing.T) {
	t.Parallel()
	bin := buildDpload(t)
	htmlFile := filepath.Join(filepath.Dir(bin), "link.html")
	out, err := exec.Command(bin, "link", "--count", "500", "--interval", "1ms", "--delay", "60ms", "--json", "--html", htmlFile).Output()
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Stats struct {
			Sent, Received int
			RTTP50         float64 `json:"rtt_p50_ms"`
		}
		Verdict string
		Series  []loadtest.LinkPoint
		RTTBars []loadtest.Bar `json:"rtt_histogram"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	// 60 ms each way: 120 ms round trip, over the 100 ms limit.
	if rep.Stats.Sent != 500 || rep.Stats.Received != 500 || rep.Stats.RTTP50 < 120 || rep.Verdict != "out-of-limits" {
		t.Errorf("report %s, want 500/500 probes, RTT >= 120 ms, out-of-limits", out)
	}
	// The charts' data accounts for every probe.
	sent, answered, inBars := 0, 0, int64(0)
	for _, p := range rep.Series {
		sent, answered = sent+p.Sent, answered+p.Answered
		if p.Answered > 0 && p.RTTP50Ms < 120 {
			t.Errorf("slice at %.1f s: median RTT %.1f ms, want >= 120", p.Seconds, p.RTTP50Ms)
		}
	}
	for _, b := range rep.RTTBars {
		inBars += b.Count
	}
	if sent != 500 || answered != 500 || inBars != 500 || len(rep.Series) < 2 {
		t.Errorf("series: %d slices, %d sent, %d answered; histogram %d; want 500 each over several slices", len(rep.Series), sent, answered, inBars)
	}
	html, err := os.ReadFile(htmlFile)
	for _, want := range []string{"Median round-trip time over the run", "Round-trip loss over the run", "<polyline", "<rect", "100 ms (uplink delay)"} {
		if err != nil || !strings.Contains(string(html), want) {
			t.Errorf("link HTML report lacks %q (%v)", want, err)
		}
	}
}

// TestPushAgainstGateway runs the built dpload push small against an
// in-process gateway and checks the accounting: every published push is
// received or counted as refused, the broadcast reaches every agent, and
// the storm loses nothing.
func TestPushAgainstGateway(t *testing.T) {
	t.Parallel()
	bin := buildDpload(t)
	g, ls, tokenFile := startGateway(t)
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	const agents = 200
	cmd := exec.Command(bin, "push", "--server", ls.Push.Addr().String(), "--admin", "http://"+ls.Admin.Addr().String(),
		"--pin", g.Identity().Pin(), "--agents", fmt.Sprint(agents), "--procs", "2", "--source-ips", "2",
		"--rate", "200", "--duration", "1s", "--scenarios", "latency,broadcast,broadcast,storm", "--json",
		"--html", filepath.Join(filepath.Dir(bin), "push.html"))
	cmd.Env = append(os.Environ(), "DPGATE_TOKEN="+strings.TrimSpace(string(token))) // the other way to give it
	var rep loadtest.PushReport
	runJSON(t, cmd, &rep)
	l, b, s := rep.Latency, rep.Broadcast, rep.Storm
	if l == nil || b == nil || s == nil {
		t.Fatalf("report lacks scenarios: %+v", rep)
	}
	if l.Published == 0 || l.Received+l.Failed != l.Published {
		t.Errorf("latency: published %d, received %d, refused %d; want received + refused = published", l.Published, l.Received, l.Failed)
	}
	if b.Received != agents { // the second broadcast's own, not both
		t.Errorf("broadcast reached %d of %d agents", b.Received, agents)
	}
	if s.Lost != 0 || s.Received != s.Published {
		t.Errorf("storm: published %d, received %d, lost %d", s.Published, s.Received, s.Lost)
	}
	var n int64
	for _, b := range rep.LatencyBars {
		n += b.Count
	}
	if n != l.Received || len(rep.Timeline) == 0 {
		t.Errorf("latency histogram counts %d of %d received; timeline %d points", n, l.Received, len(rep.Timeline))
	}
	if html, err := os.ReadFile(filepath.Join(filepath.Dir(bin), "push.html")); err != nil || !bytes.Contains(html, []byte("Publish -&gt; receive latency")) {
		t.Errorf("push HTML report: %v", err)
	}
}

// buildDpload builds the dpload binary once for the package's tests and
// returns a copy in the test's own directory (tests write their reports
// beside it).
func buildDpload(t *testing.T) string {
	t.Helper()
	built, err := dploadOnce()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "dpload")
	if err := os.Link(built, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// buildDir holds the binary dploadOnce built; TestMain removes it.
var buildDir string

var dploadOnce = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(buildDir, "dpload")
	// No symbols or DWARF: a link with less CPU (dpgate's takes 1.8 s instead of 2.6).
	if out, err := exec.Command("go", "build", "-ldflags", "-s -w", "-o", bin, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dpload-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startGateway runs an in-process gateway with the push server (auth
// none) and the admin API on loopback.
// The third result is the admin token's file.
func startGateway(t *testing.T) (*gateway.Gateway, gateway.Listeners, string) {
	return startGatewayAuth(t, "none")
}

// startGatewayAuth is startGateway with push.auth auth (for token, the key
// file is data/push-token.key, made on first start).
func startGatewayAuth(t *testing.T, auth string) (*gateway.Gateway, gateway.Listeners, string) {
	t.Helper()
	cf := filepath.Join(t.TempDir(), "dpgate.yaml")
	os.WriteFile(cf, []byte("node:\n  name: t\n  data_dir: data\nadmin:\n  listen: 127.0.0.1:0\npush:\n  listen: 127.0.0.1:0\n  auth: "+auth+"\n  quic: false\nwake:\n  listen: \"off\"\n  shutdown_listen: \"off\"\n"), 0o644)
	cfg, err := config.Load(cf)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := gateway.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(cfg, ls, gateway.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	g.Start()
	t.Cleanup(func() { g.Close() })
	tokenFile, _ := cfg.AdminTokenFile()
	return g, ls, tokenFile
}

// TestConnectThresholds: --threshold prints pass or fail per condition,
// and a crossed one makes dpload exit 99 (k6's convention), after the
// report.
func TestConnectThresholds(t *testing.T) {
	t.Parallel()
	bin := buildDpload(t)
	g, ls, tokenFile := startGateway(t)
	run := func(ths ...string) (int, string, string) {
		args := []string{"connect", "--server", ls.Push.Addr().String(), "--token-file", tokenFile, "--pin", g.Identity().Pin(),
			"--agents", "50", "--procs", "1", "--hold", "100ms", "--source-ips", "2"}
		for _, th := range ths {
			args = append(args, "--threshold", th)
		}
		cmd := exec.Command(bin, args...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		return code, out.String(), errOut.String()
	}
	if code, out, errOut := run("connected>=100%", "p99<60s"); code != 0 || !strings.Contains(errOut, "connected>=100%") || !strings.Contains(errOut, "pass") || out == "" {
		t.Errorf("thresholds met: exit %d\n%s", code, errOut)
	}
	if code, _, errOut := run("connected>=100%", "p99<1us"); code != 99 || !strings.Contains(errOut, "FAIL") || !strings.Contains(errOut, "1 of 2 thresholds crossed: p99<1us") {
		t.Errorf("a threshold crossed: exit %d, want 99\n%s", code, errOut)
	}
	if code, _, errOut := run("nonsense<1"); code != 2 || !strings.Contains(errOut, "no figure") {
		t.Errorf("an unknown figure: exit %d, want 2\n%s", code, errOut)
	}
}

// TestConnectFailsFastWithTheReason: on push.auth cert without agent
// certificates, dpload connect stops after --fail-fast (10 s by default)
// naming the gateway's
// answer (before: "connected 0 / 300" for 60 s, then exit 0); with
// --token-key on push.auth token the agents get tokens and connect.
func TestConnectFailsFastWithTheReason(t *testing.T) {
	t.Parallel()
	bin := buildDpload(t)
	g, ls, tokenFile := startGatewayAuth(t, "cert")
	cmd := exec.Command(bin, "connect", "--server", ls.Push.Addr().String(), "--token-file", tokenFile, "--pin", g.Identity().Pin(),
		"--agents", "20", "--procs", "1", "--hold", "100ms", "--source-ips", "2", "--fail-fast", "2s")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(errOut.String(), "no agent connected in 2s") || !strings.Contains(errOut.String(), "certificate required") {
		t.Fatalf("connect to push.auth cert without certificates: %v after %s\n%s", err, time.Since(start).Round(time.Second), errOut.String())
	}

	g2, ls2, tokenFile2 := startGatewayAuth(t, "token")
	keyFile := filepath.Join(filepath.Dir(tokenFile2), "push-token.key") // beside the admin token in the data directory
	cmd = exec.Command(bin, "connect", "--server", ls2.Push.Addr().String(), "--token-file", tokenFile2, "--pin", g2.Identity().Pin(),
		"--agents", "20", "--procs", "1", "--hold", "100ms", "--source-ips", "2", "--token-key", keyFile, "--threshold", "connected>=100%")
	out.Reset()
	errOut.Reset()
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Errorf("connect with --token-key on push.auth token: %v\n%s", err, errOut.String())
	}

	// push.auth cert with --agent-certs: certificates issued, added to the
	// allow-list through the admin API, and removed again at the end.
	cmd = exec.Command(bin, "connect", "--server", ls.Push.Addr().String(), "--admin", "http://"+ls.Admin.Addr().String(), "--token-file", tokenFile,
		"--pin", g.Identity().Pin(), "--agents", "30", "--procs", "2", "--hold", "100ms", "--source-ips", "2", "--agent-certs", "--threshold", "connected>=100%")
	out.Reset()
	errOut.Reset()
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Errorf("connect with --agent-certs on push.auth cert: %v\n%s", err, errOut.String())
	}
	if n := g.AllowList().Len(); n != 0 {
		t.Errorf("%d agent certificates left in the allow-list after the run, want 0", n)
	}
}

// TestConnectReportsOnInterrupt: Ctrl-C during the hold ends dpload
// connect with its report (the table, the HTML file) of the figures up
// to then, marked interrupted, and exit status 130 (before: a JSON dump
// with "context canceled" and exit 1, no HTML).
func TestConnectReportsOnInterrupt(t *testing.T) {
	t.Parallel()
	bin := buildDpload(t)
	g, ls, tokenFile := startGateway(t)
	html := filepath.Join(t.TempDir(), "cut.html")
	cmd := exec.Command(bin, "connect", "--server", ls.Push.Addr().String(), "--admin", "http://"+ls.Admin.Addr().String(), "--token-file", tokenFile,
		"--pin", g.Identity().Pin(), "--agents", "40", "--procs", "1", "--hold", "10m", "--source-ips", "2", "--html", html)
	var out bytes.Buffer
	cmd.Stdout = &out
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	holding := make(chan struct{})
	go func() { // reads standard error; ends when dpload exits
		sc := bufio.NewScanner(stderr)
		seen := false
		for sc.Scan() {
			if !seen && strings.Contains(sc.Text(), "holding") {
				seen = true
				close(holding)
			}
		}
	}()
	select {
	case <-holding:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("dpload connect never reached the hold")
	}
	cmd.Process.Signal(os.Interrupt)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("exit after Ctrl-C: %v, want status 130", err)
	}
	for _, want := range []string{"INTERRUPTED", "agents connected", "40 / 40", "pass"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report after Ctrl-C lacks %q:\n%s", want, out.String())
		}
	}
	if b, err := os.ReadFile(html); err != nil || !bytes.Contains(b, []byte("INTERRUPTED")) {
		t.Errorf("HTML report after Ctrl-C: %v", err)
	}
}
