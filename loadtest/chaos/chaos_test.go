//go:build linux

package chaos

import (
	"cmp"
	"context"
	"encoding/json"
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
	bin := filepath.Join(dir, "dpgate")
	build := exec.Command("go", "build", "-ldflags", "-s -w", "-o", bin, "../../cmd/dpgate") // no symbols or DWARF: 1.8 s of CPU to link dpgate instead of 2.6
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building dpgate: %v: %s", err, out)
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
			runs[g] = runFaults(t, bin, filepath.Join(dir, fmt.Sprintf("group%d", g)), group)
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

// groupRun is one site's history and the error that ended its run.
type groupRun struct {
	dir  string
	hist *History
	err  error
}

// runFaults runs one site of three nodes through the faults, one after
// another, and keeps its history.
func runFaults(t *testing.T, bin, dir string, faults []string) groupRun {
	r := groupRun{dir: dir}
	if r.err = os.MkdirAll(dir, 0o700); r.err != nil {
		return r
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	prefix := strings.Join(faults, "+") + ": "
	r.hist, r.err = Run(ctx, Config{Dpgate: bin, Dir: dir, Nodes: 3, Agents: 30, Rate: 20, Faults: faults, Length: 5 * time.Second,
		Settle: 60 * time.Second, Log: func(format string, args ...any) { t.Logf(prefix+format, args...) }})
	if b, err := json.Marshal(r.hist); err == nil {
		os.WriteFile(filepath.Join(dir, "history.json"), b, 0o600)
	}
	return r
}

// check judges one site's history: every fault run, the site recovered,
// no push answered 2xx lost.
func (r groupRun) check(t *testing.T, faults []string) {
	if r.hist == nil {
		t.Fatal(r.err)
	}
	rep := Check(r.hist)
	var table strings.Builder
	rep.WriteTable(&table)
	t.Logf("\n%s", table.String())
	if r.err != nil {
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
