//go:build linux

package wine

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/e2e"
	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/internal/testutil"
)

// TestWindowsAgentUnderWine runs the Windows build of the reference agent
// (GOOS=windows, "dpgate.exe agent") under Wine against the Linux gateway
// on loopback: it connects, receives a push and acknowledges it (the
// gateway reports it delivered), reconnects by itself when the gateway is
// killed and comes back, receives the next push, and stops on Ctrl-C
// (Wine turns SIGINT into the console's Ctrl-C event).
//
// Not here: wake-up datagrams and the shutdown notice. Under Wine 8.0
// (Debian 12) every UDP socket of a Go program fails at creation: Go's
// net package asks Windows not to report ICMP port unreachable on it
// (WSAIoctl SIO_UDP_CONNRESET), which Wine answers with WSAEOPNOTSUPP
// ("wsaioctl: winapi error #10045"). The same code runs on Linux in
// TestWakeUpEndToEnd; on real Windows the call is supported. What the
// agent does with the datagrams, short of the socket, runs under Wine
// in TestWindowsUnitTestsUnderWine (wake's TestAgentSideDatagrams).
//
// Debian 12's Wine also lacks bcryptprimitives.dll, whose ProcessPrng the
// Go runtime calls at start: scripts/wine/processprng.c, built with
// mingw-w64 into the test's Wine prefix, provides it.
func TestWindowsAgentUnderWine(t *testing.T) {
	// Real processes that mostly wait: side by side with the other long ones.
	t.Parallel()
	w := wineSetUp(t)
	exe := w.dpgateExe(t)
	wine, env, dir := w.wine, w.env, t.TempDir()
	v := exec.Command(wine, exe, "version")
	v.Env = env
	if out, err := v.CombinedOutput(); err != nil {
		t.Fatalf("dpgate.exe version under Wine: %v\n%s", err, out)
	} else {
		t.Logf("under Wine: %s", strings.SplitN(string(out), "\n", 2)[0])
	}

	// The gateway, and the Windows agent under Wine.
	pushAddr, adminAddr := testutil.FreePort(t), testutil.FreePort(t)
	cfg := e2e.WriteConfig(t, dir, adminAddr, fmt.Sprintf("push:\n  listen: %s\n  auth: none\n  quic: false\nwake:\n  listen: \"off\"\n  shutdown_listen: \"off\"\n", pushAddr))
	s := e2e.StartServe(t, bin, nil, "-c", cfg)
	s.WaitLog(t, `msg="push server listening"`)
	pin := e2e.GatewayPin(t, bin, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ag := exec.CommandContext(ctx, wine, exe, "agent", "--server", pushAddr, "--pin", pin, "--device", "pc-windows",
		"--min-backoff", "200ms", "--max-backoff", "1s")
	ag.Env = env
	ag.WaitDelay = 10 * time.Second
	stderr, lines := e2e.StartAgentProcess(t, ag)
	connected := func(times int) {
		t.Helper()
		testutil.WaitFor(t, 60*time.Second, func() error {
			if n := strings.Count(stderr.String(), "connected "+pushAddr); n < times {
				return fmt.Errorf("agent connected %d times, want %d; stderr:\n%s", n, times, stderr.String())
			}
			return nil
		})
	}
	received := func(payload string) {
		t.Helper()
		r := e2e.Run(t, bin, nil, "push", "-c", cfg, "--wait", "20s", "pc-windows", payload)
		if r.Code != 0 || !strings.Contains(r.Stdout, "delivered") {
			t.Fatalf("push %q: exit %d: %s %s\nagent: %s", payload, r.Code, r.Stdout, r.Stderr, stderr.String())
		}
		select {
		case line := <-lines:
			var m struct{ Data string }
			if err := json.Unmarshal([]byte(line), &m); err != nil || m.Data != payload {
				t.Fatalf("agent printed %q, want the push %q", line, payload)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("the agent printed nothing for %q", payload)
		}
	}

	connected(1)
	received("to windows") // delivered: the agent's ACK reached the gateway
	s.Cmd.Process.Signal(syscall.SIGKILL)
	<-s.Done
	s2 := e2e.StartServe(t, bin, nil, "-c", cfg)
	s2.WaitLog(t, `msg="push server listening"`)
	connected(2) // by itself, after its backoff
	received("after the reconnect")

	before := len(stderr.String())
	interrupted := time.Now()
	ag.Process.Signal(os.Interrupt)
	err := ag.Wait()
	var ee *exec.ExitError
	stopped := strings.Contains(stderr.String()[before:], "dpgate agent: disconnected ")
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL && stopped:
		// The agent ended its connection for the Ctrl-C and was exiting,
		// and the process then ended by SIGKILL: twice in CI runs, on a
		// loaded machine, never alone. Nothing here sends it; most likely
		// Wine's server, ending a terminating Windows process that is slow
		// to go. The agent's part is done.
		t.Logf("the agent stopped and Wine killed its exiting process %v after Ctrl-C", time.Since(interrupted).Round(time.Millisecond))
	default:
		t.Errorf("agent after Ctrl-C: %v (connection ended: %v)\n%s", err, stopped, stderr.String())
	}
	t.Logf("agent under Wine:\n%s", stderr.String())
}

// TestWindowsUnitTestsUnderWine runs the wire format's and the agent
// library's tests, compiled for windows/amd64, under Wine, and the wake
// package's tests of the datagrams an agent takes and sends. Left to
// Linux: TestAgentLinksTheWireFormatOnly runs "go list" (the Go
// toolchain, a Linux program) to check push/client's dependencies, a
// property of the build, not of the platform; the wake tests that open
// UDP sockets, which Go cannot do under Wine 8.0 (TestWindowsAgentUnderWine
// says why).
func TestWindowsUnitTestsUnderWine(t *testing.T) {
	t.Parallel()
	w := wineSetUp(t)
	for _, c := range []struct {
		pkg, skip string
		only      []string // these tests, each of which must pass
	}{
		{pkg: "push/wire"},
		{pkg: "push/client", skip: "TestAgentLinksTheWireFormatOnly"},
		{pkg: "wake", only: []string{"TestAgentSideDatagrams", "TestDatagramLayout", "TestWakeOnLANLayout", "TestCheckRejects"}},
	} {
		exe := filepath.Join(t.TempDir(), strings.ReplaceAll(c.pkg, "/", "_")+".test.exe")
		if err := goBuildWindows(exe, "../../../"+c.pkg, "test", "-c"); err != nil {
			t.Fatal(err)
		}
		args := []string{exe, "-test.v", "-test.count=1"}
		if c.only != nil {
			args = append(args, "-test.run", "^("+strings.Join(c.only, "|")+")$")
		}
		if c.skip != "" {
			args = append(args, "-test.skip", "^"+c.skip+"$")
		}
		run := exec.Command(w.wine, args...)
		run.Env, run.Dir = w.env, "../../../"+c.pkg
		out, err := run.CombinedOutput()
		passed := strings.Count(string(out), "--- PASS")
		missing := slices.DeleteFunc(slices.Clone(c.only), func(name string) bool {
			return strings.Contains(string(out), "--- PASS: "+name+" ")
		})
		if err != nil || passed == 0 || len(missing) > 0 || strings.Contains(string(out), "--- FAIL") {
			t.Errorf("%s tests under Wine: %v, %d passed, not passed %v\n%s", c.pkg, err, passed, missing, out)
			continue
		}
		t.Logf("%s under Wine: %d tests passed", c.pkg, passed)
	}
}

// wine is a Wine prefix with the ProcessPrng stub in it, shared by the
// package's Wine tests.
type wine struct {
	wine   string   // the wine64 loader
	prefix string   // WINEPREFIX
	env    []string // WINEPREFIX and quiet settings

	exeOnce sync.Once // dpgateExe
	exe     string
	exeErr  error
}

// wineUsed: a test asked for the prefix.
var wineUsed atomic.Bool

var wineOnce = sync.OnceValues(func() (*wine, error) {
	w := &wine{wine: "/usr/lib/wine/wine64"} // Debian's wine64 puts it here, not on PATH
	if p, err := exec.LookPath("wine64"); err == nil {
		w.wine = p
	}
	gcc, gccErr := exec.LookPath("x86_64-w64-mingw32-gcc")
	if _, err := os.Stat(w.wine); err != nil || gccErr != nil {
		return nil, errors.New("wine64 and x86_64-w64-mingw32-gcc are needed (Debian packages wine64 and gcc-mingw-w64-x86-64-win32; ./scripts/test.sh installs them)")
	}
	prefix := filepath.Join(filepath.Dir(bin), "wine") // removed with bin by TestMain
	w.prefix = prefix
	w.env = append(os.Environ(), "WINEPREFIX="+prefix, "WINEDEBUG=-all", "WINEDLLOVERRIDES=mscoree,mshtml=") // no Mono or Gecko prompts
	// wineboot's output goes to a file: a pipe would be held open by the
	// wineserver it starts, so collecting it waits until that server
	// goes idle and stops (seconds).
	if err := os.MkdirAll(prefix, 0o700); err != nil {
		return nil, err
	}
	bootLog, err := os.Create(filepath.Join(prefix, "wineboot.log"))
	if err != nil {
		return nil, err
	}
	defer bootLog.Close()
	server := func(args ...string) error {
		c := exec.Command(filepath.Join(filepath.Dir(w.wine), "wineserver"), args...)
		c.Env, c.Stdout, c.Stderr = w.env, bootLog, bootLog
		return c.Run()
	}
	boot := exec.Command(w.wine, "wineboot", "--init")
	boot.Env, boot.Stdout, boot.Stderr = w.env, bootLog, bootLog
	err = boot.Run()
	// Then a server that stays up until stopWine, so no later command
	// waits for one to stop either; should the test binary be killed
	// before stopWine, it ends 60 s after the last program on it (plain
	// --persistent would keep it for ever). It is a new one: the service manager
	// of the first boot cannot start a service installed after it ("net
	// start": "Could not get handle to service"). The first program on it
	// starts the prefix's services, which stay as long as the server and
	// keep that program's output open: that program writes to the file.
	for _, arg := range []string{"--kill", "--wait", "--persistent=60"} {
		if err == nil {
			err = server(arg)
		}
	}
	if err == nil {
		first := exec.Command(w.wine, "cmd", "/c", "exit")
		first.Env, first.Stdout, first.Stderr = w.env, bootLog, bootLog
		err = first.Run()
	}
	if err != nil {
		out, _ := os.ReadFile(bootLog.Name())
		return nil, fmt.Errorf("setting up the Wine prefix: %v\n%s", err, out)
	}
	system32 := filepath.Join(prefix, "drive_c", "windows", "system32")
	os.MkdirAll(system32, 0o755)
	dll := exec.Command(gcc, "-O2", "-shared", "-o", filepath.Join(system32, "bcryptprimitives.dll"), "../../../scripts/wine/processprng.c", "-ladvapi32")
	if out, err := dll.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the ProcessPrng stub: %v\n%s", err, out)
	}
	return w, nil
})

// wineSetUp returns the package's Wine prefix, made on first use.
func wineSetUp(t *testing.T) *wine {
	t.Helper()
	wineUsed.Store(true)
	w, err := wineOnce()
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// stopWine ends the prefix's wineserver, which outlives the programs by
// a few seconds (TestMain, after the tests).
func stopWine() {
	if !wineUsed.Load() {
		return
	}
	if w, err := wineOnce(); err == nil {
		k := exec.Command(filepath.Join(filepath.Dir(w.wine), "wineserver"), "-k")
		k.Env = w.env
		k.Run()
	}
}

// dpgateExe is dpgate built for windows/amd64, once for the package.
func (w *wine) dpgateExe(t *testing.T) string {
	t.Helper()
	w.exeOnce.Do(w.buildExe)
	if w.exeErr != nil {
		t.Fatal(w.exeErr)
	}
	return w.exe
}

func (w *wine) buildExe() {
	w.exe = filepath.Join(w.prefix, "dpgate.exe")
	w.exeErr = goBuildWindows(w.exe, "..", "build")
}

// prepareWine boots the Wine prefix and builds dpgate.exe in the
// background (TestMain, while the package's serial tests run: the boot
// takes seconds of mostly waiting), when a Wine test is to run. The
// tests wait for the same once values. -test.run and -test.skip are
// matched against the Wine tests' names as go test matches them (their
// first element: these tests have no subtests).
func prepareWine() {
	run := strings.Split(flag.Lookup("test.run").Value.String(), "/")[0]
	skip := strings.Split(flag.Lookup("test.skip").Value.String(), "/")[0]
	selected := false
	for _, name := range []string{"TestWindowsAgentUnderWine", "TestWindowsUnitTestsUnderWine", "TestWindowsServiceUnderWine", "TestWindowsGatewayUnderWine"} {
		runs, err := regexp.MatchString(run, name)
		skipped, serr := regexp.MatchString(skip, name)
		if err == nil && runs && !(skip != "" && serr == nil && skipped) {
			selected = true
		}
	}
	if !selected {
		return
	}
	wineUsed.Store(true)
	go func() { // ends with the boot and the build
		if w, err := wineOnce(); err == nil {
			w.exeOnce.Do(w.buildExe)
		}
	}()
}

// goBuildWindows runs "go VERB... -o out pkg" for windows/amd64: "go
// build", or with "test" and "-c" a test binary.
func goBuildWindows(out, pkg string, verb ...string) error {
	c := exec.Command("go", append(verb, "-ldflags", e2e.LDFlags, "-o", out, pkg)...)
	c.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
	if b, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s for Windows: %v\n%s", pkg, err, b)
	}
	return nil
}

// TestWindowsServiceUnderWine installs the Windows reference agent as a
// service in Wine's service manager ("dpgate.exe service install"),
// starts it ("net start"): it connects to the Linux gateway and logs to
// %ProgramData%\dpgate; "net stop" stops it (the agent leaves the
// gateway); "service uninstall" removes it.
func TestWindowsServiceUnderWine(t *testing.T) {
	t.Parallel()
	w := wineSetUp(t)
	exe := w.dpgateExe(t)
	dir := t.TempDir()
	pushAddr, adminAddr := testutil.FreePort(t), testutil.FreePort(t)
	cfg := e2e.WriteConfig(t, dir, adminAddr, fmt.Sprintf("push:\n  listen: %s\n  auth: none\n  quic: false\nwake:\n  listen: \"off\"\n  shutdown_listen: \"off\"\n", pushAddr))
	s := e2e.StartServe(t, bin, nil, "-c", cfg)
	s.WaitLog(t, `msg="push server listening"`)
	pin := e2e.GatewayPin(t, bin, dir)
	name := fmt.Sprintf("dpgate-test-%d", os.Getpid())
	wineRun := func(args ...string) string {
		t.Helper()
		c := exec.Command(w.wine, args...)
		c.Env = w.env
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("wine %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	wineRun(exe, "service", "install", name, "--", "agent", "--server", pushAddr, "--pin", pin, "--device", "pc-service", "--min-backoff", "200ms")
	t.Cleanup(func() { // also after a failure: stop and remove it
		c := exec.Command(w.wine, "net", "stop", name)
		c.Env = w.env
		c.Run()
		u := exec.Command(w.wine, exe, "service", "uninstall", name)
		u.Env = w.env
		u.Run()
	})
	// Wine 8.0's "net start" starts it and then says "already running"
	// with exit status 1 ("sc start" fails in a new prefix): judged by
	// "sc query" instead.
	start := exec.Command(w.wine, "net", "start", name)
	start.Env = w.env
	start.Run()
	testutil.WaitFor(t, 30*time.Second, func() error {
		if out := wineRun("sc", "query", name); !strings.Contains(out, "RUNNING") {
			return fmt.Errorf("service not running:\n%s", out)
		}
		return nil
	})
	connected := func(want bool) error {
		var d struct{ Connected bool }
		if err := adminAPI(t, dir, adminAddr).Do(context.Background(), "GET", "/v1/devices/pc-service", nil, &d); err != nil {
			return err
		}
		if d.Connected != want {
			return fmt.Errorf("device connected: %v, want %v", d.Connected, want)
		}
		return nil
	}
	testutil.WaitFor(t, 60*time.Second, func() error { return connected(true) })
	wineRun("net", "stop", name)
	testutil.WaitFor(t, 30*time.Second, func() error { return connected(false) })
	// %ProgramData% is C:\ProgramData on Windows, C:\users\Public in Wine.
	logs, _ := filepath.Glob(filepath.Join(w.prefix, "drive_c", "*", "*", "dpgate", name+".log"))
	more, _ := filepath.Glob(filepath.Join(w.prefix, "drive_c", "*", "dpgate", name+".log"))
	if logs = append(logs, more...); len(logs) != 1 {
		t.Fatalf("service logs found: %v, want one %s.log", logs, name)
	}
	if log, _ := os.ReadFile(logs[0]); !strings.Contains(string(log), "connected "+pushAddr) {
		t.Errorf("service log:\n%s\nwant the agent's connection", log)
	}
	if out := wineRun(exe, "service", "uninstall", name); !strings.Contains(out, "removed") {
		t.Errorf("uninstall said %q", out)
	}
}

// TestWindowsGatewayUnderWine runs the Windows build of the gateway
// ("dpgate.exe serve") under Wine with the configuration a Windows server
// would have (Windows paths; QUIC and the UDP services off: Go's UDP
// sockets fail under Wine 8.0), and a Linux agent against it: the store
// opens (it first failed there: a directory cannot be synced on Windows),
// the agent connects, a push through the admin API is delivered, and
// Ctrl-C stops the gateway cleanly.
func TestWindowsGatewayUnderWine(t *testing.T) {
	t.Parallel()
	w := wineSetUp(t)
	exe := w.dpgateExe(t)
	dir := t.TempDir()
	win := func(p string) string { return `Z:` + strings.ReplaceAll(p, "/", `\`) } // Wine's Z: is /
	pushAddr, adminAddr := testutil.FreePort(t), testutil.FreePort(t)
	cfg := filepath.Join(dir, "dpgate.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("node:\n  name: windows-gw\n  data_dir: '%s'\nadmin:\n  listen: %s\npush:\n  listen: %s\n  auth: none\n  quic: false\nwake:\n  listen: \"off\"\n  shutdown_listen: \"off\"\n",
		win(filepath.Join(dir, "data")), adminAddr, pushAddr)), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	gw := exec.CommandContext(ctx, w.wine, exe, "serve", "-c", win(cfg))
	gw.Env = w.env
	gw.WaitDelay = 10 * time.Second
	var log testutil.Buffer
	gw.Stdout, gw.Stderr = &log, &log
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Process.Kill(); gw.Wait() })
	testutil.WaitFor(t, 60*time.Second, func() error {
		if !strings.Contains(log.String(), `msg="push server listening"`) {
			return fmt.Errorf("the Windows gateway is not serving yet:\n%s", log.String())
		}
		return nil
	})
	pin := e2e.GatewayPin(t, bin, dir)
	api := adminAPI(t, dir, adminAddr)

	ag := exec.Command(bin, "agent", "--server", pushAddr, "--pin", pin, "--device", "pc-linux", "--min-backoff", "200ms")
	stderr, lines := e2e.StartAgentProcess(t, ag)
	testutil.WaitFor(t, 30*time.Second, func() error {
		if !strings.Contains(stderr.String(), "connected "+pushAddr) {
			return fmt.Errorf("the agent has not connected; agent:\n%s\ngateway:\n%s", stderr.String(), log.String())
		}
		return nil
	})
	data := "from a Windows gateway"
	if err := api.Do(ctx, "POST", "/v1/devices/pc-linux/push", gateway.PushRequest{Data: &data}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-lines:
		if !strings.Contains(line, data) {
			t.Errorf("agent printed %q", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the push did not arrive; gateway:\n%s", log.String())
	}
	gw.Process.Signal(os.Interrupt)
	if err := gw.Wait(); err != nil || !strings.Contains(log.String(), "msg=stopped") {
		t.Errorf("the Windows gateway after Ctrl-C: %v\n%s", err, log.String())
	}
}
