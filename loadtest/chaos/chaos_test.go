//go:build linux

package chaos

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestChaosShort runs every fault once against real gateways in network
// namespaces, with agents and a publisher at 20 pushes/s, and asserts
// that no push answered 2xx is lost and the site recovers from each
// fault. The faults are dealt to six groups run side by side, each
// against three nodes of its own (a group's harness and nodes use about
// a tenth of a core), so the package takes about a quarter of the time one
// site would. The long runs are bench/chaos.sh.
func TestChaosShort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces, nftables and tmpfs mounts; CI runs as root")
	}
	for _, tool := range []string{"ip", "nft", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (.ci/run installs iproute2 and nftables)", tool)
		}
	}
	dir := t.TempDir()
	if keep := os.Getenv("DPGATE_CHAOS_KEEP"); keep != "" { // keep the logs and the history for a look
		dir = keep
		os.MkdirAll(dir, 0o700)
	}
	// The nodes, and the harness: dpload chaos, built without the race
	// detector (in this test's process, the harness and its agents took
	// 6 of the test's 22 s of CPU). No symbols or DWARF: 1.8 s of CPU to
	// link dpgate instead of 2.6 (and the flags cmd/dpload's tests build
	// dpload with, whose link go's cache then has).
	bin, dpload := filepath.Join(dir, "dpgate"), filepath.Join(dir, "dpload")
	for _, b := range [][2]string{{bin, "../../cmd/dpgate"}, {dpload, "../../cmd/dpload"}} {
		if out, err := exec.Command("go", "build", "-ldflags", "-s -w", "-o", b[0], b[1]).CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v: %s", b[1], err, out)
		}
	}
	// The groups run side by side on goroutines, not as parallel
	// subtests: go test runs only GOMAXPROCS (2 here) of those at once.
	gs := groups(faults(), 6)
	runs := make([]groupRun, len(gs))
	var wg sync.WaitGroup
	for g, group := range gs {
		wg.Add(1)
		go func() { // ends when its site's run does (bounded by its context)
			defer wg.Done()
			runs[g] = runFaults(dpload, bin, filepath.Join(dir, fmt.Sprintf("group%d", g)), group)
		}()
	}
	wg.Wait()
	for g, group := range gs {
		t.Run(strings.Join(group, "+"), func(t *testing.T) { runs[g].check(t, group) })
	}
}

// faultSeconds is about how long each fault takes here, recovery
// included, at 5 s a fault: rolling restarts every node, readdress waits
// for the cluster to learn the new address. Others take about 5 s.
var faultSeconds = map[string]float64{"rolling": 15, "readdress": 13, "split": 9, "isolate": 9, "pause": 6, "upgrade": 6}

// groups deals the faults out to n groups, the longest first, each to
// the group with the least work so far, so that the groups end at about
// the same time.
func groups(faults []string, n int) [][]string {
	cost := func(f string) float64 { return cmp.Or(faultSeconds[f], 5) }
	sorted := slices.Clone(faults)
	slices.SortStableFunc(sorted, func(a, b string) int { return cmp.Compare(cost(b), cost(a)) })
	out := make([][]string, min(n, len(faults)))
	load := make([]float64, len(out))
	for _, f := range sorted {
		g := slices.Index(load, slices.Min(load))
		out[g] = append(out[g], f)
		load[g] += cost(f)
	}
	return out
}

// groupRun is one site's history, the harness's output and the error
// that ended its run.
type groupRun struct {
	dir  string
	hist *History
	out  string
	err  error
}

// runFaults runs one site of three nodes through the faults, one after
// another, in a dpload chaos process, and reads back its history.
func runFaults(dpload, bin, dir string, faults []string) groupRun {
	r := groupRun{dir: dir}
	if r.err = os.MkdirAll(dir, 0o700); r.err != nil {
		return r
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	history := filepath.Join(dir, "history.json")
	cmd := exec.CommandContext(ctx, dpload, "chaos", "--dpgate", bin, "--dir", dir, "--nodes", "3", "--agents", "30", "--rate", "20",
		"--faults", strings.Join(faults, ","), "--length", "5s", "--settle", "60s", "--history", history)
	// At the deadline dpload is interrupted, so that it takes its
	// namespaces, rules and mounts down as the in-process harness did.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = time.Minute
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		r.err = fmt.Errorf("dpload chaos: %w", err) // also for lost pushes, which check reports
	}
	r.out = out.String()
	b, err := os.ReadFile(history)
	if err == nil {
		var h History
		if err = json.Unmarshal(b, &h); err == nil {
			r.hist = &h
		}
	}
	if err != nil {
		r.err = errors.Join(r.err, fmt.Errorf("dpload chaos's history: %w", err))
	}
	return r
}

// check judges one site's history: every fault run, the site recovered,
// no push answered 2xx lost.
func (r groupRun) check(t *testing.T, faults []string) {
	if r.hist == nil {
		t.Fatalf("%v\n%s", r.err, r.out)
	}
	rep := Check(r.hist)
	var table strings.Builder
	rep.WriteTable(&table)
	t.Logf("\n%s", table.String())
	if r.err != nil {
		t.Logf("dpload chaos said:\n%s", r.out)
	}
	if r.err != nil && rep.Lost == 0 { // dpload fails on lost pushes too: those are reported below
		for i := range 3 {
			b, _ := os.ReadFile(filepath.Join(r.dir, "node"+string(rune('0'+i)), "dpgate.log"))
			if len(b) > 3000 {
				b = b[len(b)-3000:]
			}
			t.Logf("node %d log tail:\n%s", i, b)
		}
		t.Fatal(r.err)
	}
	if rep.Accepted == 0 || len(rep.Faults) != len(faults) {
		t.Fatalf("accepted %d pushes over %d faults; want some over %d", rep.Accepted, len(rep.Faults), len(faults))
	}
	if rep.Lost != 0 {
		t.Errorf("%d acknowledged pushes lost: %v", rep.Lost, rep.LostExamples)
	}
}

// faults is Kinds, or DPGATE_CHAOS_FAULTS (comma-separated) to run some.
func faults() []string {
	if f := os.Getenv("DPGATE_CHAOS_FAULTS"); f != "" {
		return strings.Split(f, ",")
	}
	return Kinds
}
