package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/loadtest"
	"github.com/dpgate/dpgate/tlsconf"
)

// TestProxyScenariosAgainstSink runs the built dpload: a sink, then the
// runJSON runs a dpload command that prints its report as JSON and
// decodes the report into rep; a failed run fails the test with what the
// command printed on stderr.
func runJSON(t *testing.T, cmd *exec.Cmd, rep any) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("dpload %s: %v\n%s", cmd.Args[1], err, errOut.String())
	}
	if err := json.Unmarshal(out.Bytes(), rep); err != nil {
		t.Fatalf("dpload %s's report %q: %v", cmd.Args[1], out.String(), err)
	}
}

// proxy scenarios against it directly, and checks the JSON report.
func TestProxyScenariosAgainstSink(t *testing.T) {
	t.Parallel()
	bin := buildDpload(t)
	dir := filepath.Dir(bin)
	c, _ := tlsconf.Issue(tlsconf.Template{CommonName: "sink"}, nil)
	cert := filepath.Join(dir, "sink.pem")
	tlsconf.WriteKeyPair(c, cert, "")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sink := exec.CommandContext(ctx, bin, "sink", "--cert", cert)
	out, _ := sink.StdoutPipe()
	if err := sink.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sink.Process.Signal(os.Interrupt); sink.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 5 || f[0] != "sink" {
		t.Fatalf("sink said %q, %v", line, err)
	}
	addr, pin := f[2], f[4]

	run := exec.CommandContext(ctx, bin, "proxy", "--json", "--duration", "300ms", "--streams", "2",
		"--scenarios", "throughput,latency,connect", "--target", "direct,"+addr+","+pin, "--html", filepath.Join(dir, "proxy.html"))
	var rep loadtest.ProxyReport
	runJSON(t, run, &rep)
	tr := rep.Throughput["direct"]
	if len(tr) != 1 || tr[0].Bytes == 0 || tr[0].Mismatch != 0 {
		t.Errorf("throughput %+v: want bytes confirmed by the sink and no mismatch", tr)
	}
	if l := rep.Latency["direct"]; l.Requests == 0 {
		t.Errorf("latency %+v: want requests", l)
	}
	if c := rep.Connect["direct"]; c.OK == 0 || c.Failed != 0 {
		t.Errorf("connect %+v: want successes and no failures", c)
	}
	var n int64
	for _, b := range rep.Latency["direct"].Bars {
		n += b.Count
	}
	if n != rep.Latency["direct"].Requests {
		t.Errorf("latency histogram counts %d of %d requests", n, rep.Latency["direct"].Requests)
	}
	html, err := os.ReadFile(filepath.Join(dir, "proxy.html"))
	for _, want := range []string{"direct: request/response latency", "<rect", "direct: throughput, 2 stream(s)", "&gt;= 1 Gbit/s (a Sensor)", ">pass</td>"} {
		if err != nil || !strings.Contains(string(html), want) {
			t.Errorf("proxy HTML report lacks %q (%v)", want, err)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"proxy"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--target") {
		t.Errorf("proxy without targets: exit %d, %q; want 2 and a word about --target", code, errb.String())
	}
	if code := run([]string{"nosuch"}, &out, &errb); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
	out.Reset()
	if code := run([]string{"--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "push") {
		t.Errorf("--help: exit %d, %q", code, out.String())
	}
}
