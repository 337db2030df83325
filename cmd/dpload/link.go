package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
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
	out := outputFlags(fs)
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
	rep := loadtest.NewLinkReport(*target, imp, st, j.Raw(st), p.Samples())
	return out.report(rep, nil, rep.HTML("dpload link "+strings.Join(args, " ")), stdout, stderr)
}
