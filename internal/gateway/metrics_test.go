package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/tlsconf"
)

// docSeries is one row of docs/METRICS.md's tables: | `name` | type |
// labels | meaning |.
type docSeries struct {
	typ    string
	labels []string
}

var docRow = regexp.MustCompile("^\\| `(dpgate_[a-z0-9_]+)` \\| (counter|gauge|histogram) \\| ([^|]*)\\|")

// readMetricsDoc reads the series docs/METRICS.md lists.
func readMetricsDoc(t *testing.T) map[string]docSeries {
	t.Helper()
	f, err := os.Open("../../docs/METRICS.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]docSeries{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := docRow.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		var labels []string
		for _, l := range strings.Split(m[3], ",") {
			if l = strings.Trim(strings.TrimSpace(l), "`"); l != "" && l != "-" {
				labels = append(labels, l)
			}
		}
		slices.Sort(labels)
		out[m[1]] = docSeries{typ: m[2], labels: labels}
	}
	if len(out) == 0 {
		t.Fatal("docs/METRICS.md lists no series")
	}
	return out
}

// TestMetricsFollowConventions: after a workload that touches every part
// (two nodes in a cluster, an agent with a push and its ACK, a relay to
// a pinned upstream, a measured uplink, a wake-up request, a reload),
// `promtool check metrics` finds nothing to say about /metrics; every
// dpgate series has HELP text of its own, and docs/METRICS.md lists
// exactly these series with their types and labels; each was there
// (declared, at 0) before any workload, except the per-node ones, which
// come with the first other node; memberlist emitted no metric the
// bridge does not map.
func TestMetricsFollowConventions(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is needed (Debian package prometheus; ./scripts/test.sh installs it)")
	}
	doc := readMetricsDoc(t)

	// An upstream that echoes, pinned.
	upCert, err := tlsconf.Issue(tlsconf.Template{CommonName: "central"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	upLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{upCert}})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, upLn, testutil.Echo)

	// Node B: a cluster seed and the uplink's reflector.
	b, _, _ := newTestGateway(t, "push:\n  listen: 127.0.0.2:0\n  auth: none\ncluster:\n  bind: 127.0.0.2:0\nlink:\n  reflector_listen: 127.0.0.2:0\n")
	// Node A, measured: every part, memberlist's metrics bridged.
	a, api, _ := newTestGatewayWith(t, fmt.Sprintf(`push:
  listen: 127.0.0.1:0
  auth: none
cluster:
  bind: 127.0.0.1:0
  join: [%s]
  dns:
    listen: 127.0.0.1:0
    domain: dpgate.test
proxy:
  listen: 127.0.0.1:0
  upstreams:
    - address: %s
      pins: [%s]
      probe: %s
link:
  probe_interval: 20ms
  window: 1s
  reflector_listen: 127.0.0.1:0
`, b.clusterAddr, upLn.Addr(), tlsconf.Pin(upCert.Leaf), b.reflectorAddr), Options{GlobalMetrics: true})

	atStart := families(t, a)
	for name, d := range doc {
		if _, ok := atStart[name]; !ok && !slices.Contains(d.labels, "node") {
			t.Errorf("%s is not in /metrics at start", name)
		}
	}

	// The workload.
	waitFor(t, 20*time.Second, func() error {
		if n := len(a.cluster.Members()); n != 2 {
			return fmt.Errorf("node A sees %d nodes, want 2", n)
		}
		return nil
	})
	agent := startTestAgent(t, "metrics-pc", a)
	waitFor(t, 20*time.Second, func() error {
		if !a.push.Holds("metrics-pc") && !b.push.Holds("metrics-pc") {
			return errors.New("agent not connected yet")
		}
		return nil
	})
	if _, err := a.accept(context.Background(), []string{"metrics-pc"}, []byte("counted"), time.Hour); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error { return agent.has("counted") })
	relay(t, a.proxyAddr, a.Identity().Pin())
	if conn, err := net.Dial("udp", a.wakeAddr); err == nil {
		conn.Write([]byte("not a wake-up request"))
		conn.Close()
	}
	a.Reload()
	waitFor(t, 20*time.Second, func() error {
		reg := a.Telemetry().Registry
		for _, want := range []string{"dpgate_push_delivered_total", "dpgate_proxy_received_bytes_total", "dpgate_memberlist_msg_alive_total", "dpgate_cluster_ping_rtt_seconds", "dpgate_wake_rejected_total"} {
			if testutil.Metric(t, reg, want) == 0 {
				return fmt.Errorf("%s is still 0", want)
			}
		}
		if v := testutil.Metric(t, reg, "dpgate_link_verdict"); v != 0 {
			return fmt.Errorf("link verdict %v, want 0 (ok)", v)
		}
		return nil
	})

	text := metricsOf(t, api)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	got := families(t, a)
	for name, mf := range got {
		if !strings.HasPrefix(name, "dpgate_") {
			continue
		}
		if h := mf.GetHelp(); h == "" || h == name {
			t.Errorf("%s: HELP %q says nothing", name, h)
		}
		d, ok := doc[name]
		if !ok {
			t.Errorf("%s is not in docs/METRICS.md", name)
			continue
		}
		if typ := strings.ToLower(mf.GetType().String()); typ != d.typ {
			t.Errorf("%s is a %s, docs/METRICS.md says %s", name, typ, d.typ)
		}
		if labels := labelNames(mf); !slices.Equal(labels, d.labels) {
			t.Errorf("%s has labels %v, docs/METRICS.md says %v", name, labels, d.labels)
		}
	}
	for name := range doc {
		if _, ok := got[name]; !ok {
			t.Errorf("docs/METRICS.md lists %s, which /metrics does not have", name)
		}
	}
	if u := a.Telemetry().Unmapped(); len(u) > 0 {
		t.Errorf("memberlist emitted metrics the bridge does not map: %v", u)
	}
}

// families gathers a gateway's metrics by name.
func families(t *testing.T, g *Gateway) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Telemetry().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// labelNames are the label names of a family's series, sorted.
func labelNames(mf *dto.MetricFamily) []string {
	var out []string
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if !slices.Contains(out, l.GetName()) {
				out = append(out, l.GetName())
			}
		}
	}
	slices.Sort(out)
	return out
}

// relay sends a line through the proxy at addr (pinned to pin) and reads
// the upstream's echo.
func relay(t *testing.T, addr, pin string) {
	t.Helper()
	pins, _ := tlsconf.ParsePins([]string{pin})
	c, err := tls.Dial("tcp", addr, tlsconf.PinnedClientConfig(pins, "gw"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	msg := "through the proxy\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg {
		t.Fatalf("relay echoed %q, %v", got, err)
	}
}

// TestAlertRulesAndDashboard: configs/prometheus-alerts.yml passes
// promtool check rules and its unit tests (promtool test rules), every
// query of configs/grafana-dashboard.json parses (promtool, as a
// recording rule), and both name only series docs/METRICS.md lists.
func TestAlertRulesAndDashboard(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is needed (Debian package prometheus; ./scripts/test.sh installs it)")
	}
	doc := readMetricsDoc(t)
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../../configs"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("check", "rules", "prometheus-alerts.yml")
	run("test", "rules", "prometheus-alerts.test.yml")

	rules, err := os.ReadFile("../../configs/prometheus-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../configs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	var record strings.Builder
	record.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	exprs := []string{string(rules)}
	for i, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for j, tg := range p.Targets {
			expr := strings.ReplaceAll(tg.Expr, "$instance", ".*")
			exprs = append(exprs, expr)
			fmt.Fprintf(&record, "      - record: dashboard:panel%d:target%d\n        expr: %q\n", i, j, expr)
		}
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, []byte(record.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run("check", "rules", f)

	series := regexp.MustCompile(`dpgate_[a-z0-9_]+`)
	for _, e := range exprs {
		for _, name := range series.FindAllString(e, -1) {
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if s, ok := strings.CutSuffix(name, suffix); ok && doc[s].typ == "histogram" {
					base = s
				}
			}
			if _, ok := doc[base]; !ok {
				t.Errorf("%s is used in configs/ but not in docs/METRICS.md", name)
			}
		}
	}
}
