package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/signal"
	"syscall"
	"time"

	"github.com/dpgate/dpgate/link"
)

func runReflect(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("reflect", "[--listen ADDR]", `
Runs a STAMP session-reflector (RFC 8762, unauthenticated, stateful: it
numbers its answers per sender, so the sender can tell loss on the way
there from loss on the way back). Put one at the far end of an uplink
(next to a central server) and name it in proxy.upstreams[].probe, or
probe it with dpgate probe.`, stdout)
	listen := fs.String("listen", ":862", "UDP `ADDR` to answer on")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	a, err := net.ResolveUDPAddr("udp", *listen)
	if err != nil {
		return usageError{err}
	}
	pc, err := net.ListenUDP("udp", a)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	r := &link.Reflector{}
	fmt.Fprintf(stderr, "dpgate reflect: answering STAMP on %s\n", pc.LocalAddr())
	go func() { <-ctx.Done(); pc.Close() }() // ends the Serve below
	err = r.Serve(pc)
	fmt.Fprintf(stderr, "dpgate reflect: %d probes answered (%d without a session: over %d senders at once), %d malformed\n",
		r.Reflected.Load(), r.Stateless.Load(), link.DefaultMaxSessions, r.Dropped.Load())
	return err
}

func runProbe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("probe", "HOST[:PORT] [--count N] [--interval D] [--json]", `
Measures a link against a STAMP reflector (dpgate reflect, or any RFC 8762
reflector; port 862 by default): prints a line per second, then a summary
with loss each way, round-trip times and jitter, and the verdict against
the limits (the central side's: 10 % loss, 100 ms delay, where delay is
the median round-trip time, as ping shows it). Exit status 0 within the
limits, 1 out of them.`, stdout)
	count := fs.Int("count", 100, "probes to send (0: until interrupted)")
	interval := fs.Duration("interval", 100*time.Millisecond, "time between probes")
	lossLimit := fs.Float64("loss", 10, "loss limit, percent")
	delayLimit := fs.Duration("delay", 100*time.Millisecond, "round-trip time limit")
	jsonOut := fs.Bool("json", false, "print only the summary, as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *interval <= 0 || *count < 0 {
		return usagef("probe takes one HOST[:PORT], a positive --interval and --count >= 0")
	}
	target := pos[0]
	if _, _, err := net.SplitHostPort(target); err != nil {
		target = net.JoinHostPort(target, fmt.Sprint(link.DefaultPort))
	}
	p, err := link.NewProber(link.ProbeConfig{Target: target, Interval: *interval, Window: 24 * time.Hour, Timeout: time.Second, Count: *count})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go p.Run(ctx) // ends after count probes or on a signal
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	if !*jsonOut {
		fmt.Fprintf(stdout, "STAMP to %s, a probe every %s\n", target, *interval)
	}
loop:
	for {
		select {
		case <-p.Done():
			break loop
		case <-tick.C:
			if !*jsonOut {
				st := p.Stats()
				rtt, jitter := "-", "-" // nothing answered: no figures, not 0
				if st.RTTP50 > 0 {
					rtt, jitter = ms(st.RTTP50), ms(st.Jitter)
				}
				fmt.Fprintf(stdout, "%4ds sent %d received %d loss %.1f%% (%s) rtt p50 %s jitter %s\n",
					int(time.Since(start).Seconds()), st.Sent, st.Received, 100*st.Loss, directions(st, "%.1f"), rtt, jitter)
			}
		}
	}
	st := p.Stats()
	j := link.Judge{Limits: link.Limits{Loss: *lossLimit / 100, Delay: *delayLimit}, MinProbes: 1}
	verdict := j.Raw(st)
	if *jsonOut {
		if err := printJSON(stdout, map[string]any{"stats": st, "verdict": verdict, "limits": map[string]any{"loss": *lossLimit / 100, "delay": delayLimit.String()}}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "--- %s ---\n", target)
		fmt.Fprintf(stdout, "%d sent, %d received, loss %.2f%% round trip, %s; %d duplicates, %d reordered\n",
			st.Sent, st.Received, 100*st.Loss, directions(st, "%.2f"), st.Duplicates, st.Reordered)
		if st.RTTP50 > 0 {
			fmt.Fprintf(stdout, "rtt min/p50/p90/p99/max %s/%s/%s/%s/%s, jitter %s\n", ms(st.RTTMin), ms(st.RTTP50), ms(st.RTTP90), ms(st.RTTP99), ms(st.RTTMax), ms(st.Jitter))
		} else {
			fmt.Fprintf(stdout, "rtt: no probe was answered (is a STAMP reflector listening at %s?)\n", target)
		}
		if st.ReflectorTTL > 0 {
			fmt.Fprintf(stdout, "ttl at the reflector %d\n", st.ReflectorTTL)
		}
		fmt.Fprintf(stdout, "verdict: %s (limits: loss %.0f%% each way, delay %s round trip)\n", verdict, *lossLimit, delayLimit)
	}
	if verdict == link.OutOfLimits {
		return errOutOfLimits
	}
	return nil
}

var errOutOfLimits = errors.New("the link is out of limits")

// directions is the loss each way, each figure in format: which way a
// probe was lost is told by the reflector's count of what reached it, so
// with nothing back at all it is unknown.
func directions(st link.Stats, format string) string {
	if st.Received == 0 && st.Sent > 0 {
		return "out and back unknown (nothing came back)"
	}
	return fmt.Sprintf(format+"%% out, "+format+"%% back", 100*st.LossOut, 100*st.LossBack)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", d.Seconds()*1000) }
