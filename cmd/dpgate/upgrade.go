package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudflare/tableflip"

	"github.com/dpgate/dpgate/internal/gateway"
)

// An upgrade replaces the running process with a new one (a new binary,
// a changed configuration) without closing a listening socket, the way
// HAProxy's seamless reload and nginx's binary upgrade do:
//
//  1. The old process starts the new one (cloudflare/tableflip), which
//     inherits every listening socket and a handover socket.
//  2. The new one loads its configuration, certificate and admin token,
//     then asks for the store: "take PID\n". Until then nothing has
//     changed, so a new process that fails here (a bad configuration)
//     costs nothing; the old one goes on serving.
//  3. The old one hands over (gateway.Handover): stops accepting, tells
//     its push agents to reconnect, finishes admin requests, stops
//     gossiping without leaving the cluster, closes the store; then
//     answers "go\n". Connections arriving meanwhile wait in the kernel's
//     listen backlog of the shared sockets: none is refused.
//  4. The new one opens the store, serves, and tells tableflip it is
//     ready; the old one then tells systemd the new main PID and keeps
//     relaying the proxy connections it holds (up to --upgrade-drain)
//     before it exits.
//
// Should the new process die after step 3, the old one opens the store
// again and serves on its copies of the sockets: the upgrade failed, the
// service did not.

// handoverName is the name under which the old process passes the
// handover socket to the new one.
const handoverName = "dpgate-handover"

// upgradeTimeout bounds how long the new process may take to become
// ready (it is killed then), and how long it waits for the store.
const upgradeTimeout = 2 * time.Minute

// upgrader holds the sockets an upgrade passes on, on systems that can
// (tableflip: Unix). A nil *upgrader is a process that cannot upgrade.
type upgrader struct {
	tf  *tableflip.Upgrader
	log *slog.Logger

	mu    sync.Mutex
	kept  map[[2]string]*os.File // copies of the listening sockets, to serve again after a failed upgrade
	runOn chan struct{}          // an upgrade was asked for (POST /v1/upgrade, SIGUSR2); buffered 1
}

func newUpgrader(pidFile string, log *slog.Logger) (*upgrader, error) {
	tf, err := tableflip.New(tableflip.Options{UpgradeTimeout: upgradeTimeout, PIDFile: pidFile})
	if errors.Is(err, tableflip.ErrNotSupported) {
		log.Warn("upgrades without downtime are not supported on this system; restart to upgrade")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	return &upgrader{tf: tf, log: log, kept: map[[2]string]*os.File{}, runOn: make(chan struct{}, 1)}, nil
}

// request asks the serve loop for an upgrade; it does not wait for it.
func (u *upgrader) request() error {
	if u == nil {
		return errors.New("upgrades without downtime are not supported on this system")
	}
	select {
	case u.runOn <- struct{}{}:
		return nil
	default:
		return errors.New("an upgrade is already waiting to run")
	}
}

// requests is where the serve loop hears of upgrade requests.
func (u *upgrader) requests() <-chan struct{} {
	if u == nil {
		return nil
	}
	return u.runOn
}

// hasParent says whether this process is the new one of an upgrade.
func (u *upgrader) hasParent() bool { return u != nil && u.tf.HasParent() }

// sockets is where this process gets its listening sockets: inherited
// from the old process of an upgrade, or opened anew.
func (u *upgrader) sockets() gateway.Sockets {
	if u == nil {
		return nil
	}
	return keepingSockets{u}
}

// keepingSockets gets sockets from tableflip and keeps a copy of each.
type keepingSockets struct{ u *upgrader }

func (k keepingSockets) ListenWithCallback(network, addr string, open func(string, string) (net.Listener, error)) (net.Listener, error) {
	ln, err := k.u.tf.ListenWithCallback(network, addr, open)
	if err == nil {
		err = k.u.keep(network, addr, ln)
	}
	return ln, err
}

func (k keepingSockets) ListenPacketWithCallback(network, addr string, open func(string, string) (net.PacketConn, error)) (net.PacketConn, error) {
	pc, err := k.u.tf.ListenPacketWithCallback(network, addr, open)
	if err == nil {
		err = k.u.keep(network, addr, pc)
	}
	return pc, err
}

func (u *upgrader) keep(network, addr string, c any) error {
	f, ok := c.(interface{ File() (*os.File, error) })
	if !ok {
		return fmt.Errorf("upgrade: cannot keep a copy of a %T", c)
	}
	dup, err := f.File()
	if err != nil {
		return fmt.Errorf("upgrade: keeping %s %s: %w", network, addr, err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if old := u.kept[[2]string{network, addr}]; old != nil {
		old.Close()
	}
	u.kept[[2]string{network, addr}] = dup
	return nil
}

// keptSockets serves the kept copies again, after a failed upgrade.
type keptSockets struct{ u *upgrader }

func (k keptSockets) file(network, addr string) *os.File {
	k.u.mu.Lock()
	defer k.u.mu.Unlock()
	return k.u.kept[[2]string{network, addr}]
}

func (k keptSockets) ListenWithCallback(network, addr string, open func(string, string) (net.Listener, error)) (net.Listener, error) {
	if f := k.file(network, addr); f != nil {
		return net.FileListener(f)
	}
	return open(network, addr)
}

func (k keptSockets) ListenPacketWithCallback(network, addr string, open func(string, string) (net.PacketConn, error)) (net.PacketConn, error) {
	if f := k.file(network, addr); f != nil {
		return net.FilePacketConn(f)
	}
	return open(network, addr)
}

// ready tells tableflip (and through it the old process) that this one
// serves.
func (u *upgrader) ready() error {
	if u == nil {
		return nil
	}
	return u.tf.Ready()
}

// stop ends the upgrader when the process shuts down for good.
func (u *upgrader) stop() {
	if u != nil {
		u.tf.Stop()
	}
}

// takeOver is the new process's side of the handover: it asks for the
// store and waits until the old process has closed it. Run as
// gateway.Options.BeforeStore.
func (u *upgrader) takeOver() error {
	f, err := u.tf.File(handoverName)
	if err != nil || f == nil {
		return fmt.Errorf("upgrade: no handover socket from the old process (%v)", err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "take %d\n", os.Getpid()); err != nil {
		return fmt.Errorf("upgrade: asking for the store: %w", err)
	}
	u.log.Info("upgrade: asked the old process for the store")
	line, err := readLine(f, upgradeTimeout)
	switch {
	case line == "go":
		return nil
	case errors.Is(err, io.EOF):
		// The old process is gone (or gave up): the store's lock tells.
		u.log.Warn("upgrade: the old process closed the handover without an answer; trying the store")
		return nil
	case err != nil:
		return fmt.Errorf("upgrade: waiting for the store: %w", err)
	default:
		return fmt.Errorf("upgrade: the old process answered %q", line)
	}
}

// readLine reads one line from f within d.
func readLine(f *os.File, d time.Duration) (string, error) {
	f.SetReadDeadline(time.Now().Add(d)) // a socket: deadlines work
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// upgradeResult is how an upgrade ended for the old process.
type upgradeResult struct {
	handedOver bool  // the store was given up: gw no longer serves
	newPID     int   // the new process, when it asked for the store
	err        error // nil: the new process serves
}

// run starts the new process and hands gw over to it when it asks; push
// agents reconnect between after and after+spread from the handover.
func (u *upgrader) run(gw *gateway.Gateway, after, spread time.Duration) upgradeResult {
	ours, theirs, err := socketPair()
	if err != nil {
		return upgradeResult{err: fmt.Errorf("upgrade: handover socket: %w", err)}
	}
	err = u.tf.AddFile(handoverName, theirs) // tableflip keeps a copy for the child
	theirs.Close()
	if err != nil {
		ours.Close()
		return upgradeResult{err: fmt.Errorf("upgrade: %w", err)}
	}
	done := make(chan error, 1)
	go func() { done <- u.tf.Upgrade() }() // ends when the child is ready, exits or times out; every path below receives it
	asked := make(chan string, 1)
	read := make(chan struct{})
	go func() { // ends at the child's line, or when ours is closed (deferred below)
		defer close(read)
		line, _ := readLine(ours, upgradeTimeout+time.Minute)
		asked <- line
	}()
	defer func() { ours.Close(); <-read }()
	u.log.Info("upgrade: starting the new process")
	var line string
	select {
	case err := <-done:
		if err == nil {
			err = errors.New("the new process became ready without taking the store")
		}
		return upgradeResult{err: fmt.Errorf("upgrade: %w", err)}
	case line = <-asked:
	}
	p, ok := strings.CutPrefix(line, "take ")
	newPID, perr := strconv.Atoi(p)
	if !ok || perr != nil {
		err := <-done // it will not become ready without the store: wait for tableflip's verdict
		return upgradeResult{err: fmt.Errorf("upgrade: the new process said %q, then: %v", line, err)}
	}
	u.log.Info("upgrade: handing over to the new process", "new_pid", newPID, "agents_reconnect_after", after.String(), "within", spread.String())
	ctx, cancel := context.WithTimeout(context.Background(), after+spread+5*time.Second)
	herr := gw.Handover(ctx, after, spread)
	cancel()
	if herr != nil {
		u.log.Warn("upgrade: handover did not finish cleanly", "err", herr)
	}
	fmt.Fprintf(ours, "go\n")
	if err := <-done; err != nil {
		return upgradeResult{handedOver: true, newPID: newPID, err: fmt.Errorf("upgrade: the new process (pid %d) failed after taking over: %w", newPID, err)}
	}
	return upgradeResult{handedOver: true, newPID: newPID}
}
