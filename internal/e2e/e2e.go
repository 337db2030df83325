// Package e2e holds what the tests that run dpgate as a real process
// share: building the binaries once for a test binary, running a command
// to completion, a running "dpgate serve" with its log, an agent process,
// and a configuration file. cmd/dpgate's tests use it, and the Windows
// tests under Wine (cmd/dpgate/wine), which are a package of their own so
// that each of the two runs in well under a minute.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/testutil"
)

// LDFlags link the binaries the tests build without a symbol table or
// DWARF (stack traces keep their function names): a fresh link of
// dpgate takes 1.8 s of CPU so and 2.6 s with them, and a fresh machine
// (CI) links each test package's binaries afresh.
const LDFlags = "-s -w"

// Build runs "go build" of pkg (a path as go build takes it, relative
// to the test's directory) into the file out.
func Build(out, pkg string) error {
	build := exec.Command("go", "build", "-ldflags", LDFlags, "-o", out, pkg)
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// Result is one finished dpgate run.
type Result struct {
	Code           int
	Stdout, Stderr string
}

// Run runs bin with args to completion (bounded by a minute), with env
// added to the test's environment.
func Run(t testing.TB, bin string, env []string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	return RunCmd(t, cmd)
}

// RunCmd runs a prepared dpgate command to completion. A panic in its
// standard error fails the test.
func RunCmd(t testing.TB, cmd *exec.Cmd) Result {
	t.Helper()
	args := cmd.Args[1:]
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := Result{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("dpgate %v: %v", args, err)
	}
	if strings.Contains(r.Stderr, "panic:") || strings.Contains(r.Stderr, "goroutine ") {
		t.Fatalf("dpgate %v panicked:\n%s", args, r.Stderr)
	}
	return r
}

// GatewayPin is the pin of the certificate of the gateway whose data
// directory is dir/data ("BIN cert pin dir/data/gateway.pem").
func GatewayPin(t testing.TB, bin, dir string) string {
	t.Helper()
	r := Run(t, bin, nil, "cert", "pin", filepath.Join(dir, "data", "gateway.pem"))
	if r.Code != 0 {
		t.Fatalf("dpgate cert pin: exit %d: %s", r.Code, r.Stderr)
	}
	return strings.TrimSpace(r.Stdout)
}

// Server is a running "dpgate serve". Done is closed when it has exited,
// with Code its exit status.
type Server struct {
	Cmd  *exec.Cmd
	Done chan struct{}
	Code int

	mu   sync.Mutex
	logs bytes.Buffer
}

// StartServe runs "BIN serve ARGS..." until the test ends.
func StartServe(t testing.TB, bin string, env []string, args ...string) *Server {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return StartServeCmd(t, cmd)
}

// StartServeCmd is StartServe of a command prepared by the caller. The
// test's end kills it; a failed test logs its standard error.
func StartServeCmd(t testing.TB, cmd *exec.Cmd) *Server {
	t.Helper()
	s := &Server{Cmd: cmd, Done: make(chan struct{})}
	pipe, _ := s.Cmd.StderrPipe()
	if err := s.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			s.mu.Lock()
			s.logs.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
		}
		err := s.Cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			s.Code = ee.ExitCode()
		}
		close(s.Done)
	}()
	t.Cleanup(func() {
		s.Cmd.Process.Kill()
		<-s.Done
		if t.Failed() {
			t.Logf("dpgate serve log:\n%s", s.Log())
		}
	})
	return s
}

// Log is what the server has written to its standard error so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

// WaitLog waits for a log line matching re and returns its submatches.
func (s *Server) WaitLog(t testing.TB, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	var m []string
	testutil.WaitFor(t, 30*time.Second, func() error {
		if m = rx.FindStringSubmatch(s.Log()); m == nil {
			select {
			case <-s.Done:
				t.Fatalf("dpgate exited (code %d) before logging %q", s.Code, re)
			default:
			}
			return fmt.Errorf("no log line matching %q yet", re)
		}
		return nil
	})
	return m
}

// Stop sends sig and returns the exit code and how long the exit took.
func (s *Server) Stop(t testing.TB, sig os.Signal) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	s.Cmd.Process.Signal(sig)
	select {
	case <-s.Done:
		return s.Code, time.Since(start)
	case <-time.After(30 * time.Second):
		t.Fatal("dpgate did not exit within 30s of the signal")
	}
	return -1, 0
}

// WriteConfig writes dir/dpgate.yaml: node e2e, data in dir/data, the
// admin API on adminAddr, then extra. Unless extra says otherwise the
// push server and the wake-up listeners take ports of their own (not the
// standard ones: tests run side by side).
func WriteConfig(t testing.TB, dir, adminAddr, extra string) string {
	t.Helper()
	f := filepath.Join(dir, "dpgate.yaml")
	body := fmt.Sprintf("node:\n  name: e2e\n  data_dir: data\nadmin:\n  listen: %s\n%s", adminAddr, extra)
	if !strings.Contains(extra, "push:") {
		body += "push:\n  listen: 127.0.0.1:0\n"
	}
	if !strings.Contains(extra, "wake:") {
		body += "wake:\n  listen: 127.0.0.1:0\n  shutdown_listen: 127.0.0.1:0\n"
	}
	if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// StartAgentProcess starts "dpgate agent" (ag) with its standard error
// kept and each line it prints (a push, as JSON) on lines; the test's
// end kills it.
func StartAgentProcess(t testing.TB, ag *exec.Cmd) (*testutil.Buffer, <-chan string) {
	t.Helper()
	stderr := &testutil.Buffer{}
	ag.Stderr = stderr
	out, _ := ag.StdoutPipe()
	if err := ag.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Process.Kill(); ag.Wait() })
	lines := make(chan string, 10)
	go func() { // ends when the agent exits
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return stderr, lines
}
