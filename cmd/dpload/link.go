package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/loadtest"
)

func runLink(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("link", "[--target ADDR] [--loss PCT --delay D --jitter D --reorder PCT] [flags]", `
Probes a link with STAMP (RFC 8762) and prints loss each way, round-trip
times and jitter next to the uplink limits (10 % loss, 100 ms delay), and
the verdict. Without --target it probes a reflector of its own on
loopback. With impairments, the probes pass the userspace impairment
relay (the same in both directions, reproducible with --seed): what the
measurement reports can be checked against what was set.`, stdout)
	target := fs.String("target", "", "STAMP reflector `ADDR` (default: a built-in one on loopback)")
	loss := fs.Float64("loss", 0, "loss to add each way, percent")
	delay := fs.Duration("delay", 0, "delay to add each way")
	jitter := fs.Duration("jitter", 0, "jitter to add each way (uniform +-)")
	reorder := fs.Float64("reorder", 0, "datagrams to reorder each way, percent")
	seed := fs.Uint64("seed", 1, "impairment random seed")
	count := fs.Int("count", 3000, "probes")
	interval := fs.Duration("interval", 2*time.Millisecond, "time between probes")
	jsonOut := fs.Bool("json", false, "print the report as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *target == "" {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		defer pc.Close()
		go (&link.Reflector{}).Serve(pc) // ends at Close
		*target = pc.LocalAddr().String()
	}
	addr := *target
	imp := loadtest.Impairment{Loss: *loss / 100, Delay: *delay, Jitter: *jitter, Reorder: *reorder / 100}
	if imp != (loadtest.Impairment{}) {
		r, err := loadtest.NewUDPRelay("127.0.0.1:0", *target, *seed)
		if err != nil {
			return err
		}
		defer r.Close()
		r.Set(imp, imp)
		addr = r.Addr()
	}
	p, err := link.NewProber(link.ProbeConfig{Target: addr, Interval: *interval, Window: 24 * time.Hour, Timeout: time.Second + 4*(*delay+*jitter), Count: *count})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "dpload: %d probes every %s to %s\n", *count, *interval, *target)
	p.Run(ctx)
	st := p.Stats()
	j := link.Judge{Limits: link.Limits{Loss: loadtest.LimitUplinkLoss, Delay: time.Duration(loadtest.LimitUplinkDelayMs * float64(time.Millisecond))}, MinProbes: 1}
	verdict := j.Raw(st)
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"impairment_each_way": imp, "stats": st, "verdict": verdict})
	}
	row := func(name, v, limit string) { fmt.Fprintf(stdout, "%-28s %14s   %s\n", name, v, limit) }
	fmt.Fprintf(stdout, "\n%-28s %14s   %s\n", "figure", "measured", "limit")
	row("probes sent / answered", fmt.Sprintf("%d / %d", st.Sent, st.Received), "")
	row("loss towards the reflector", fmt.Sprintf("%.2f%%", 100*st.LossOut), fmt.Sprintf("%.0f%% (uplink)", 100*loadtest.LimitUplinkLoss))
	row("loss on the way back", fmt.Sprintf("%.2f%%", 100*st.LossBack), fmt.Sprintf("%.0f%% (uplink)", 100*loadtest.LimitUplinkLoss))
	row("round-trip time p50", fmt.Sprintf("%.2f ms", st.RTTP50.Seconds()*1000), fmt.Sprintf("%.0f ms (uplink delay)", loadtest.LimitUplinkDelayMs))
	row("round-trip time p99 / max", fmt.Sprintf("%.1f / %.1f ms", st.RTTP99.Seconds()*1000, st.RTTMax.Seconds()*1000), "")
	row("jitter (RFC 3550)", fmt.Sprintf("%.2f ms", st.Jitter.Seconds()*1000), "")
	row("duplicates / reordered", fmt.Sprintf("%d / %d", st.Duplicates, st.Reordered), "")
	row("verdict", string(verdict), "")
	return nil
}
