package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dpgate/dpgate/internal/gateway"
)

const statusAbout = `
The running gateway's state through its admin API (GET /v1/status): node,
version, process, certificate, push sessions, proxy upstreams, measured
uplinks, cluster and store. The address and token come from -c FILE, or
DPGATE_ADDR (host:port) and DPGATE_TOKEN.`

// cfgFlagHelp is the -c flag of the commands that talk to the running
// gateway.
const cfgFlagHelp = "configuration `FILE`, for the admin API address and token (default: built-in defaults)"

// apiCommand parses the flags of a command that talks to the running
// gateway and takes no arguments: -c FILE and --json (jsonHelp). It
// returns the configuration file and whether JSON was asked for.
func apiCommand(name, about, jsonHelp string, args []string, stdout io.Writer) (cfgFile string, jsonOut bool, err error) {
	fs := newFlags(name, "[-c FILE] [--json]", about, stdout)
	c := fs.String("c", "", cfgFlagHelp)
	j := fs.Bool("json", false, jsonHelp)
	if err := parseNoArgs(fs, args); err != nil {
		return "", false, err
	}
	return *c, *j, nil
}

func fetchStatus(cfgFile string) (gateway.Status, error) {
	var st gateway.Status
	api, _, err := adminClient(cfgFile)
	if err != nil {
		return st, err
	}
	return st, api.Do(context.Background(), "GET", "/v1/status", nil, &st)
}

func runStatus(args []string, stdout, stderr io.Writer) error {
	cfgFile, jsonOut, err := apiCommand("status", statusAbout, "print the API's JSON reply", args, stdout)
	if err != nil {
		return err
	}
	st, err := fetchStatus(cfgFile)
	if err != nil {
		return err
	}
	if jsonOut {
		return printJSON(stdout, st)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	days := int(time.Until(st.CertExpiry).Hours() / 24)
	fmt.Fprintf(tw, "node\t%s\n", st.Node)
	fmt.Fprintf(tw, "version\t%s (pid %d, up %s)\n", st.Version, st.PID, st.Uptime)
	fmt.Fprintf(tw, "certificate\t%s, expires %s (%s)\n", st.Pin, st.CertExpiry.Format(time.DateOnly), count(days, "day"))
	fmt.Fprintf(tw, "agent certificates\t%d allowed\n", st.AgentCerts)
	if p := st.Push; p != nil {
		fmt.Fprintf(tw, "push\t%s of %d, %s, %s queued for %s, %s\n", count(p.Sessions, "session"), p.MaxConnections,
			count(p.Devices, "known device"), count(p.Queued, "push"), count(p.QueuedTo, "device"), count(p.Expired, "expired push"))
	} else {
		fmt.Fprintf(tw, "push\toff\n")
	}
	if p := st.Proxy; p != nil {
		fmt.Fprintf(tw, "proxy\t%s of %d, %d refused, %d with no upstream reachable, balance %s\n", count(p.Connections, "relay"), p.MaxConnections, p.Refused, p.NoUpstream, p.Balance)
		for _, u := range p.Upstreams {
			fmt.Fprintf(tw, "  upstream %s\t%s, %s now, %s\n", u.Address, u.State, count(u.ActiveRelays, "relay"), count(u.Failures, "failure"))
		}
	} else {
		fmt.Fprintf(tw, "proxy\toff (no upstream configured)\n")
	}
	for _, l := range st.Links {
		rtt := "-" // no probe came back in the window: no figure, not 0
		if l.Stats.RTTP50 > 0 {
			rtt = l.Stats.RTTP50.String()
		}
		fmt.Fprintf(tw, "  uplink %s\t%s: loss %.1f %% / %.1f %%, rtt %s\n", l.Name, l.Verdict, 100*l.Stats.LossOut, 100*l.Stats.LossBack, rtt)
	}
	if st.Cluster != nil {
		failed := ""
		if n := len(st.ClusterFailed); n > 0 {
			var names []string
			for _, f := range st.ClusterFailed {
				names = append(names, f.Name)
			}
			failed = fmt.Sprintf(", %d failed and not back (%s)", n, strings.Join(names, ", "))
		}
		fmt.Fprintf(tw, "cluster\t%s%s (dpgate members lists them)\n", count(len(st.Cluster), "member"), failed)
		for _, c := range st.ClusterConflicts {
			fmt.Fprintf(tw, "  NAME CONFLICT\t%s\n", conflictWords(c))
		}
	} else {
		fmt.Fprintf(tw, "cluster\toff\n")
	}
	fmt.Fprintf(tw, "store\t%s, %s since start\n", count(st.Store.CorruptRecords, "corrupt record"), count(st.Store.Failures, "failure"))
	files := count(st.OpenFiles, "open file")
	if st.OpenFilesLimit > 0 {
		files += fmt.Sprintf(" of %d", st.OpenFilesLimit)
	}
	fmt.Fprintf(tw, "process\t%d MiB resident, %s, %s\n", st.RSSBytes>>20, count(st.Goroutines, "goroutine"), files)
	return tw.Flush()
}

const membersAbout = `
The cluster's members as the running gateway sees them (memberlist's view,
with what each node gossips): name, gossip address, push address, agents
and capacity, load per core, uplink verdict, draining, probe RTT. Then the
nodes declared dead that have not come back or left since (kept a day):
they may hold devices and pushes the others do not know of, so a push to
all and a device list name them as not reached. --json prints them all,
the failed ones with state "failed" and failed_since.

  dpgate members forget NODE   a failed node gone for good (decommissioned
                               without a drain, or dead): every node stops
                               listing it, and what only it held is given up`

func runMembers(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "forget" {
		return membersForget(args[1:], stdout)
	}
	cfgFile, jsonOut, err := apiCommand("members", membersAbout, "print the members as JSON", args, stdout)
	if err != nil {
		return err
	}
	st, err := fetchStatus(cfgFile)
	if err != nil {
		return err
	}
	if st.Cluster == nil {
		return fmt.Errorf("%s is not in a cluster (cluster.bind is not set)", st.Node)
	}
	if jsonOut { // the failed nodes too, as the table shows them
		all := slices.Clone(st.Cluster)
		for _, f := range st.ClusterFailed {
			all = append(all, gateway.ClusterMember{Name: f.Name, Addr: f.Addr, Push: f.Push, State: "failed", FailedSince: &f.Since})
		}
		return printJSON(stdout, all)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tGOSSIP\tPUSH\tAGENTS\tCAPACITY\tLOAD\tUPLINK\tSTATE\tRTT")
	for _, m := range st.Cluster {
		name := m.Name
		if m.Self {
			name += " (this node)"
		}
		rtt := "-"
		if m.RTTMillis > 0 {
			rtt = fmt.Sprintf("%.1f ms", m.RTTMillis)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%.2f\t%s\t%s\t%s\n", name, m.Addr, m.Push, m.Agents, m.Capacity, m.Load, m.Uplink, m.State, rtt)
	}
	for _, f := range st.ClusterFailed {
		ago := time.Since(f.Since).Round(time.Second)
		fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\tfailed %s ago\t-\n", f.Name, f.Addr, f.Push, ago)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range st.ClusterConflicts {
		fmt.Fprintf(stdout, "NAME CONFLICT: %s\n", conflictWords(c))
	}
	return nil
}

// conflictWords says a name conflict as status and members print it.
func conflictWords(c gateway.NameConflict) string {
	return fmt.Sprintf("%s is claimed at %s and at %s since %s: node names must be unique (node.name, by default the host name)",
		c.Name, c.Known, c.Addr, c.Since.Format(time.RFC3339))
}

func membersForget(args []string, stdout io.Writer) error {
	fs := newFlags("members forget", "NODE [-c FILE]", `
Forgets a failed node on every node of the cluster: it is no longer listed
(dpgate members, status, the console, dpgate_cluster_failed_nodes) nor
named as not reached by a push to all and the device list. For a node gone
for good; a node stopped in good order (SIGTERM, a drain) leaves by itself.
What only that node held (devices whose agents have not reconnected
elsewhere, its copies of pushes) is given up. A node that is alive is
refused.`, stdout)
	cfgFile := fs.String("c", "", cfgFlagHelp)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		return usagef("members forget takes one NODE, got %q", pos)
	}
	api, _, err := adminClient(*cfgFile)
	if err != nil {
		return err
	}
	if err := api.Do(context.Background(), "DELETE", "/v1/members/"+url.PathEscape(pos[0]), nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "forgot %s on every node\n", pos[0])
	return nil
}

const devicesAbout = `
The devices the running gateway knows, as "device list" prints them; with
an ID, that device as "device show" prints it.`

// runDevices is "dpgate devices [ID]": device list, or device show ID.
func runDevices(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("devices", "[-c FILE] [--json] [ID]", devicesAbout, stdout)
	fs.String("c", "", cfgFlagHelp)
	fs.Bool("json", false, "print the API's JSON reply (the list; one device is always JSON)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch len(pos) {
	case 0:
		return deviceList(args, stdout, stderr)
	case 1:
		return deviceShow(slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "--json" || a == "-json" }), stdout, stderr)
	}
	return usagef("devices takes at most one ID, got %q", pos)
}

// count is n and the noun, in the plural unless n is 1: "1 member",
// "3 pushes".
func count[N ~int | ~int64 | ~uint64](n N, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	switch {
	case strings.HasSuffix(noun, "sh"), strings.HasSuffix(noun, "ch"), strings.HasSuffix(noun, "s"), strings.HasSuffix(noun, "x"):
		return fmt.Sprintf("%d %ses", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
