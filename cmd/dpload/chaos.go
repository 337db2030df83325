//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dpgate/dpgate/loadtest/chaos"
)

func runChaos(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("chaos", "--dpgate BIN [flags]", `
Runs --nodes real "dpgate serve" processes (--dpgate) as one cluster,
each in its own network namespace on a private bridge, with --agents
agents and a publisher at --rate pushes/s to random nodes, through the
--faults one after another (each for --length, then the site is let
recover) and then --mixed of random faults of 5 to 30 s. Every publish,
delivery and fault is recorded (--history FILE, JSON) and checked: the
report counts acknowledged pushes lost (exit status 1 if any), duplicates,
order violations, availability during each fault and the recovery time
after it. Needs root, ip (iproute2), nft (nftables) and tmpfs mounts.
Faults: `+strings.Join(chaos.Kinds, ", ")+`.`, stdout)
	cfg := chaos.Config{}
	fs.StringVar(&cfg.Dpgate, "dpgate", "", "the dpgate `BINARY` to run (required)")
	fs.IntVar(&cfg.Nodes, "nodes", 3, "gateway nodes")
	fs.IntVar(&cfg.Agents, "agents", 30, "agents")
	fs.Float64Var(&cfg.Rate, "rate", 20, "pushes per second")
	faults := fs.String("faults", strings.Join(chaos.Kinds, ","), "faults to run once each, in order (\"\" for none)")
	fs.DurationVar(&cfg.Length, "length", 8*time.Second, "length of each fault of --faults")
	fs.DurationVar(&cfg.Mixed, "mixed", 0, "then random faults for this long")
	fs.DurationVar(&cfg.Settle, "settle", 90*time.Second, "longest wait for the site to recover after a fault")
	dir := fs.String("dir", "", "work `DIR` (kept: logs, configs, data; default: a temporary one, removed)")
	history := fs.String("history", "", "write the recorded history as JSON to `FILE`")
	jsonOut := fs.Bool("json", false, "print the report as JSON")
	check := fs.String("check", "", "only check a history `FILE` written by --history, and print its report")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *check != "" {
		b, err := os.ReadFile(*check)
		if err != nil {
			return err
		}
		var h chaos.History
		if err := json.Unmarshal(b, &h); err != nil {
			return fmt.Errorf("chaos: %s: %w", *check, err)
		}
		return printChaos(chaos.Check(&h), *jsonOut, stdout)
	}
	if cfg.Dpgate == "" {
		return usageError{errors.New("chaos: --dpgate is required (go build -o /tmp/dpgate ./cmd/dpgate)")}
	}
	if *faults != "" {
		cfg.Faults = strings.Split(*faults, ",")
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "dpload-chaos")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	cfg.Dir = *dir
	cfg.Log = func(format string, a ...any) { fmt.Fprintf(stderr, time.Now().Format("15:04:05 ")+format+"\n", a...) }
	h, runErr := chaos.Run(ctx, cfg)
	if *history != "" {
		b, _ := json.Marshal(h)
		if err := os.WriteFile(*history, b, 0o644); err != nil {
			return err
		}
	}
	if err := printChaos(chaos.Check(h), *jsonOut, stdout); err != nil || runErr == nil {
		return err
	}
	return runErr
}

// printChaos prints the report; an error when pushes were lost.
func printChaos(rep chaos.Report, jsonOut bool, stdout io.Writer) error {
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		rep.WriteTable(stdout)
	}
	if rep.Lost > 0 {
		return fmt.Errorf("chaos: %d acknowledged pushes lost", rep.Lost)
	}
	return nil
}
