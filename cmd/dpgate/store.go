package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/internal/store"
)

const storeAbout = `
Checks and repairs the gateway's store (data_dir/dpgate.db: the push
queue, the device registry and the agent certificate allow-list):

  check    report what is damaged: the file's structure (bbolt's
           consistency check) and every record's checksum; exit 1 if
           anything is. Asks the running gateway, or reads the file
           when none runs.
  recover  copy every readable record into a new dpgate.db and keep the
           damaged file beside it (dpgate.db.damaged-<time>; .old-<time>
           when nothing was damaged); prints the records kept and lost.
           The gateway must be stopped.
  reset    start over with an empty store (needs --force): the current
           file is kept as dpgate.db.old-<time>. Queued pushes, devices
           and the allow-list are gone. The gateway must be stopped.

The gateway refuses to start on a damaged store, or when the store of a
data directory that held one is missing or empty; these commands are the
way on.`

func runStore(args []string, stdout, stderr io.Writer) error {
	return runSubcommand("store", storeAbout, map[string]func([]string, io.Writer, io.Writer) error{
		"check": storeCheck, "recover": storeRecover, "reset": storeReset,
	}, args, stdout, stderr)
}

func storeCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("store check", "[-c FILE] [--json]", `
Checks the store: the file's structure and every record's checksum. A
running gateway checks its open store (GET /v1/store/check); without one
the file is read directly, and not changed. Exit status 1 if anything is
damaged.`, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE`, for data_dir and the admin API (default: built-in defaults)")
	jsonOut := fs.Bool("json", false, "print JSON")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	api, cfg, err := adminClientOf(*cfgFile) // a check of a large store takes its time
	if err != nil {
		return err
	}
	var r store.Report
	err = admin.ErrUnreachable
	if config.Enabled(cfg.Admin.Listen) {
		err = api.Do(context.Background(), "GET", "/v1/store/check", nil, &r)
	}
	if errors.Is(err, admin.ErrUnreachable) {
		r, err = store.Inspect(cfg.Node.DataDir, 0)
	}
	if err != nil {
		return err
	}
	if *jsonOut {
		if err := printJSON(stdout, r); err != nil {
			return err
		}
	} else {
		printReport(stdout, r)
	}
	if !r.OK() {
		return fmt.Errorf("%s is damaged: run \"dpgate store recover\" with the gateway stopped", r.Path)
	}
	return nil
}

func printReport(w io.Writer, r store.Report) {
	fmt.Fprintf(w, "file     %s (%d bytes, record format %d)\n", r.Path, r.Size, r.Format)
	fmt.Fprintf(w, "checked  in %s\n", r.Took.Round(time.Millisecond))
	if len(r.Problems) == 0 {
		fmt.Fprintln(w, "structure: ok")
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "structure: DAMAGED: %s\n", p)
	}
	for _, u := range r.Unreadable {
		fmt.Fprintf(w, "unreadable: %s\n", u)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUCKET\tRECORDS\tFAIL CHECKSUM")
	for _, b := range r.Buckets {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", b.Name, b.Records, b.Corrupt)
	}
	tw.Flush()
	if r.OK() {
		fmt.Fprintln(w, "ok")
	}
}

func storeRecover(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("store recover", "[-c FILE] [--json]", `
Copies every readable record of a damaged store into a new dpgate.db:
records that fail their checksum, and those on pages that cannot be read,
are left behind and counted. The damaged file is kept beside the new one
as dpgate.db.damaged-<time> (dpgate.db.old-<time>, and said so, when
nothing in it was damaged). Run it with the gateway stopped, then start
the gateway again.`, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE`, for data_dir (default: built-in defaults)")
	jsonOut := fs.Bool("json", false, "print JSON")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgFile)
	if err != nil {
		return err
	}
	rep, err := store.Recover(cfg.Node.DataDir, 0)
	if err != nil {
		return err
	}
	if *jsonOut {
		return printJSON(stdout, rep)
	}
	names := map[string]bool{}
	for n := range rep.Kept {
		names[n] = true
	}
	for n := range rep.Lost {
		names[n] = true
	}
	var sorted []string
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUCKET\tKEPT\tLOST (checksum)")
	kept, lost := 0, 0
	for _, n := range sorted {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", n, rep.Kept[n], rep.Lost[n])
		kept, lost = kept+rep.Kept[n], lost+rep.Lost[n]
	}
	tw.Flush()
	for _, u := range rep.Unreadable {
		fmt.Fprintf(stdout, "unreadable, its records lost: %s\n", u)
	}
	fmt.Fprintf(stdout, "kept %s, lost %d failing their checksum", count(kept, "record"), lost)
	if len(rep.Unreadable) > 0 {
		fmt.Fprintf(stdout, " and those of %s", count(len(rep.Unreadable), "unreadable branch"))
	}
	if rep.Sound {
		fmt.Fprintf(stdout, "\nnothing was damaged: the store was sound and needed no recovery\nnew store  %s\nold store  %s (kept)\n", rep.Recovered, rep.Damaged)
		return nil
	}
	fmt.Fprintf(stdout, "\nnew store  %s\ndamaged    %s (kept)\n", rep.Recovered, rep.Damaged)
	return nil
}

func storeReset(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("store reset", "--force [-c FILE]", `
Starts over with an empty store. The current dpgate.db, if any, is kept as
dpgate.db.old-<time>; queued pushes, the device registry and the agent
allow-list are gone from the gateway. The gateway refuses to do this on its
own; --force says you mean it. Run it with the gateway stopped.`, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE`, for data_dir (default: built-in defaults)")
	force := fs.Bool("force", false, "really start with an empty store")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if !*force {
		return usagef("store reset empties the gateway's store: add --force if you mean it")
	}
	cfg, err := loadConfig(*cfgFile)
	if err != nil {
		return err
	}
	aside, err := store.Reset(cfg.Node.DataDir)
	if err != nil {
		return err
	}
	if aside != "" {
		fmt.Fprintf(stdout, "the previous store is kept as %s\n", aside)
	}
	fmt.Fprintf(stdout, "new empty store in %s\n", strings.TrimSuffix(cfg.Node.DataDir, "/"))
	return nil
}
