// Command dpload load-tests a dpgate gateway or cluster. Run
// "dpload --help" for its scenarios.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dpgate/dpgate/loadtest"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

type command struct {
	name, synopsis string
	run            func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"proxy", "throughput, latency, connect rate and idle memory through proxies, side by side", runProxy},
		{"sink", "run the TLS sink the proxy scenarios talk to", runSink},
		{"push", "connect N agents, then push latency, broadcast and a reconnect storm", runPush},
		{"connect", "connect N agents to one or several gateways, hold them, report limits", runConnect},
		{"chaos", "kill, pause, partition, fill and corrupt real gateway nodes under load; count lost pushes", runChaos},
		{"link", "probe a link (optionally through the impairment relay) against the uplink limits", runLink},
		{"agents", "run a fleet of agents (dpload push starts these itself)", runAgents},
		{"naive-server", "a goroutine-per-connection push server, the memory baseline", runNaive},
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintf(stdout, "Usage: dpload COMMAND [flags]\n\nCommands:\n")
		tw := tabwriter.NewWriter(stdout, 0, 0, 1, ' ', 0) // the longest name sets the column
		for _, c := range commands() {
			fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.synopsis)
		}
		tw.Flush()
		fmt.Fprintf(stdout, "\nRun \"dpload COMMAND --help\" for a command's flags.\n")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			switch {
			case err == nil || errors.Is(err, flag.ErrHelp):
				return 0
			case errors.As(err, new(usageError)):
				fmt.Fprintf(stderr, "dpload: %v\n", err)
				return 2
			case errors.Is(err, errInterrupted):
				return exitInterrupted
			case errors.As(err, new(thresholdError)):
				fmt.Fprintf(stderr, "dpload: %v\n", err)
				return exitThresholds
			default:
				fmt.Fprintf(stderr, "dpload: %v\n", err)
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "dpload: unknown command %q\n", args[0])
	return 2
}

type usageError struct{ error }

func flags(name, args, about string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		fmt.Fprintf(w, "Usage: dpload %s %s\n\n%s\n\nFlags:\n", name, args, strings.TrimSpace(about))
		fs.PrintDefaults()
	}
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	return nil
}

// listenTLS loads the server certificate of a dpload server (cmd names
// it in errors) and listens on addr.
func listenTLS(cmd, certFile, addr string) (*tlsconf.Identity, net.Listener, error) {
	if certFile == "" {
		return nil, nil, usageError{fmt.Errorf("%s: --cert is required", cmd)}
	}
	id, err := tlsconf.LoadIdentity(certFile, "")
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", addr)
	return id, ln, err
}

func runSink(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("sink", "--cert FILE [--listen ADDR]", `
Runs the TLS sink: the first byte of a connection picks discard ('D': the
sink answers the byte count after the client's half-close) or echo ('E').
Prints "sink listening ADDR pin PIN" once it accepts.`, stdout)
	listen := fs.String("listen", "127.0.0.1:0", "listen `ADDR`")
	cert := fs.String("cert", "", "PEM `FILE` with certificate and key (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	id, ln, err := listenTLS("sink", *cert, *listen)
	if err != nil {
		return err
	}
	s := loadtest.NewSink(tlsconf.ServerConfig(id, nil))
	fmt.Fprintf(stdout, "sink listening %s pin %s\n", ln.Addr(), id.Pin())
	go func() { <-ctx.Done(); s.Close() }() // ends with the signal context
	return s.Serve(ln)
}

// targetList is the repeatable --target NAME,ADDR,PIN[,PID] flag.
type targetList []loadtest.Target

func (l *targetList) String() string { return fmt.Sprint(len(*l)) }
func (l *targetList) Set(v string) error {
	parts := strings.Split(v, ",")
	if len(parts) < 3 || len(parts) > 4 {
		return fmt.Errorf("want NAME,ADDR,PIN[,PID], got %q", v)
	}
	pins, err := tlsconf.ParsePins([]string{parts[2]})
	if err != nil {
		return err
	}
	t := loadtest.Target{Name: parts[0], Addr: parts[1], TLS: tlsconf.PinnedClientConfig(pins, "dpload")}
	if len(parts) == 4 {
		if t.PID, err = strconv.Atoi(parts[3]); err != nil {
			return fmt.Errorf("PID %q: %v", parts[3], err)
		}
	}
	*l = append(*l, t)
	return nil
}

func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("proxy", "--target NAME,ADDR,PIN[,PID]... [flags]", `
Measures targets side by side, one scenario at a time for all targets in
turn: usually a direct connection to a "dpload sink", HAProxy in front of
it, and dpgate in front of it. PIN is the target's certificate pin; PID
(of the proxy process) enables the idle memory figure.

Scenarios: throughput (bulk upload, byte counts confirmed by the sink),
latency (request/response round trips), connect (new full TLS handshakes
per second, relayed to the sink), idle (RSS growth per open relay).`, stdout)
	var targets targetList
	fs.Var(&targets, "target", "`NAME,ADDR,PIN[,PID]` to measure (repeat)")
	scen := fs.String("scenarios", "throughput,latency,connect,idle", "comma-separated scenarios")
	streams := fs.String("streams", "1,8", "throughput stream counts")
	dur := fs.Duration("duration", 10*time.Second, "time per measurement")
	latConns := fs.Int("latency-conns", 4, "connections for the latency scenario")
	size := fs.Int("size", 64, "request and response size in bytes for the latency scenario")
	workers := fs.Int("connect-workers", 8, "concurrent dialers for the connect scenario")
	idle := fs.Int("idle-conns", 5000, "connections held for the idle scenario")
	out := outputFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(targets) == 0 {
		return usageError{errors.New("proxy: give at least one --target")}
	}
	rep := loadtest.ProxyReport{Duration: dur.String()}
	for _, t := range targets {
		rep.Targets = append(rep.Targets, t.Name)
	}
	progress := progressPrinter(stderr).Note
	for _, s := range strings.Split(*scen, ",") {
		switch s {
		case "throughput":
			rep.Throughput = map[string][]loadtest.ThroughputResult{}
			for _, n := range strings.Split(*streams, ",") {
				k, err := strconv.Atoi(n)
				if err != nil || k < 1 {
					return usageError{fmt.Errorf("--streams: %q is not a positive number", n)}
				}
				for _, t := range targets {
					progress("throughput %s, %d stream(s), %v", t.Name, k, *dur)
					r, err := loadtest.Throughput(ctx, t, k, *dur)
					if err != nil {
						return err
					}
					if r.Mismatch > 0 {
						return fmt.Errorf("%s: %d streams lost bytes (sink count differs from bytes sent)", t.Name, r.Mismatch)
					}
					rep.Throughput[t.Name] = append(rep.Throughput[t.Name], r)
				}
			}
		case "latency":
			rep.Latency = map[string]loadtest.LatencyResult{}
			for _, t := range targets {
				progress("latency %s, %d conns, %d bytes, %v", t.Name, *latConns, *size, *dur)
				r, err := loadtest.Latency(ctx, t, *latConns, *size, *dur)
				if err != nil {
					return err
				}
				rep.Latency[t.Name] = r
			}
		case "connect":
			rep.Connect = map[string]loadtest.ConnectResult{}
			for _, t := range targets {
				progress("connect %s, %d workers, %v", t.Name, *workers, *dur)
				rep.Connect[t.Name] = loadtest.ConnectRate(ctx, t, *workers, *dur)
				// Let TIME_WAIT and the proxy's backlog settle between targets.
				time.Sleep(2 * time.Second)
			}
		case "idle":
			rep.Idle = map[string]loadtest.IdleResult{}
			for _, t := range targets {
				if t.PID == 0 {
					continue
				}
				progress("idle %s, %d connections", t.Name, *idle)
				r, err := loadtest.IdleMemory(ctx, t, *idle, 3*time.Second)
				if err != nil {
					return err
				}
				rep.Idle[t.Name] = r
			}
		default:
			return usageError{fmt.Errorf("unknown scenario %q", s)}
		}
	}
	return out.report(rep, nil, rep.HTML("dpload proxy "+strings.Join(args, " ")), stdout, stderr)
}

func runAgents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("agents", "--server ADDR --pin PIN --first N --count N", `
Runs a fleet of agents with the push client library and answers commands
on standard input (status, hist, storm, quit) with JSON lines. dpload push
starts these as child processes, so that each stays under the open-file
limit of one process.`, stdout)
	server := fs.String("server", "", "push server `ADDR`; several, comma-separated: agent i starts at the i-th")
	pin := fs.String("pin", "", "the servers' certificate `PINS`, comma-separated")
	first := fs.Int("first", 0, "index of the first agent (device ids are agent-N)")
	count := fs.Int("count", 1000, "number of agents")
	useQUIC := fs.Bool("quic", false, "connect over QUIC")
	srcIPs := fs.Int("source-ips", 0, "spread over 127.0.0.2 .. 127.0.0.(1+N); 0: the system's choice")
	ramp := fs.Float64("ramp", 1000, "new connections per second while starting")
	tokenKey := fs.String("token-key", "", "push.token_key_file: give each agent a device token signed with its first key")
	certFile := fs.String("agent-certs", "", "agent certificates (`FILE` of dpload connect/push --agent-certs): agent N presents the N-th")
	if err := parse(fs, args); err != nil {
		return err
	}
	key, err := readTokenKey(*tokenKey)
	if err != nil {
		return err
	}
	var certs []tls.Certificate
	if *certFile != "" {
		if certs, err = loadtest.LoadAgentCerts(*certFile); err != nil {
			return err
		}
	}
	var ips []net.IP
	for i := range *srcIPs {
		ips = append(ips, net.IPv4(127, 0, byte((i+2)/256), byte((i+2)%256)))
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f, err := loadtest.StartFleet(fctx, loadtest.FleetConfig{Server: *server, Pin: *pin, QUIC: *useQUIC,
		Prefix: "agent-", First: *first, Count: *count, SourceIPs: ips, Ramp: *ramp, TokenKey: key, Certs: certs})
	if err != nil {
		return err
	}
	served := make(chan struct{})
	go func() { defer close(served); f.Serve(os.Stdin, stdout) }() // ends on quit or end of input
	select {
	case <-served:
	case <-ctx.Done(): // a signal: stop even though standard input is still open
	}
	return nil
}

func runPush(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("push", "--server ADDR --admin URL --pin PIN [flags]", `
Connects --agents agents to a gateway's push server (spread over child
processes and loopback source addresses), then runs the scenarios:
memory (server RSS per connection, needs --pid), latency (pushes to
random devices through the admin API at --rate for --duration, each
stamped with its send time), broadcast (one push to all), storm (every
agent drops its connection at once and reconnects; pushes published
meanwhile are counted).`, stdout)
	cfg := loadtest.PushBenchConfig{}
	fs.StringVar(&cfg.Server, "server", "", "push server `ADDR`")
	fs.StringVar(&cfg.Admin, "admin", "http://127.0.0.1:13290", "admin API base `URL`")
	tokenFile := tokenFlag(fs)
	fs.StringVar(&cfg.Pin, "pin", "", "the gateway's certificate `PIN`")
	fs.IntVar(&cfg.PID, "pid", 0, "the server's process id, for memory figures")
	fs.BoolVar(&cfg.QUIC, "quic", false, "agents connect over QUIC")
	fs.IntVar(&cfg.Agents, "agents", 1000, "number of agents")
	fs.IntVar(&cfg.Procs, "procs", 0, "agent processes (0: one per 9,000 agents)")
	fs.IntVar(&cfg.SourceIPs, "source-ips", 8, "loopback source addresses to spread agents over")
	fs.Float64Var(&cfg.Rate, "rate", 1000, "pushes per second in the latency scenario")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "length of the latency scenario")
	scen := fs.String("scenarios", "memory,latency,broadcast,storm", "comma-separated scenarios")
	out := outputFlags(fs)
	ths := thresholdFlag(fs)
	creds := credentialFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if cfg.Server == "" || cfg.Pin == "" {
		return usageError{errors.New("push: --server and --pin are required")}
	}
	var err error
	if cfg.Token, err = adminToken(*tokenFile); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.Self = self
	cfg.Scenarios = strings.Split(*scen, ",")
	if cfg.Credentials, err = creds(); err != nil {
		return err
	}
	cfg.Progress = progressPrinter(stderr)
	rep, err := loadtest.RunPushBench(ctx, cfg)
	if err := out.report(rep, err, rep.HTML("dpload push "+strings.Join(args, " ")), stdout, stderr); err != nil {
		return err
	}
	return checkThresholds(*ths, rep.Figures(), stderr)
}

func runNaive(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("naive-server", "--cert FILE [--listen ADDR]", `
A goroutine-per-connection crypto/tls push server with 4 KiB bufio
buffers per connection: the baseline dpgate's memory per connection is
compared against. Prints "naive listening ADDR pin PIN".`, stdout)
	listen := fs.String("listen", "127.0.0.1:0", "listen `ADDR`")
	cert := fs.String("cert", "", "PEM `FILE` with certificate and key (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	id, ln, err := listenTLS("naive-server", *cert, *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "naive listening %s pin %s\n", ln.Addr(), id.Pin())
	go func() { <-ctx.Done(); ln.Close() }() // ends with the signal context
	if err := (loadtest.NaivePushServer{TLS: tlsconf.ServerConfig(id, nil)}).Serve(ln); ctx.Err() == nil {
		return err
	}
	return nil
}

// tokenFlag declares --token-file, the admin API's bearer token.
func tokenFlag(fs *flag.FlagSet) *string {
	return fs.String("token-file", "", "`FILE` with the admin API's bearer token (the gateway's admin.token_file or data_dir/admin.token; default: $DPGATE_TOKEN)")
}

// adminToken reads the token file, or DPGATE_TOKEN without one.
func adminToken(file string) (string, error) {
	if file == "" {
		return os.Getenv("DPGATE_TOKEN"), nil
	}
	return tlsconf.ReadSecretFile(file)
}

// readTokenKey reads the signing key of push.token_key_file (base64, the
// first key line); "" is none.
func readTokenKey(file string) ([]byte, error) {
	if file == "" {
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	keys, err := wire.ParseTokenKeys(data)
	if err != nil {
		return nil, usageError{fmt.Errorf("--token-key %s: %w", file, err)}
	}
	return keys[0], nil
}

// credentialFlags adds the agents' credentials to connect and push:
// --token-key (push.auth token) and --agent-certs (push.auth cert, the
// default). The function it returns checks them once parsed.
func credentialFlags(fs *flag.FlagSet) func() (loadtest.Credentials, error) {
	tokenKey := fs.String("token-key", "", "push.token_key_file of the gateway (push.auth token): the agents get device tokens signed with its first key")
	certs := fs.Bool("agent-certs", false, "push.auth cert (the default): issue each agent a client certificate (common name agent-N), add them to the allow-list through the admin API before connecting and remove them at the end")
	return func() (loadtest.Credentials, error) {
		if *tokenKey != "" && *certs {
			return loadtest.Credentials{}, usageError{errors.New("--token-key and --agent-certs are for different push.auth settings: give one")}
		}
		file, err := absKeyFile(*tokenKey)
		return loadtest.Credentials{TokenKeyFile: file, AgentCerts: *certs}, err
	}
}

// absKeyFile checks a --token-key file and makes its name absolute for the
// agent processes.
func absKeyFile(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	if _, err := readTokenKey(file); err != nil {
		return "", err
	}
	return filepath.Abs(file)
}
