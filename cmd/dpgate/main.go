// Command dpgate is the distribution-point gateway: it relays agents to
// central servers, holds their push connections, wakes them, and measures
// its uplinks. Run "dpgate --help" for the commands.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // bad command line or configuration
)

// command is one subcommand. run gets the arguments after its name.
type command struct {
	name     string
	synopsis string
	run      func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the gateway", runServe},
		{"cert", "certificates: gen, pin, agent-gen, list, add, rm", runCert},
		{"config", "check a configuration file and print it with defaults", runConfig},
		{"store", "check, recover or reset the store (push queue, devices, allow-list)", runStore},
		{"push", "push a message to a device, or to all, through the running gateway", runPush},
		{"status", "the running gateway's state: node, certificate, push, proxy, uplinks, cluster", runStatus},
		{"members", "the cluster's members as the running gateway sees them", runMembers},
		{"devices", "the devices the running gateway knows, or one: devices [ID]", runDevices},
		{"device", "the devices the running gateway knows: list, show, rm", runDevice},
		{"agent", "the reference agent: hold a push connection, print pushes", runAgent},
		{"token", "issue device tokens for push.auth token", runToken},
		{"wake", "wake a device through the running gateway; print agents' wake keys", runWake},
		{"probe", "measure a link's loss and delay against a STAMP reflector", runProbe},
		{"reflect", "run a STAMP reflector for dpgate probe and uplink measurement", runReflect},
		{"upgrade", "replace the running gateway with a new binary, no connection refused", runUpgrade},
		{"service", "install or remove dpgate as a Windows service (serve or agent)", runService},
		{"version", "print version, commit and Go version", runVersion},
		{"completion", "print a bash or zsh completion script", runCompletion},
		{"man", "print the dpgate(1) man page", runMan},
	}
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w := stdout
		if len(args) == 0 {
			w = stderr
		}
		mainUsage(w)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return exitCode(c.run(args[1:], stdout, stderr), stderr)
		}
	}
	fmt.Fprintf(stderr, "dpgate: unknown command %q\n\n", args[0])
	mainUsage(stderr)
	return exitUsage
}

func mainUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: dpgate COMMAND [flags]\n\nCommands:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0) // the longest name sets the column
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.synopsis)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nRun \"dpgate COMMAND --help\" for a command's flags.\n\n"+
		"Commands that talk to the running gateway send its admin token, read from\n"+
		"admin.token_file or data_dir/admin.token (as -c FILE says), or from the\n"+
		"environment variable DPGATE_TOKEN when that is set; they give up on a gateway\n"+
		"that does not answer after DPGATE_TIMEOUT (a Go duration; default 30s).\n")
}

// runSubcommand runs the subcommand args[0] of command name, or prints
// the command's usage (about) for none or --help.
func runSubcommand(name, about string, subs map[string]func([]string, io.Writer, io.Writer) error, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintf(stdout, "Usage: dpgate %s SUBCOMMAND [flags]\n%s\n\nRun \"dpgate %s SUBCOMMAND --help\" for its flags.\n", name, about, name)
		if len(args) == 0 {
			return usagef("%s needs a subcommand", name)
		}
		return nil
	}
	fn, ok := subs[args[0]]
	if !ok {
		names := make([]string, 0, len(subs))
		for n := range subs {
			names = append(names, n)
		}
		slices.Sort(names)
		return usagef("unknown %s subcommand %q (want one of %s)", name, args[0], strings.Join(names, ", "))
	}
	return fn(args[1:], stdout, stderr)
}

// usageError marks errors in the command line or configuration (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintf(stderr, "dpgate: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

// newFlags makes a flag set whose usage names the command and its arguments.
func newFlags(name, args, about string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: dpgate %s %s\n\n%s\n", name, args, strings.TrimSpace(about))
		if hasFlags(fs) {
			fmt.Fprintf(stdout, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// parseNoArgs parses flags as parse does, for a command that takes no
// positional arguments.
func parseNoArgs(fs *flag.FlagSet, args []string) error {
	pos, err := parse(fs, args)
	if err == nil && len(pos) > 0 {
		err = usagef("%s takes no arguments, got %q", fs.Name(), pos)
	}
	return err
}

// parse parses flags that may come before, between or after positional
// arguments, and returns the positional ones. -h/--help gives flag.ErrHelp
// after printing usage; other mistakes are usage errors.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
