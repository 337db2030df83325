package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/dpgate/dpgate/loadtest"
)

func runConnect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("connect", "--server ADDR[,ADDR...] --pin PIN --agents N [flags]", `
Connects N agents (the real push client, TLS or QUIC) to one gateway or
several (spread evenly), ramping at --ramp per second, holds them for
--hold, and reports the connect rate, connect-time percentiles, failed
attempts by reason and, with --admin, each gateway's sessions, RSS per
connection and open files, each next to the limit it is judged against.
A process may hold 20,000 open files here: --procs auto shards the
agents over worker processes (dpload agents) of at most 18,000 each,
spread over loopback source addresses.`, stdout)
	cfg := loadtest.ConnectConfig{}
	servers := fs.String("server", "", "push server `ADDR`s, comma-separated")
	admins := fs.String("admin", "", "admin API base `URL`s, comma-separated (e.g. http://127.0.0.1:13290)")
	tokenFile := tokenFlag(fs)
	fs.StringVar(&cfg.Pin, "pin", "", "the gateways' certificate `PINS`, comma-separated (one for each node of a cluster whose nodes have their own certificates)")
	fs.BoolVar(&cfg.QUIC, "quic", false, "agents connect over QUIC")
	fs.IntVar(&cfg.Agents, "agents", 1000, "number of agents")
	procs := fs.String("procs", "auto", "worker processes: auto (at most 18,000 agents each) or a number")
	fs.Float64Var(&cfg.Ramp, "ramp", 1000, "new connections per second, all processes together")
	fs.DurationVar(&cfg.Hold, "hold", 10*time.Second, "how long to hold the connections before the final count")
	fs.DurationVar(&cfg.FailFast, "fail-fast", loadtest.DefaultFailFast, "stop with the gateway's reason when no agent has connected after this long (attempts failing); negative: keep trying")
	fs.IntVar(&cfg.SourceIPs, "source-ips", 16, "loopback source addresses (127.0.0.2 ..) to spread agents over; one address pair runs out near 28,000")
	out := outputFlags(fs)
	ths := thresholdFlag(fs)
	creds := credentialFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *servers == "" || cfg.Pin == "" || cfg.Agents < 1 {
		return usageError{errors.New("connect: --server, --pin and --agents >= 1 are required")}
	}
	cfg.Servers = strings.Split(*servers, ",")
	if *admins != "" {
		cfg.Admins = strings.Split(*admins, ",")
	}
	token, err := adminToken(*tokenFile)
	if err != nil {
		return err
	}
	cfg.Token = token
	if cfg.Credentials, err = creds(); err != nil {
		return err
	}
	if cfg.Credentials.AgentCerts && len(cfg.Admins) == 0 {
		return usageError{errors.New("connect: --agent-certs needs --admin (the certificates go into the gateway's allow-list)")}
	}
	if *procs != "auto" {
		n, err := strconv.Atoi(*procs)
		if err != nil || n < 1 {
			return usageError{fmt.Errorf("connect: --procs %q is not auto or a positive number", *procs)}
		}
		cfg.Procs = n
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.Self = self
	cfg.Progress = progressPrinter(stderr)
	rep, err := loadtest.RunConnect(ctx, cfg)
	if err := out.report(rep, err, rep.HTML("dpload connect "+strings.Join(args, " ")), stdout, stderr); err != nil {
		return err
	}
	return checkThresholds(*ths, rep.Figures(), stderr)
}

// exitThresholds is dpload's exit status when a threshold is crossed (k6's).
const exitThresholds = 99

// exitInterrupted is the exit status of a run stopped by a signal, after
// its report (the shell's 128 + SIGINT).
const exitInterrupted = 130

// errInterrupted is a run stopped by Ctrl-C, its report written.
var errInterrupted = errors.New("interrupted")

// thresholdError is a run whose figures crossed a threshold.
type thresholdError struct{ error }

// thresholdFlag adds the repeatable --threshold flag.
func thresholdFlag(fs *flag.FlagSet) *[]loadtest.Threshold {
	var ths []loadtest.Threshold
	fs.Func("threshold", "pass/fail `EXPR` on a figure, e.g. 'p99<5ms' or 'connected>=100%'; repeatable; exit 99 when one fails", func(s string) error {
		th, err := loadtest.ParseThreshold(s)
		if err == nil {
			ths = append(ths, th)
		}
		return err
	})
	return &ths
}

// checkThresholds prints each threshold with pass or fail and returns a
// thresholdError when one failed.
func checkThresholds(ths []loadtest.Threshold, figures map[string]float64, w io.Writer) error {
	var failed []string
	for _, th := range ths {
		pass, got, err := th.Check(figures)
		if err != nil {
			return usageError{err}
		}
		verdict := "pass"
		if !pass {
			verdict = "FAIL"
			failed = append(failed, th.Expr)
		}
		fmt.Fprintf(w, "threshold %-24s %s (%s = %.4g)\n", th.Expr, verdict, th.Figure, got)
	}
	if len(failed) > 0 {
		return thresholdError{fmt.Errorf("%d of %d thresholds crossed: %s", len(failed), len(ths), strings.Join(failed, ", "))}
	}
	return nil
}

// output is where a run's report goes: --json, --html FILE.
type output struct {
	json *bool
	html *string
}

// outputFlags adds --json and --html.
func outputFlags(fs *flag.FlagSet) output {
	return output{
		json: fs.Bool("json", false, "print the report as JSON"),
		html: fs.String("html", "", "also write a self-contained HTML report with charts to `FILE`"),
	}
}

// report is how a run ends: the HTML file if asked (and the run
// succeeded or was interrupted), then JSON (asked, or the partial report
// of a failed run) or the table. A run stopped by Ctrl-C (SIGINT or
// SIGTERM) reports the figures up to then, as a finished one does, and
// ends with exit status 130.
func (o output) report(rep interface{ WriteTable(io.Writer) }, runErr error, html loadtest.HTMLReport, stdout, stderr io.Writer) error {
	jsonOut, htmlFile := *o.json, *o.html
	if errors.Is(runErr, context.Canceled) {
		fmt.Fprintln(stderr, "dpload: interrupted; the figures up to now:")
		runErr = errInterrupted
	}
	if htmlFile != "" && (runErr == nil || runErr == errInterrupted) {
		if err := writeHTML(htmlFile, html, stderr); err != nil {
			return err
		}
	}
	if runErr == errInterrupted && !jsonOut {
		rep.WriteTable(stdout)
		return runErr
	}
	if jsonOut || runErr != nil {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
		return runErr
	}
	rep.WriteTable(stdout)
	return nil
}

// progressPrinter writes progress to w: on a terminal, counters as a
// bar (count, rate, elapsed) and steps as lines; otherwise plain lines,
// a counter at most every 5 s.
func progressPrinter(w io.Writer) loadtest.Progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	var (
		bar     *progressbar.ProgressBar
		barWhat string
		last    time.Time
	)
	endBar := func() {
		if bar != nil {
			bar.Exit()
			fmt.Fprintln(w)
			bar = nil
		}
	}
	return loadtest.Progress{
		Note: func(format string, a ...any) {
			endBar()
			fmt.Fprintf(w, "dpload: "+format+"\n", a...)
		},
		Count: func(what string, done, total int64) {
			if !tty {
				if time.Since(last) >= 5*time.Second || done >= total {
					fmt.Fprintf(w, "dpload: %s %d / %d\n", what, done, total)
					last = time.Now()
				}
				return
			}
			if bar == nil || barWhat != what || bar.GetMax64() != total {
				endBar()
				bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription("dpload: "+what),
					progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("conn"),
					progressbar.OptionSetElapsedTime(true), progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionSetWidth(30))
				barWhat = what
			}
			bar.Set64(done)
		},
	}
}

// writeHTML writes a report's HTML file.
func writeHTML(file string, r loadtest.HTMLReport, stderr io.Writer) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	werr := loadtest.WriteHTML(f, r)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		fmt.Fprintf(stderr, "dpload: HTML report in %s\n", file)
	}
	return werr
}
