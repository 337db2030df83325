package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/push/wire"
)

const deviceAbout = `
The devices the running gateway knows (every device that said HELLO to
it, or has pushes queued there), through its admin API: list them, show
one with its queue, last wake-up and path figures, or remove one and its
queued pushes. In a cluster, list and rm span every node: each node
knows the devices that connected to it and keeps the queues it owns.`

func runDevice(args []string, stdout, stderr io.Writer) error {
	return runSubcommand("device", deviceAbout, map[string]func([]string, io.Writer, io.Writer) error{
		"list": deviceList, "show": deviceShow, "rm": deviceRm,
	}, args, stdout, stderr)
}

func deviceList(args []string, stdout, stderr io.Writer) error {
	cfgFile, jsonOut, err := apiCommand("device list", "Lists the devices the gateway knows (in a cluster: every node, with the node each is\nconnected to or was last seen at): connected or not, queued pushes, last seen.", "print the API's JSON reply", args, stdout)
	if err != nil {
		return err
	}
	api, _, err := adminClient(cfgFile)
	if err != nil {
		return err
	}
	var reply gateway.DeviceList
	if err := api.Do(context.Background(), "GET", "/v1/devices", nil, &reply); err != nil {
		return err
	}
	if len(reply.NotReached) > 0 {
		fmt.Fprintf(stderr, "dpgate: %s did not answer: the devices only they know are missing\n", strings.Join(reply.NotReached, " and "))
	}
	if jsonOut {
		return printJSON(stdout, reply)
	}
	cluster := slices.ContainsFunc(reply.Devices, func(d gateway.DeviceEntry) bool { return d.Node != "" })
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(cols ...string) { // NODE last, in a cluster only
		if !cluster {
			cols = cols[:len(cols)-1]
		}
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
	}
	row("DEVICE", "CONNECTED", "QUEUED", "LAST SEEN", "ADDRESS", "NODE")
	for _, d := range reply.Devices {
		conn := "no"
		if d.Connected {
			conn = "yes (" + d.Transport + ")"
		}
		seen := "never"
		if !d.LastSeen.IsZero() {
			seen = d.LastSeen.Format(time.DateTime)
		}
		row(d.ID, conn, strconv.Itoa(d.Queued), seen, d.RemoteAddr, d.Node)
	}
	return tw.Flush()
}

func deviceShow(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("device show", "[-c FILE] DEVICE", "Prints one device's status as JSON: queue, connection, last wake-up, path figures.", stdout)
	cfgFile := fs.String("c", "", cfgFlagHelp)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("device show takes one DEVICE")
	}
	if err := checkDevices("device show", pos...); err != nil {
		return err
	}
	api, _, err := adminClient(*cfgFile)
	if err != nil {
		return err
	}
	var d gateway.DeviceReply
	if err := api.Do(context.Background(), "GET", "/v1/devices/"+url.PathEscape(pos[0]), nil, &d); err != nil {
		return err
	}
	return printJSON(stdout, d)
}

func deviceRm(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("device rm", "[-c FILE] DEVICE...", `
Forgets each device and drops its queued pushes (they are never
delivered): on this node and, in a cluster, on every other node that
knows it (the owners of its queue, the nodes it was connected to). A
connected device is refused: it would say HELLO again at once; stop its
agent first.`, stdout)
	cfgFile := fs.String("c", "", cfgFlagHelp)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("device rm takes one or more DEVICEs")
	}
	if err := checkDevices("device rm", pos...); err != nil {
		return err
	}
	api, _, err := adminClient(*cfgFile)
	if err != nil {
		return err
	}
	for _, id := range pos {
		var rm gateway.DeviceRemoved
		if err := api.Do(context.Background(), "DELETE", "/v1/devices/"+url.PathEscape(id), nil, &rm); err != nil {
			return fmt.Errorf("device %s: %w", id, err)
		}
		if len(rm.Nodes) > 0 {
			fmt.Fprintf(stdout, "removed %s on %s\n", id, strings.Join(rm.Nodes, ", "))
		} else {
			fmt.Fprintf(stdout, "removed %s\n", id)
		}
		if len(rm.NotReached) > 0 {
			fmt.Fprintf(stderr, "dpgate: %s did not answer and may still know %s: run dpgate device rm %s there once it is back\n", strings.Join(rm.NotReached, " and "), id, id)
		}
	}
	return nil
}

// checkDevices refuses device ids the gateway would refuse (empty, too
// long, white space), as a usage error, before anything is sent: an empty
// one would otherwise reach the API as another route.
func checkDevices(cmd string, ids ...string) error {
	for _, id := range ids {
		if err := wire.CheckDeviceID(id); err != nil {
			return usagef("%s: %v", cmd, err)
		}
	}
	return nil
}
