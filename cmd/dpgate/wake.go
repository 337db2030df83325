package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"

	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/wake"
)

func runWake(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "key" {
		return runWakeKey(args[1:], stdout)
	}
	fs := newFlags("wake", "DEVICE [-c FILE] [--json] | key [--device ID] [-c FILE]", `
Wakes a device through the running gateway: a WAKE frame on its push
connection when it is connected, else the signed wake-up datagram to its
last address (UDP wake.agent_port) and, when its MAC is known,
Wake-on-LAN. Prints each attempt.

dpgate wake key prints what an agent needs: the public key that verifies
the gateway's wake-ups (ed25519:...), or with --device the device's own
secret (hmac:...), which signs its shutdown notices.`, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE`, for the admin API address (default: built-in defaults)")
	jsonOut := fs.Bool("json", false, "print the result as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("wake takes one DEVICE (or: wake key)")
	}
	if err := checkDevices("wake", pos...); err != nil {
		return err
	}
	api, _, err := adminClient(*cfgFile)
	if err != nil {
		return err
	}
	var r wake.Result
	if err := api.Do(context.Background(), "POST", "/v1/devices/"+url.PathEscape(pos[0])+"/wake", struct{}{}, &r); err != nil {
		return err
	}
	if *jsonOut {
		return printJSON(stdout, r)
	}
	for _, a := range r.Attempts {
		status := "sent"
		if a.Err != "" {
			status = "failed: " + a.Err
		}
		fmt.Fprintf(stdout, "%-8s %-24s %s\n", a.Via, a.To, status)
	}
	return nil
}

func runWakeKey(args []string, stdout io.Writer) error {
	fs := newFlags("wake key", "[--device ID] [-c FILE]", `
Prints the key an agent verifies wake-ups with (ed25519:BASE64, for
dpgate agent --wake-key), or with --device the device's own secret
(hmac:BASE64, for the agent's --wake-secret-file; with wake.signature:
hmac it verifies wake-ups too). Reads the keys in data_dir, creating
them on first use.`, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE`, for data_dir (default: built-in defaults)")
	device := fs.String("device", "", "print this device's secret instead")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgFile)
	if err != nil {
		return err
	}
	if err := gateway.CheckSecretFile("wake.secret_file", cfg.Wake.SecretFile); err != nil {
		return err // as the gateway refuses it
	}
	keys, err := wake.LoadOrCreateKeys(cfg.Node.DataDir, cfg.Wake.SecretFile)
	if err != nil {
		return err
	}
	if *device != "" {
		fmt.Fprintln(stdout, keys.DeviceSecretString(*device))
	} else {
		fmt.Fprintln(stdout, keys.PublicKeyString())
	}
	return nil
}

// agentWake listens for wake-ups on addr and wakes c on each verified
// one; rejected datagrams are reported on stderr. It returns the socket
// (the caller closes it) after starting the reader.
func agentWake(addr string, key wake.Verifier, device string, c *client.Client, stderr io.Writer) (net.PacketConn, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("--wake-listen: %w", err)
	}
	rcv := wake.NewReceiver(key)
	go func() { // ends when the socket is closed
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if _, err := rcv.Check(buf[:n], device); err != nil {
				fmt.Fprintf(stderr, "dpgate agent: wake-up from %s rejected (%s): %v\n", from, wake.Reason(err), err)
				continue
			}
			c.Wake()
		}
	}()
	return pc, nil
}

// shutdownNotice tells the gateway this agent is going away.
func shutdownNotice(to string, device string, secret wake.Verifier) error {
	b, err := wake.ShutdownNotice(device, secret)
	if err != nil {
		return err
	}
	conn, err := net.Dial("udp", to)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write(b)
	return err
}
