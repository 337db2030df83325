package chaos

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestChaosShort runs three real gateways in network namespaces, 30
// agents and a publisher at 20 pushes/s through every fault once, and
// asserts that no push answered 2xx is lost and the site recovers from
// each fault. The long runs are bench/chaos.sh.
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
	build := exec.Command("go", "build", "-o", bin, "../../cmd/dpgate")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building dpgate: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	h, err := Run(ctx, Config{Dpgate: bin, Dir: dir, Nodes: 3, Agents: 30, Rate: 20, Faults: faults(), Length: 6 * time.Second,
		Settle: 60 * time.Second, Log: t.Logf})
	if b, err := json.Marshal(h); err == nil {
		os.WriteFile(filepath.Join(dir, "history.json"), b, 0o600)
	}
	rep := Check(h)
	var table strings.Builder
	rep.WriteTable(&table)
	t.Logf("\n%s", table.String())
	if err != nil {
		for i := range 3 {
			b, _ := os.ReadFile(filepath.Join(dir, "node"+string(rune('0'+i)), "dpgate.log"))
			if len(b) > 3000 {
				b = b[len(b)-3000:]
			}
			t.Logf("node %d log tail:\n%s", i, b)
		}
		t.Fatal(err)
	}
	if rep.Accepted == 0 || len(rep.Faults) != len(faults()) {
		t.Fatalf("accepted %d pushes over %d faults; want some over %d", rep.Accepted, len(rep.Faults), len(faults()))
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
