package main

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
	"github.com/dpgate/dpgate/wake"
)

const pushAbout = `
Pushes DATA (or standard input when DATA is "-" or missing) to a device
through the running gateway's admin API. The push is stored before the
command returns; it reaches the device when it is or comes online, at
least once, or expires after --ttl. With --wait the command waits for the
device's acknowledgement. --all pushes to every known device (in a cluster: known to any node).`

func runPush(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("push", "[--all | DEVICE] [DATA]", pushAbout, stdout)
	cfgFile := fs.String("c", "", cfgFlagHelp)
	ttl := fs.Duration("ttl", 0, "expire the push after this long undelivered (default: push.queue_ttl)")
	wait := fs.Duration("wait", 0, "wait up to this long for the device's acknowledgement (at most 1m)")
	all := fs.Bool("all", false, "push to every known device (in a cluster: known to any node)")
	jsonOut := fs.Bool("json", false, "print the API's JSON reply")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch {
	case *ttl < 0:
		return usagef("--ttl %s is not a positive duration (leave it out for push.queue_ttl)", *ttl)
	case *wait < 0:
		return usagef("--wait %s is negative", *wait)
	case *wait > time.Minute:
		return usagef("--wait %s is longer than 1m", *wait)
	}
	var device, data string
	switch {
	case *all && len(pos) <= 1:
		if len(pos) == 1 {
			data = pos[0]
		}
	case !*all && (len(pos) == 1 || len(pos) == 2):
		device = pos[0]
		if len(pos) == 2 {
			data = pos[1]
		}
	default:
		return usagef("push takes DEVICE [DATA], or --all [DATA]")
	}
	if !*all {
		if err := checkDevices("push", device); err != nil {
			return err
		}
	}
	if data == "" || data == "-" {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
		if err != nil {
			return err
		}
		data = string(b)
	}
	api, _, err := adminClient(*cfgFile)
	if err != nil {
		return err
	}
	if *wait > 0 {
		d, _ := apiTimeout() // checked by adminClient
		api.SetTimeout(d + *wait)
	}
	req := gateway.PushRequest{}
	if utf8.ValidString(data) {
		req.Data = &data
	} else {
		b64 := base64.StdEncoding.EncodeToString([]byte(data))
		req.DataBase64 = &b64
	}
	if *ttl > 0 {
		req.TTL = ttl.String()
	}
	ctx := context.Background()
	var reply any
	if *all {
		req.All = true
		var r gateway.BulkReply
		err = api.Do(ctx, "POST", "/v1/push", req, &r)
		reply = r
		if err == nil && !*jsonOut {
			fmt.Fprintf(stdout, "queued for %s\n", count(r.Queued, "device"))
		}
		if err == nil && len(r.NotReached) > 0 {
			fmt.Fprintf(stderr, "dpgate: %s did not say which devices they know: the devices only they know were missed\n", strings.Join(r.NotReached, " and "))
		}
	} else {
		path := "/v1/devices/" + url.PathEscape(device) + "/push"
		if *wait > 0 {
			path += "?wait=" + wait.String()
		}
		var r gateway.PushReply
		err = api.Do(ctx, "POST", path, req, &r)
		reply = r
		if err == nil && !*jsonOut {
			fmt.Fprintf(stdout, "%s %s seq %d id %s\n", r.Status, r.Device, r.Seq, r.ID)
		}
	}
	if err != nil {
		return err
	}
	if *jsonOut {
		return printJSON(stdout, reply)
	}
	return nil
}

func runToken(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "issue" {
		fmt.Fprintf(stdout, "Usage: dpgate token issue DEVICE [--days N] [-c FILE]\n")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil
		}
		return usagef("token needs the subcommand issue")
	}
	fs := newFlags("token issue", "DEVICE [--days N] [-c FILE]", `
Prints a device token for push.auth: token, signed with the first key of
push.token_key_file (the file every node of a cluster shares), or with
data_dir/push-token.key (created on first use). The agent presents it in
its HELLO; every node holding the key accepts it.`, stdout)
	cfgFile := fs.String("c", "", "configuration `FILE`, for data_dir (default: built-in defaults)")
	days := fs.Int("days", 365, "days the token is valid")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 || *days < 1 {
		return usagef("token issue takes one DEVICE and --days of at least 1")
	}
	if err := wire.CheckDeviceID(pos[0]); err != nil {
		return usagef("token issue: %v (docs/PROTOCOL.md)", err)
	}
	cfg, err := loadConfig(*cfgFile)
	if err != nil {
		return err
	}
	if err := gateway.CheckSecretFile("push.token_key_file", cfg.Push.TokenKeyFile); err != nil {
		return err // as the gateway refuses it
	}
	keys, err := gateway.TokenKeys(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, wire.IssueToken(keys[0], pos[0], time.Now().Add(time.Duration(*days)*24*time.Hour)))
	return nil
}

const agentAbout = `
The reference agent: holds a push connection to the gateway (TLS, or QUIC
with --quic), reconnects with backoff, follows redirects and drains, and
prints each push as one JSON line on standard output:

  {"seq":1,"id":"<hex>","expiry":"<RFC 3339>","data":"<text>"}

(binary payloads come as "data_base64"). Connection events go to standard
error. Authenticate with a PKCS#12 agent certificate (--pfx, from dpgate
cert agent-gen) or a device token (--token-file, a file holding what
dpgate token issue printed). Secrets go in files, not on the command line,
where every user of the machine may read them in the process list:

  (umask 077; dpgate token issue pc-0042 > pc-0042.token)
  dpgate agent --server GW:13295 --pin PIN --device pc-0042 --token-file pc-0042.token`

func runAgent(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("agent", "--server HOST:PORT --pin PIN --device ID [--pfx FILE | --token-file FILE] [--quic]", agentAbout, stdout)
	var servers stringList
	fs.Var(&servers, "server", "push server `HOST:PORT` (repeat for failover)")
	var pinList stringList
	fs.Var(&pinList, "pin", "the gateway's certificate `PIN` (sha256//...); required; repeat for a cluster whose nodes have their own certificates")
	device := fs.String("device", "", "device `ID` (default: the certificate's common name)")
	pfx := fs.String("pfx", "", "PKCS#12 `FILE` with the agent certificate")
	pwFile := fs.String("password-file", "", "password `FILE` for --pfx")
	token := fs.String("token", "", "device `TOKEN` for push.auth token (visible to every local user: prefer --token-file)")
	tokenFile := fs.String("token-file", "", "`FILE` holding the device token for push.auth token (dpgate token issue); read at every connect, so a new token needs no restart")
	useQUIC := fs.Bool("quic", false, "connect over QUIC (UDP) instead of TLS over TCP")
	mac := fs.String("mac", "", "`MAC` address to report for Wake-on-LAN")
	wakeKey := fs.String("wake-key", "", "`KEY` that verifies wake-ups (from dpgate wake key); listens on --wake-listen")
	wakeListen := fs.String("wake-listen", ":15000", "UDP `ADDR` for wake-ups (with --wake-key)")
	wakeSecret := fs.String("wake-secret", "", "this device's `SECRET` (visible to every local user: prefer --wake-secret-file)")
	wakeSecretFile := fs.String("wake-secret-file", "", "`FILE` holding this device's secret (dpgate wake key --device): send a shutdown notice on exit")
	notify := fs.String("notify", "", "gateway UDP `ADDR` for the shutdown notice (default: the first server's host, port 13000)")
	minBackoff := fs.Duration("min-backoff", 500*time.Millisecond, "first wait between reconnect attempts; it doubles per failure")
	maxBackoff := fs.Duration("max-backoff", 30*time.Second, "longest wait between reconnect attempts (a wake-up cuts it short)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 || len(servers) == 0 || len(pinList) == 0 {
		return usagef("agent needs --server and --pin, and no arguments")
	}
	pins, err := tlsconf.ParsePins(pinList)
	if err != nil {
		return usageError{err}
	}
	if *token, err = secretFlag("token", *token, *tokenFile, stderr); err != nil {
		return err
	}
	var tokenFunc func() (string, error)
	if *tokenFile != "" {
		// Read again at every connect: a token replaced in the file (new
		// token keys) is used without restarting the agent.
		tokenFunc = func() (string, error) { return secretFlag("token", "", *tokenFile, stderr) }
	}
	if *wakeSecret, err = secretFlag("wake-secret", *wakeSecret, *wakeSecretFile, stderr); err != nil {
		return err
	}
	tcfg := tlsconf.PinnedClientConfig(pins, "dpgate")
	if *pfx != "" {
		cert, err := tlsconf.LoadPFX(*pfx, *pwFile)
		if err != nil {
			return err
		}
		tcfg.Certificates = []tls.Certificate{cert}
		if *device == "" {
			*device = cert.Leaf.Subject.CommonName
		}
	}
	if *device == "" {
		return usagef("agent needs --device (or --pfx, whose common name is the device id)")
	}
	var hw net.HardwareAddr
	if *mac != "" {
		if hw, err = net.ParseMAC(*mac); err != nil || len(hw) != 6 {
			return usagef("--mac %q is not a 6-byte MAC address", *mac)
		}
	}
	var key, secret wake.Verifier
	if *wakeKey != "" {
		if key, err = wake.ParseKey(*wakeKey); err != nil {
			return usageError{err}
		}
	}
	if *wakeSecret != "" {
		if secret, err = wake.ParseKey(*wakeSecret); err != nil || secret.Alg != wake.AlgHMAC {
			return usagef("the wake secret (--wake-secret-file) is hmac:BASE64 (dpgate wake key --device %s)", *device)
		}
		if *notify == "" {
			host, _, _ := net.SplitHostPort(servers[0])
			*notify = net.JoinHostPort(host, "13000")
		}
	}
	enc := json.NewEncoder(stdout)
	c, err := client.New(client.Config{
		Servers:    servers,
		DeviceID:   *device,
		TLS:        tcfg,
		QUIC:       *useQUIC,
		Token:      *token,
		TokenFunc:  tokenFunc,
		MAC:        hw,
		MinBackoff: *minBackoff,
		MaxBackoff: *maxBackoff,
		// Reported in HELLO so wake-up datagrams can reach this agent.
		LocalAddr: localAddrFor(servers[0]),
		OnPush: func(m wire.Message) {
			line := map[string]any{
				"seq":    m.Seq,
				"id":     hex.EncodeToString(m.ID[:]),
				"expiry": time.UnixMilli(m.Expiry).UTC().Format(time.RFC3339Nano),
			}
			if utf8.Valid(m.Payload) {
				line["data"] = string(m.Payload)
			} else {
				line["data_base64"] = base64.StdEncoding.EncodeToString(m.Payload)
			}
			enc.Encode(line)
		},
		OnEvent: func(e client.Event) {
			msg := fmt.Sprintf("dpgate agent: %s %s", e.Kind, e.Server)
			if e.Err != nil {
				msg += ": " + e.Err.Error()
			}
			fmt.Fprintln(stderr, msg)
		},
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(stopCtx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *wakeKey != "" {
		pc, err := agentWake(*wakeListen, key, *device, c, stderr)
		if err != nil {
			return err
		}
		defer pc.Close()
		fmt.Fprintf(stderr, "dpgate agent: wake-ups on %s\n", pc.LocalAddr())
	}
	err = c.Run(ctx)
	if *wakeSecret != "" {
		if nerr := shutdownNotice(*notify, *device, secret); nerr != nil {
			fmt.Fprintf(stderr, "dpgate agent: shutdown notice to %s: %v\n", *notify, nerr)
		} else {
			fmt.Fprintf(stderr, "dpgate agent: shutdown notice sent to %s\n", *notify)
		}
	}
	return err
}

// secretFlag is a credential given in a file (--NAME-file) or inline
// (--NAME). Inline still works, for scripts, but every user of the
// machine may read a command line (ps, /proc/PID/cmdline, a service's
// registry entry), so it is warned about; a file every user may read is
// refused, as the gateway refuses its own.
func secretFlag(name, inline, file string, stderr io.Writer) (string, error) {
	switch {
	case inline != "" && file != "":
		return "", usagef("give --%s or --%s-file, not both", name, name)
	case inline != "":
		fmt.Fprintf(stderr, "dpgate agent: warning: other users of this machine may read --%s in the process list; put it in a file (umask 077) and give --%s-file\n", name, name)
		return inline, nil
	case file == "":
		return "", nil
	}
	if err := gateway.CheckSecretFile("--"+name+"-file", file); err != nil {
		return "", err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--%s-file: %w", name, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("--%s-file %s is empty", name, file)
	}
	return v, nil
}

// localAddrFor is the local address the system would use toward server.
// A connected UDP socket only picks the route; it sends nothing.
func localAddrFor(server string) netip.Addr {
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		return netip.Addr{}
	}
	conn, err := net.Dial("udp", net.JoinHostPort(strings.Trim(host, "[]"), "9"))
	if err != nil {
		return netip.Addr{}
	}
	defer conn.Close()
	ap, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr()
}
