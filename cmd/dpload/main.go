// Command dpload load-tests a dpgate gateway or cluster. Run
// "dpload --help" for its scenarios.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dpgate/dpgate/loadtest"
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
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintf(stdout, "Usage: dpload COMMAND [flags]\n\nCommands:\n")
		for _, c := range commands() {
			fmt.Fprintf(stdout, "  %-6s %s\n", c.name, c.synopsis)
		}
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
	if *cert == "" {
		return usageError{errors.New("sink: --cert is required")}
	}
	id, err := tlsconf.LoadIdentity(*cert, "")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
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
	jsonOut := fs.Bool("json", false, "print the report as JSON")
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
	progress := func(format string, a ...any) { fmt.Fprintf(stderr, "dpload: "+format+"\n", a...) }
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
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	rep.WriteTable(stdout)
	return nil
}
