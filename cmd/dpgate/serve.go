package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/internal/sdnotify"
	"github.com/dpgate/dpgate/tlsconf"
)

const serveAbout = `
Runs the gateway. Without -c it runs on built-in defaults: admin API on
127.0.0.1:13290, a certificate generated into the data directory on first
start (its pin is logged), and the proxy off until an upstream is configured.

Signals: SIGINT/SIGTERM shut down gracefully (a second one stops at once),
SIGHUP reloads certificates, the allow-list and token keys, SIGUSR2 upgrades
(as "dpgate upgrade" does: a new process from the binary now at this path,
with the configuration file as it is now, takes over every listening socket;
this one finishes its proxy relays, then exits), SIGUSR1 dumps metrics to
standard error. Under systemd (Type=notify) it reports READY, STOPPING and,
after an upgrade, the new MAINPID.`

func runServe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", "[-c FILE]", serveAbout, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE` (default: built-in defaults)")
	grace := fs.Duration("shutdown-timeout", 10*time.Second, "how long a graceful shutdown may drain connections")
	upgradeDrain := fs.Duration("upgrade-drain", 15*time.Minute, "after an upgrade, how long the old process may go on relaying the proxy connections it holds")
	pidFile := fs.String("pid-file", "", "write the process id to `FILE` once serving, and the new one's after an upgrade")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgFile)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	slog.SetDefault(log)

	up, err := newUpgrader(*pidFile, log)
	if err != nil {
		return err
	}
	opts := gateway.Options{Logger: log, GlobalMetrics: true, Upgrade: up.request, LogLevel: &logLevel}
	if up.hasParent() {
		opts.BeforeStore = up.takeOver
	}
	gw, err := serveGateway(cfg, opts, up.sockets())
	if err != nil {
		up.stop()
		return err
	}
	if err := up.ready(); err != nil {
		log.Warn("upgrade: telling the old process we serve failed", "err", err)
	}
	if !up.hasParent() { // after an upgrade, the old process names us to systemd
		sdNotify(log, "READY=1")
	}

	sigs := make(chan os.Signal, 2)
	notify(sigs, os.Interrupt, syscall.SIGTERM, reloadSignal, upgradeSignal)
	defer signal.Stop(sigs)
	// The Windows service manager's stop is a SIGTERM here.
	defer context.AfterFunc(stopCtx, func() {
		select {
		case sigs <- syscall.SIGTERM:
		default:
		}
	})()
	// SIGUSR1 writes every metric to standard error (the journal).
	dumps := make(chan os.Signal, 1)
	notify(dumps, dumpSignal)
	defer signal.Stop(dumps)

	// systemd's watchdog (WatchdogSec=): fed while the gateway answers
	// inside (Gateway.Live), so a node stuck on a lock is restarted.
	var watchdog <-chan time.Time
	wdInterval, wdOn := sdnotify.WatchdogInterval(up.hasParent())
	if wdOn {
		t := time.NewTicker(wdInterval / 2)
		defer t.Stop()
		watchdog = t.C
		log.Info("systemd watchdog on", "interval", wdInterval.String())
	}

	var retired []*gateway.Gateway // handed over, relaying, after a failed upgrade
	for {
		select {
		case <-watchdog:
			ctx, cancel := context.WithTimeout(context.Background(), wdInterval/4)
			err := gw.Live(ctx)
			cancel()
			if err != nil {
				log.Error("not telling systemd's watchdog we live: the gateway does not answer inside", "err", err)
				continue
			}
			sdNotify(log, "WATCHDOG=1")
		case err := <-gw.Done():
			log.Error("stopping after a fatal error", "err", err)
			gw.Close()
			for _, old := range retired {
				old.Close()
			}
			up.stop()
			return err
		case <-up.requests():
			// Agents come back from 1 to 3 s after the handover began:
			// with 10,000 of them the old process takes 2-3 s to see them
			// all go, and the new one serves about 0.15 s after that.
			r := up.run(gw, time.Second, 2*time.Second)
			switch {
			case r.err == nil:
				log.Info("upgrade: the new process serves; finishing proxy relays", "new_pid", r.newPID, "within", upgradeDrain.String())
				sdNotify(log, fmt.Sprintf("MAINPID=%d", r.newPID))
				return finish(log, sigs, *upgradeDrain, append(retired, gw)...)
			case !r.handedOver:
				log.Error("upgrade failed; this process goes on serving", "err", r.err)
				gw.SetUpgrade(gateway.UpgradeStatus{State: "failed", Error: r.err.Error(), At: time.Now().UTC()})
			default:
				log.Error("upgrade failed after the handover; serving again from this process", "err", r.err)
				opts.BeforeStore = nil
				again, err := serveGateway(cfg, opts, keptSockets{up})
				if err != nil {
					log.Error("serving again failed", "err", err)
					return errors.Join(r.err, err, finish(log, sigs, *grace, append(retired, gw)...))
				}
				retired, gw = append(retired, gw), again
				gw.SetUpgrade(gateway.UpgradeStatus{State: "failed", Error: r.err.Error(), At: time.Now().UTC()})
			}
		case <-dumps:
			if err := gw.Telemetry().WriteText(stderr); err != nil {
				log.Warn("metrics dump", "err", err)
			}
		case s := <-sigs:
			switch s {
			case reloadSignal:
				gw.Reload() // logs its own outcome; a failed reload keeps running
				continue
			case upgradeSignal:
				if err := up.request(); err != nil {
					log.Warn("upgrade not started", "err", err)
				}
				continue
			}
			log.Info("shutting down", "signal", s.String(), "timeout", grace.String())
			sdNotify(log, "STOPPING=1")
			up.stop()
			return finish(log, sigs, *grace, append(retired, gw)...)
		}
	}
}

// serveGateway builds a gateway and serves it on sockets from socks (nil:
// opened anew).
func serveGateway(cfg *config.Config, opts gateway.Options, socks gateway.Sockets) (*gateway.Gateway, error) {
	var ls gateway.Listeners
	var err error
	if socks == nil {
		ls, err = gateway.Listen(cfg)
	} else {
		ls, err = gateway.ListenFrom(cfg, socks)
	}
	if err != nil {
		return nil, err
	}
	gw, err := gateway.New(cfg, ls, opts) // closes ls on an error
	if err != nil {
		return nil, err
	}
	gw.Start()
	return gw, nil
}

// finish shuts the gateways down gracefully within timeout (a fresh
// context: the signal already ended the old one's purpose); a signal
// meanwhile stops them at once.
func finish(log *slog.Logger, sigs <-chan os.Signal, timeout time.Duration, gws ...*gateway.Gateway) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, len(gws))
	for _, gw := range gws {
		go func() { done <- gw.Shutdown(ctx) }() // ends at ctx's deadline at the latest
	}
	var errs []error
	for range gws {
		select {
		case err := <-done:
			errs = append(errs, err)
			continue
		case s := <-sigs:
			log.Warn("signal: stopping at once", "signal", s.String())
			cancel()
		}
		errs = append(errs, <-done)
	}
	if err := errors.Join(errs...); err != nil {
		log.Warn("shutdown did not drain cleanly", "err", err)
	}
	log.Info("stopped")
	return nil
}

// sdNotify tells systemd (Type=notify) about the service's state.
func sdNotify(log *slog.Logger, state string) {
	if _, err := sdnotify.Notify(state); err != nil {
		log.Warn("telling systemd failed", "state", state, "err", err)
	}
}

// loadConfig reads the file, or the built-in defaults for "". Every
// problem is a usage error (exit 2).
func loadConfig(file string) (*config.Config, error) {
	var cfg *config.Config
	var err error
	if file == "" {
		cfg = config.Default()
		err = cfg.Validate()
	} else {
		cfg, err = config.Load(file)
	}
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

// adminClient is a client of the running gateway's admin API, as the
// configuration file (or the defaults) says where it listens and which
// token it wants, its requests bounded by apiTimeout.
func adminClient(file string) (*admin.Client, *config.Config, error) {
	c, cfg, err := adminClientOf(file)
	if err != nil {
		return nil, nil, err
	}
	d, err := apiTimeout()
	if err != nil {
		return nil, nil, err
	}
	c.SetTimeout(d)
	return c, cfg, nil
}

// defaultAPITimeout bounds a CLI request to a gateway that answers at
// once: one stopped with SIGSTOP, hung or swamped accepts the connection
// and says nothing, and the command would wait on it.
const defaultAPITimeout = 30 * time.Second

// apiTimeout is DPGATE_TIMEOUT (a Go duration), or defaultAPITimeout.
// Commands that wait on purpose (push --wait, upgrade, store check) add
// their own wait to it.
func apiTimeout() (time.Duration, error) {
	s := os.Getenv("DPGATE_TIMEOUT")
	if s == "" {
		return defaultAPITimeout, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, usagef("DPGATE_TIMEOUT=%q is not a positive Go duration (e.g. 30s)", s)
	}
	return d, nil
}

// adminClientOf is adminClient without the bound.
func adminClientOf(file string) (*admin.Client, *config.Config, error) {
	cfg, err := loadConfig(file)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Admin.Socket != "" { // no token needed, when this user may connect to it
		if c, err := admin.NewSocketClient(cfg.Admin.Socket, os.Getenv("DPGATE_TOKEN")); err == nil {
			return c, cfg, nil
		}
	}
	token, err := cliToken(cfg)
	if err != nil {
		return nil, nil, err
	}
	addr := cfg.Admin.Listen
	if env := os.Getenv("DPGATE_ADDR"); env != "" { // as CONSUL_HTTP_ADDR: another node, or another port
		addr = env
	}
	c := admin.NewClient(addr, token)
	if !config.IsLoopback(addr) {
		// The gateway serves the API over TLS off loopback: pin its
		// certificate, read from where the gateway reads it.
		certFile := cfg.TLS.Cert
		if certFile == "" {
			certFile = cfg.InDataDir(gateway.CertFile)
		}
		data, err := os.ReadFile(certFile)
		var certs []*x509.Certificate
		if err == nil {
			certs, err = tlsconf.ParseCertificatesPEM(data)
		}
		if err != nil || len(certs) == 0 {
			return nil, nil, fmt.Errorf("the admin API at %s is served over TLS (not loopback); reading the gateway's certificate to pin it: %v", addr, err)
		}
		pins, err := tlsconf.ParsePins([]string{tlsconf.Pin(certs[0])})
		if err != nil {
			return nil, nil, err
		}
		c.WithTLS(tlsconf.PinnedClientConfig(pins, cfg.Node.Name))
	}
	return c, cfg, nil
}

// cliToken is the admin token the CLI sends: DPGATE_TOKEN, else the file
// the gateway reads (admin.token_file, or data_dir/admin.token), so the
// operator running the CLI as the service user needs no flag. A default
// token file not created yet means no gateway has started here; the
// request then fails as unreachable or unauthorized, and commands that
// can work offline do.
func cliToken(cfg *config.Config) (string, error) {
	if t := os.Getenv("DPGATE_TOKEN"); t != "" {
		return t, nil
	}
	file, generated := cfg.AdminTokenFile()
	token, err := tlsconf.ReadSecretFile(file)
	switch {
	case err == nil:
		return token, nil
	case generated && errors.Is(err, os.ErrNotExist):
		return "", nil
	case errors.Is(err, os.ErrPermission):
		return "", fmt.Errorf("reading the admin token: %w (run as the user dpgate runs as, or set DPGATE_TOKEN)", err)
	default:
		return "", fmt.Errorf("reading the admin token: %w", err)
	}
}

// logLevel is the level of the logger newLogger made: a reload changes it.
var logLevel slog.LevelVar

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level)) // validated by config
	logLevel.Set(level)
	opts := &slog.HandlerOptions{Level: &logLevel}
	newH := func(w io.Writer) slog.Handler { return slog.NewTextHandler(w, opts) }
	if c.Format == config.LogJSON {
		newH = func(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, opts) }
	}
	if w == os.Stderr && sdnotify.StderrIsJournal() {
		return slog.New(sdnotify.JournalHandler(w, newH)) // each line with its priority
	}
	return slog.New(newH(w))
}

const configAbout = `
Reads a configuration file, applies the defaults and checks every value,
loads every file it names (certificates, PKCS#12 with its password,
tokens, secrets) as serve will, then prints the complete effective
configuration. Exit status 2 and an error naming the key when something
is wrong.`

func runConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("config", "[-c FILE]", configAbout, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE` (default: built-in defaults)")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgFile)
	if err != nil {
		return err
	}
	if err := gateway.CheckFiles(cfg); err != nil {
		return usageError{err}
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "", "Prints the version, the commit it was built from and the Go version.", stdout)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	v := gateway.Version()
	fmt.Fprintf(stdout, "dpgate %s\ncommit %s\n%s\n", v.Version, v.Commit, v.GoVersion)
	return nil
}

// notify relays the signals this platform has (nil: none) to c; never all
// signals, which signal.Notify with none would mean.
func notify(c chan<- os.Signal, sigs ...os.Signal) {
	var have []os.Signal
	for _, s := range sigs {
		if s != nil {
			have = append(have, s)
		}
	}
	if len(have) > 0 {
		signal.Notify(c, have...)
	}
}
