//go:build linux

package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Ports every node uses on its own address.
const (
	pushPort   = 13295
	adminPort  = 13290
	gossipPort = 7946
)

// shared are the files every node of the site holds the same.
type shared struct {
	cert, tokenKey, adminToken, gossipKey string
	token                                 string // the admin token itself
}

// node is one "dpgate serve" in its namespace, with its data directory on
// a tmpfs of its own (so it can be filled).
type node struct {
	hc      *http.Client // for its admin API (TLS, the site's pin)
	i       int
	name    string
	ns      string
	bin     string
	dir     string // holds the config, the log, and the data mount
	dataDir string
	files   shared
	peers   func(self int) []string // the others' gossip addresses

	mu    sync.Mutex
	addr  netip.Addr
	pid   int           // the process serving now (after an upgrade, not the one started)
	done  chan struct{} // closed when pid exits
	code  int
	state string // up, down, paused
}

func (n *node) pushAddr() string { return netip.AddrPortFrom(n.address(), pushPort).String() }
func (n *node) adminURL() string {
	return "https://" + netip.AddrPortFrom(n.address(), adminPort).String()
}
func (n *node) gossipAddr() string { return netip.AddrPortFrom(n.address(), gossipPort).String() }

func (n *node) address() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addr
}

func (n *node) State() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state
}

func (n *node) cfgFile() string { return filepath.Join(n.dir, "dpgate.yaml") }

func (n *node) writeConfig() error {
	a := n.address()
	var join []string
	for _, p := range n.peers(n.i) {
		join = append(join, `"`+p+`"`)
	}
	cfg := fmt.Sprintf(`node: {name: %s, data_dir: %s}
log: {level: info}
tls: {cert: %s}
admin: {listen: "%s:%d", token_file: %s}
push: {listen: "%s:%d", auth: token, token_key_file: %s, quic: false, queue_ttl: 1h}
wake: {listen: "off", shutdown_listen: "off"}
cluster: {bind: "%s:%d", secret_key_file: %s, join: [%s]}
`, n.name, n.dataDir, n.files.cert, a, adminPort, n.files.adminToken, a, pushPort, n.files.tokenKey,
		a, gossipPort, n.files.gossipKey, strings.Join(join, ", "))
	return os.WriteFile(n.cfgFile(), []byte(cfg), 0o600)
}

// mountData puts the data directory on a tmpfs of size MiB.
func (n *node) mountData(size int) error {
	if err := os.MkdirAll(n.dataDir, 0o700); err != nil {
		return err
	}
	return run("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm,mode=0700", size), "tmpfs", n.dataDir)
}

// start runs the node and waits until its admin API answers; a process
// that exits first is an error carrying its exit code and log tail.
func (n *node) start(ctx context.Context) error {
	if err := n.writeConfig(); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(n.dir, "dpgate.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "---- %s start at %s\n", time.Now().Format(time.RFC3339Nano), n.address())
	cmd := exec.Command("ip", "netns", "exec", n.ns, n.bin, "serve", "-c", n.cfgFile())
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done, pid := make(chan struct{}), cmd.Process.Pid
	n.mu.Lock()
	n.pid, n.done, n.state = pid, done, "up"
	n.mu.Unlock()
	go func() { // ends when the process does
		err := cmd.Wait()
		logf.Close() // this copy: an upgraded process writes on to the file
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		n.mu.Lock()
		if n.pid == pid { // not replaced by an upgrade
			n.code, n.state = code, "down"
		}
		n.mu.Unlock()
		close(done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("%s exited with %d while starting: %s", n.name, n.exitCode(), n.logTail(400))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if resp, err := n.hc.Get(n.adminURL() + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return fmt.Errorf("%s did not answer /healthz within 30 s", n.name)
}

func (n *node) exitCode() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.code
}

func (n *node) logTail(max int) string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "dpgate.log"))
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

func (n *node) signal(sig syscall.Signal) {
	n.mu.Lock()
	pid := n.pid
	if sig == syscall.SIGSTOP {
		n.state = "paused"
	} else if sig == syscall.SIGCONT {
		n.state = "up"
	}
	n.mu.Unlock()
	if pid > 0 {
		syscall.Kill(pid, sig)
	}
}

// upgrade replaces the node's process without downtime (POST
// /v1/upgrade, the same binary) and waits until the new one serves.
func (n *node) upgrade(ctx context.Context, token string) error {
	n.mu.Lock()
	old := n.pid
	n.mu.Unlock()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: n.hc.Transport}
	req, _ := http.NewRequestWithContext(ctx, "POST", n.adminURL()+"/v1/upgrade", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("%s: POST /v1/upgrade: %s", n.name, resp.Status)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", n.adminURL()+"/v1/status", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			continue // between the processes: the request waits or the old one closed it
		}
		var st struct {
			PID     int `json:"pid"`
			Upgrade *struct {
				State, Error string
			} `json:"upgrade"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		switch {
		case err != nil || st.PID == old && st.Upgrade == nil:
			continue
		case st.PID == old:
			return fmt.Errorf("%s: upgrade %s: %s", n.name, st.Upgrade.State, st.Upgrade.Error)
		}
		done := make(chan struct{})
		n.mu.Lock()
		n.pid, n.done, n.state = st.PID, done, "up"
		n.mu.Unlock()
		go watchPID(st.PID, done) // not our child: polled
		return nil
	}
	return fmt.Errorf("%s: no new process within 60 s of the upgrade", n.name)
}

// watchPID closes done when process pid has exited (gone, or a zombie
// of a parent that does not reap it).
func watchPID(pid int, done chan struct{}) {
	defer close(done)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		// "pid (comm) S ...": the state follows the last ')'.
		if i := strings.LastIndexByte(string(b), ')'); i < 0 || i+2 >= len(b) || b[i+2] == 'Z' {
			return
		}
		time.Sleep(100 * time.Millisecond) // polling a process that is not our child
	}
}

// kill is kill -9, waiting for the process to be gone.
func (n *node) kill() {
	n.signal(syscall.SIGCONT) // a paused process dies as well, but be plain
	n.signal(syscall.SIGKILL)
	n.wait(30 * time.Second)
}

// stop is a graceful stop (SIGTERM: drain, hand over, leave).
func (n *node) stop() {
	n.signal(syscall.SIGTERM)
	if !n.wait(40 * time.Second) {
		n.kill()
	}
}

func (n *node) wait(d time.Duration) bool {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// fill writes a file into the data directory until the filesystem is full.
func (n *node) fill() error {
	f, err := os.Create(filepath.Join(n.dataDir, "filler"))
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return err
		}
	}
}

func (n *node) unfill() error { return os.Remove(filepath.Join(n.dataDir, "filler")) }

// corrupt damages the store while the node is down: "truncate" cuts the
// file to half, "bitflip" flips 64 random bytes past the meta pages.
func (n *node) corrupt(how string) error {
	file := filepath.Join(n.dataDir, "dpgate.db")
	fi, err := os.Stat(file)
	if err != nil {
		return err
	}
	switch how {
	case "truncate":
		return os.Truncate(file, fi.Size()/2)
	case "bitflip":
		f, err := os.OpenFile(file, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, 1)
		for range 64 {
			off := 16384 + rand.Int64N(max(1, fi.Size()-16384))
			f.ReadAt(b, off)
			b[0] ^= byte(1 << rand.IntN(8))
			f.WriteAt(b, off)
		}
		return f.Sync()
	}
	return fmt.Errorf("chaos: unknown corruption %q", how)
}

// recoverStore is what the operator does after the gateway refuses a
// damaged store: dpgate store recover, then start it again.
func (n *node) recoverStore() (string, error) {
	// Bounded: a recover that never ended (a cursor descending for ever
	// on a damaged inline page, 8 GiB in two minutes) is a finding, not a
	// reason to take the machine down.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.bin, "store", "recover", "-c", n.cfgFile()).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("dpgate store recover: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}
