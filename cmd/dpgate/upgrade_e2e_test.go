//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// upgradeSite is a gateway started from a binary of its own (so that the
// file can be replaced, as an administrator installs a new version), in
// front of a central echo server, with agents connected.
type upgradeSite struct {
	dir, binPath, cfg       string
	proxyAddr, pushAddr     string
	logFile                 string
	first                   *exec.Cmd
	firstDone               chan struct{}
	firstCode               int
	pin                     string // the gateway's
	gwTLS                   *tls.Config
	centralAddr, centralPin string
	notify                  *systemdNotify
}

// systemdNotify stands in for systemd's notification socket: it records
// each message with the pid that sent it (SO_PASSCRED), as systemd
// checks NotifyAccess=main against it.
type systemdNotify struct {
	path string
	mu   sync.Mutex
	msgs []string // "PID: MESSAGE"
}

func newSystemdNotify(t *testing.T, dir string) *systemdNotify {
	n := &systemdNotify{path: filepath.Join(dir, "notify.sock")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := c.SyscallConn()
	raw.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1) })
	done := make(chan struct{})
	go func() { // ends when c is closed at cleanup
		defer close(done)
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			k, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			pid := -1
			if cmsgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil && len(cmsgs) > 0 {
				if cred, err := syscall.ParseUnixCredentials(&cmsgs[0]); err == nil {
					pid = int(cred.Pid)
				}
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, fmt.Sprintf("%d: %s", pid, buf[:k]))
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return n
}

func (n *systemdNotify) messages() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

func newUpgradeSite(t *testing.T, agentsN int) (*upgradeSite, []*upgradeAgent) {
	t.Helper()
	s := &upgradeSite{dir: t.TempDir(), firstDone: make(chan struct{})}
	centralPEM := filepath.Join(s.dir, "central.pem")
	if r := dpgate(t, nil, "cert", "gen", "--cn", "central", "--out", centralPEM); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	s.centralPin = strings.TrimSpace(dpgate(t, nil, "cert", "pin", centralPEM).Stdout)
	s.centralAddr, _ = startCentral(t, centralPEM)
	s.proxyAddr, s.pushAddr = testutil.FreePort(t), testutil.FreePort(t)
	s.cfg = writeConfig(t, s.dir, testutil.FreePort(t), s.proxyConfig(""))
	s.binPath = filepath.Join(s.dir, "dpgate")
	copyFile(t, bin, s.binPath)
	s.logFile = filepath.Join(s.dir, "serve.log")
	logf, err := os.Create(s.logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// The log is a file, not a pipe: the new process inherits it and
	// writes on after the first one exits.
	s.notify = newSystemdNotify(t, s.dir)
	s.first = exec.Command(s.binPath, "serve", "-c", s.cfg)
	s.first.Stdout, s.first.Stderr = logf, logf
	s.first.Env = append(os.Environ(), "NOTIFY_SOCKET="+s.notify.path)
	if err := s.first.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		var ee *exec.ExitError
		if err := s.first.Wait(); errors.As(err, &ee) {
			s.firstCode = ee.ExitCode()
		}
		close(s.firstDone)
	}()
	t.Cleanup(func() {
		// Whichever process serves now, and the first one.
		if st, err := s.status(); err == nil && st.PID != s.first.Process.Pid {
			syscall.Kill(st.PID, syscall.SIGKILL)
		}
		s.first.Process.Kill()
		<-s.firstDone
		if t.Failed() {
			b, _ := os.ReadFile(s.logFile)
			t.Logf("dpgate serve log:\n%s", b)
		}
	})
	s.WaitLog(t, `msg="push server listening"`)
	pin := e2e.GatewayPin(t, bin, s.dir)
	pins, _ := tlsconf.ParsePins([]string{pin})
	s.pin, s.gwTLS = pin, tlsconf.PinnedClientConfig(pins, "gateway")

	var agents []*upgradeAgent
	for i := range agentsN { // every other one over QUIC
		agents = append(agents, s.startAgent(t, fmt.Sprintf("agent-%d", i), i%2 == 1))
	}
	waitFor(t, 60*time.Second, func() error { return s.sessions(agentsN) })
	return s, agents
}

// proxyConfig is the site's configuration; extra goes into the proxy's
// first upstream.
func (s *upgradeSite) proxyConfig(extra string) string {
	// source_rate off: every probe comes from 127.0.0.1, faster than the
	// default 20 new connections per second from one address.
	return fmt.Sprintf(`proxy:
  listen: %s
  source_rate: -1
  upstreams:
    - address: %s
      pins: [%q]
%spush:
  listen: %s
  auth: none
`, s.proxyAddr, s.centralAddr, s.centralPin, extra, s.pushAddr)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	// A new file renamed into place, as package managers install. No
	// fork while it is open for writing: a child another test forks
	// meanwhile would hold it open until its exec, and running the binary
	// then fails with "text file busy" (golang.org/issue/22315; seen
	// once in CI).
	syscall.ForkLock.RLock()
	err = os.WriteFile(to+".new", b, 0o755)
	syscall.ForkLock.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".new", to); err != nil {
		t.Fatal(err)
	}
}

func (s *upgradeSite) Log() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

func (s *upgradeSite) WaitLog(t *testing.T, re string) {
	t.Helper()
	rx := regexp.MustCompile(re)
	waitFor(t, 30*time.Second, func() error {
		if !rx.MatchString(s.Log()) {
			return fmt.Errorf("no log line matching %q yet", re)
		}
		return nil
	})
}

func (s *upgradeSite) status() (gateway.Status, error) {
	var st gateway.Status
	api, _, err := adminClient(s.cfg)
	if err != nil {
		return st, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return st, api.Do(ctx, "GET", "/v1/status", nil, &st)
}

// sessions is nil once the serving process holds n push sessions.
func (s *upgradeSite) sessions(n int) error {
	st, err := s.status()
	if err != nil {
		return err
	}
	if st.Push == nil || st.Push.Sessions != n {
		return fmt.Errorf("pid %d holds %+v push sessions, want %d", st.PID, st.Push, n)
	}
	return nil
}

// push publishes data to device through the admin API: the reply's id,
// or an error when it was not accepted.
func (s *upgradeSite) push(device, data string) (string, error) {
	api, _, err := adminClient(s.cfg)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var reply gateway.PushReply
	err = api.Do(ctx, "POST", "/v1/devices/"+device+"/push", gateway.PushRequest{Data: &data}, &reply)
	return reply.ID, err
}

// upgradeAgent is a push agent that records what it got and whether its
// session was ever interrupted.
type upgradeAgent struct {
	id    string
	mu    sync.Mutex
	got   map[string]bool // payloads received
	drops int             // sessions ended (drain, error, disconnect)
}

func (a *upgradeAgent) has(data string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.got[data]
}

func (a *upgradeAgent) dropped() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.drops
}

func (s *upgradeSite) startAgent(t *testing.T, id string, quic bool) *upgradeAgent {
	a := &upgradeAgent{id: id, got: map[string]bool{}}
	c, err := client.New(client.Config{Servers: []string{s.pushAddr}, DeviceID: id, TLS: s.gwTLS.Clone(), QUIC: quic,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, Logger: testutil.Quiet(),
		OnPush: func(m wire.Message) {
			a.mu.Lock()
			a.got[string(m.Payload)] = true
			a.mu.Unlock()
		},
		OnEvent: func(e client.Event) {
			if e.Kind == "drain" || e.Kind == "disconnected" || e.Kind == "error" {
				a.mu.Lock()
				a.drops++
				a.mu.Unlock()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }() // ends at cleanup
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// upgrade runs "dpgate upgrade" and returns its exit code and output.
func (s *upgradeSite) upgrade(t *testing.T) result {
	t.Helper()
	return dpgate(t, nil, "upgrade", "-c", s.cfg)
}

// relay streams n pseudo-random bytes through the proxy to the central
// server's sink, which answers with the count and SHA-256 of what
// arrived; sent counts the bytes written so far. Having written half, it
// waits until resume is closed. It reports whether what arrived is what
// went.
// relay starts a relay of n bytes through the proxy to the central
// server's sink (testdata/central's send, built without the race
// detector) and waits until half is sent; the rest goes when resume is
// called, and wait returns its error: nil when the sink got the bytes
// sent, counted and hashed alike.
func (s *upgradeSite) relay(t *testing.T, n int64) (resume func(), wait func() error) {
	t.Helper()
	cmd := exec.Command(centralBin, "send", s.proxyAddr, s.pin, fmt.Sprint(n))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	out := bufio.NewReader(stdout)
	stuck := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() }) // the first half, bounded
	line, err := out.ReadString('\n')
	stuck.Stop()
	if line != fmt.Sprintf("sent %d\n", n/2) {
		t.Fatalf("relay: %q %v, want the first half sent within a minute; stderr: %s", line, err, stderr.String())
	}
	resume = func() { io.WriteString(stdin, "go on\n") }
	wait = func() error {
		rest, _ := io.ReadAll(out)
		if err := cmd.Wait(); err != nil || string(rest) != fmt.Sprintf("relayed %d\n", n) {
			return fmt.Errorf("%v: %s%s", err, rest, stderr.String())
		}
		return nil
	}
	return resume, wait
}

// prober opens new connections to every port a client uses, one after
// another, until stopped, and counts those that failed.
type prober struct {
	attempts, failures atomic.Int64
	maxWait            atomic.Int64 // nanoseconds, the slowest successful round
	mu                 sync.Mutex
	errs               []string
}

func (p *prober) fail(what string, err error) {
	p.failures.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.errs) < 10 {
		p.errs = append(p.errs, what+": "+err.Error())
	}
}

// run probes until ctx ends: a TLS echo through the proxy, a TLS
// handshake on the push port, GET /healthz on the admin API.
func (p *prober) run(ctx context.Context, s *upgradeSite, adminBase string) {
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for ctx.Err() == nil {
		start := time.Now()
		p.attempts.Add(1)
		ok := true
		if got, err := echoOnce(s.proxyAddr, s.gwTLS.Clone()); err != nil || got != "probe" {
			p.fail("proxy", fmt.Errorf("%q, %v", got, err))
			ok = false
		}
		if c, err := tls.DialWithDialer(&net.Dialer{Timeout: 20 * time.Second}, "tcp", s.pushAddr, s.gwTLS.Clone()); err != nil {
			p.fail("push", err)
			ok = false
		} else {
			c.Close()
		}
		if resp, err := hc.Get(adminBase + "/healthz"); err != nil {
			p.fail("admin", err)
			ok = false
		} else {
			resp.Body.Close()
		}
		if d := time.Since(start); ok && int64(d) > p.maxWait.Load() {
			p.maxWait.Store(int64(d))
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func echoOnce(addr string, cfg *tls.Config) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 20 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "probe")
	c.CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestUpgradeDropsNothing replaces a running gateway by a new copy of
// the binary (a new file in its place) with "dpgate upgrade" while a
// 1 GiB relay runs through it, 20 agents hold push sessions (10 over
// TLS, 10 over QUIC), pushes are
// published and new connections are opened to the proxy, push and admin
// ports without pause: no connection attempt fails, the relay through the
// old process completes byte-exact, the agents move to the new process,
// every accepted push arrives, and the old process exits once its relay
// is done.
func TestUpgradeDropsNothing(t *testing.T) {
	// Real processes that mostly wait: side by side with the other long ones.
	t.Parallel()
	const agentsN = 20
	const relayBytes = 1 << 30
	s, agents := newUpgradeSite(t, agentsN)
	before, err := s.status()
	if err != nil {
		t.Fatal(err)
	}
	// The relay stops writing halfway until the upgrade is done, so it
	// spans the handover however fast the machine is.
	resume, relayDone := s.relay(t, relayBytes)

	// New connections on every port and pushes to every agent, from
	// before the upgrade until after it.
	api, _, _ := adminClient(s.cfg)
	probeCtx, stopProbes := context.WithCancel(context.Background())
	var p prober
	var probing, publishing sync.WaitGroup
	probing.Add(1)
	go func() { defer probing.Done(); p.run(probeCtx, s, api.Base()) }()
	var accepted sync.Map // payload -> agent
	var refused atomic.Int64
	publishing.Add(1)
	go func() { // ends when the probes stop
		defer publishing.Done()
		for i := 0; probeCtx.Err() == nil; i++ {
			a := agents[i%agentsN]
			data := fmt.Sprintf("during-upgrade-%d", i)
			if _, err := s.push(a.id, data); err != nil {
				refused.Add(1)
			} else {
				accepted.Store(data, a)
			}
			time.Sleep(5 * time.Millisecond) // pacing the publisher, not waiting for anything
		}
	}()
	waitFor(t, 20*time.Second, func() error {
		if p.attempts.Load() < 5 {
			return errors.New("probes not started yet")
		}
		return nil
	})

	// The new version: a new file put in the binary's place, as a package
	// manager installs one (the same build: which file a process runs is
	// told by its inode, without linking a second binary).
	copyFile(t, bin, s.binPath)
	var installed syscall.Stat_t
	if err := syscall.Stat(s.binPath, &installed); err != nil {
		t.Fatal(err)
	}
	r := s.upgrade(t)
	if r.Code != 0 {
		t.Fatalf("dpgate upgrade: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	t.Logf("dpgate upgrade: %s", strings.TrimSpace(r.Stdout))
	after, err := s.status()
	if err != nil {
		t.Fatal(err)
	}
	var running syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/exe", after.PID), &running); err != nil {
		t.Fatal(err)
	}
	if after.PID == before.PID || running.Dev != installed.Dev || running.Ino != installed.Ino {
		t.Fatalf("after the upgrade pid %d serves, running inode %d, want a new pid (was %d) running the new file (inode %d)", after.PID, running.Ino, before.PID, installed.Ino)
	}
	resume() // the second half of the relay, after the handover
	waitFor(t, 60*time.Second, func() error { return s.sessions(agentsN) })
	atUpgrade := p.attempts.Load()
	waitFor(t, 30*time.Second, func() error { // a few more rounds against the new process
		if p.attempts.Load() < atUpgrade+5 {
			return errors.New("probing the new process")
		}
		return nil
	})
	stopProbes()
	probing.Wait()
	publishing.Wait()

	// systemd heard READY from the first process, then from it (still the
	// main process, as NotifyAccess=main wants) the new MAINPID.
	waitFor(t, 20*time.Second, func() error {
		want := []string{fmt.Sprintf("%d: READY=1", before.PID), fmt.Sprintf("%d: MAINPID=%d", before.PID, after.PID)}
		if got := s.notify.messages(); !slices.Equal(got, want) {
			return fmt.Errorf("systemd got %q, want %q", got, want)
		}
		return nil
	})
	if f := p.failures.Load(); f != 0 {
		t.Errorf("%d of %d connection rounds failed during the upgrade, want 0: %v", f, p.attempts.Load(), p.errs)
	}
	t.Logf("%d connection rounds (proxy echo, push TLS handshake, admin GET), slowest %v", p.attempts.Load(), time.Duration(p.maxWait.Load()))
	n := 0
	accepted.Range(func(k, v any) bool { n++; return true })
	if n == 0 {
		t.Fatal("no push accepted while upgrading")
	}
	waitFor(t, 60*time.Second, func() error {
		missing := 0
		accepted.Range(func(k, v any) bool {
			if !v.(*upgradeAgent).has(k.(string)) {
				missing++
			}
			return true
		})
		if missing > 0 {
			return fmt.Errorf("%d of %d accepted pushes not delivered yet", missing, n)
		}
		return nil
	})
	t.Logf("%d pushes accepted during the upgrade, all delivered; %d refused", n, refused.Load())

	if err := relayDone(); err != nil { // an old process that quit early cut it
		t.Fatalf("1 GiB relay through the old process: %v", err)
	}
	select {
	case <-s.firstDone:
	case <-time.After(30 * time.Second):
		t.Fatal("the old process did not exit within 30s of its last relay ending")
	}
	if s.firstCode != 0 {
		t.Errorf("the old process exited with %d, want 0", s.firstCode)
	}
	final, err := s.status()
	if err != nil {
		t.Fatal(err)
	}
	var relays uint64
	if final.Proxy != nil {
		for _, u := range final.Proxy.Upstreams {
			relays += u.Relays
		}
	}
	if relays == 0 {
		t.Errorf("the new process relayed nothing, want the probes' relays after the upgrade")
	}
}

// TestUpgradeFailureKeepsServing: a new process that cannot start leaves
// the old one serving. With a configuration error it fails before asking
// for the store, and no agent notices; with an upstream client
// certificate that does not exist it fails after the handover, and the
// old process opens the store again and serves on its sockets: agents
// reconnect to it and pushes queued before are delivered.
func TestUpgradeFailureKeepsServing(t *testing.T) {
	// Real processes that mostly wait: side by side with the other long ones.
	t.Parallel()
	const agentsN = 5
	s, agents := newUpgradeSite(t, agentsN)
	before, err := s.status()
	if err != nil {
		t.Fatal(err)
	}
	cfgText, err := os.ReadFile(s.cfg)
	if err != nil {
		t.Fatal(err)
	}

	// Before the store: an unknown key. (The CLI would refuse that file
	// itself, so the request goes to the API, as a script could send it.)
	api, _, err := adminClient(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.cfg, append(bytes.Clone(cfgText), "no_such_key: 1\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	asked := time.Now().UTC()
	if err := api.Do(context.Background(), "POST", "/v1/upgrade", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() error {
		var st gateway.Status
		if err := api.Do(context.Background(), "GET", "/v1/status", nil, &st); err != nil {
			return err
		}
		if st.PID != before.PID {
			t.Fatalf("pid %d serves after an upgrade to a bad configuration, want the old %d", st.PID, before.PID)
		}
		if st.Upgrade == nil || st.Upgrade.State != "failed" || st.Upgrade.At.Before(asked) {
			return fmt.Errorf("upgrade state %+v, want failed", st.Upgrade)
		}
		if !strings.Contains(st.Upgrade.Error, "exited") {
			t.Errorf("upgrade error %q, want the new process's exit", st.Upgrade.Error)
		}
		return nil
	})
	s.WaitLog(t, `no_such_key`)
	for _, a := range agents {
		if d := a.dropped(); d != 0 {
			t.Errorf("%s lost its session %d times during an upgrade that failed before the handover, want 0", a.id, d)
		}
	}

	// After the handover: the proxy's client certificate is missing.
	if err := os.WriteFile(s.cfg, []byte(strings.Replace(string(cfgText), s.proxyConfig(""),
		s.proxyConfig("      client_cert: "+filepath.Join(s.dir, "missing.pfx")+"\n"), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.push("offline-device", "queued before"); err != nil {
		t.Fatal(err)
	}
	r := s.upgrade(t)
	if r.Code != 1 || !strings.Contains(r.Stderr, "after taking over") {
		t.Fatalf("upgrade failing after the handover: exit %d, stderr %q; want 1 and \"after taking over\"", r.Code, r.Stderr)
	}
	s.WaitLog(t, `serving again from this process`)
	waitFor(t, 60*time.Second, func() error { return s.sessions(agentsN) })
	st, err := s.status()
	if err != nil || st.PID != before.PID {
		t.Fatalf("after a failed upgrade pid %d serves (%v), want the old %d", st.PID, err, before.PID)
	}
	for _, a := range agents {
		data := "after the failed upgrade " + a.id
		if _, err := s.push(a.id, data); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, func() error {
			if !a.has(data) {
				return fmt.Errorf("%s did not get %q", a.id, data)
			}
			return nil
		})
	}
	late := s.startAgent(t, "offline-device", false)
	waitFor(t, 30*time.Second, func() error {
		if !late.has("queued before") {
			return errors.New("the push queued before the failed upgrade was not delivered")
		}
		return nil
	})
	if got, err := echoOnce(s.proxyAddr, s.gwTLS.Clone()); err != nil || got != "probe" {
		t.Errorf("proxy after the failed upgrade: %q, %v", got, err)
	}
}
