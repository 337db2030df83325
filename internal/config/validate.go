package config

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dpgate/dpgate/proxy"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/tlsconf"
	"github.com/dpgate/dpgate/wake"
)

// nodeName is a node's name: a letter or digit, then letters, digits,
// '.', '_' or '-' (at most 63 characters, checked apart: with a bounded
// repetition the two patterns compiled into programs whose making took
// 0.8-1.3 ms of every dpgate command's package inits, 0.04-0.09 ms now).
var nodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Validate checks every value; the error names the first bad key.
func (c *Config) Validate() error {
	if len(c.Node.Name) > 63 || !nodeName.MatchString(c.Node.Name) {
		return c.errAt("node.name", "%q is not a valid node name (letters, digits, '.', '_', '-'; at most 63)", c.Node.Name)
	}
	if err := c.oneOf("log.level", c.Log.Level, LogDebug, LogInfo, LogWarn, LogError); err != nil {
		return err
	}
	if err := c.oneOf("log.format", c.Log.Format, LogText, LogJSON); err != nil {
		return err
	}

	if err := c.hostPort("admin.listen", c.Admin.Listen, true); err != nil {
		return err
	}
	if len(c.Admin.Socket) > 107 { // sun_path
		return c.errAt("admin.socket", "%q is %d bytes; a Unix socket path has at most 107", c.Admin.Socket, len(c.Admin.Socket))
	}
	if Enabled(c.Admin.Listen) && !IsLoopback(c.Admin.Listen) && c.Admin.TokenFile == "" {
		return c.errAt("admin.listen", "%s is not a loopback address: set admin.token_file so the API requires a bearer token", c.Admin.Listen)
	}
	if c.TLS.Key != "" && c.TLS.Cert == "" {
		return c.errAt("tls.key", "set tls.cert too")
	}

	if err := c.validateProxy(); err != nil {
		return err
	}

	u := c.Push
	if err := c.hostPort("push.listen", u.Listen, true); err != nil {
		return err
	}
	if err := c.oneOf("push.auth", u.Auth, push.AuthCert, push.AuthToken, push.AuthNone); err != nil {
		return err
	}
	if u.Auth == push.AuthNone && Enabled(u.Listen) && !IsLoopback(u.Listen) {
		return c.errAt("push.auth", "none is allowed only with a loopback push.listen, not %s", u.Listen)
	}
	if u.Keepalive.D() > 65535*time.Second {
		return c.errAt("push.keepalive", "%.0fs is above the maximum 65535s (WELCOME carries it in 16 bits of seconds)", u.Keepalive.D().Seconds())
	}
	if err := c.atLeast("push.keepalive", u.Keepalive, time.Second); err != nil {
		return err
	}
	if err := c.atLeast("push.queue_ttl", u.QueueTTL, time.Second); err != nil {
		return err
	}
	if u.MaxConnections < 0 {
		return c.errAt("push.max_connections", "must not be negative")
	}
	if u.MaxPayload > 60<<10 {
		return c.errAt("push.max_payload", "%d bytes is above 60KiB (a push frame is at most 64KiB)", u.MaxPayload)
	}

	w := c.Wake
	if err := c.hostPort("wake.listen", w.Listen, true); err != nil {
		return err
	}
	if err := c.hostPort("wake.shutdown_listen", w.ShutdownListen, true); err != nil {
		return err
	}
	if err := c.port("wake.agent_port", w.AgentPort); err != nil {
		return err
	}
	if err := c.oneOf("wake.signature", w.Signature, wake.SignatureEd25519, wake.SignatureHMAC); err != nil {
		return err
	}
	for i, p := range w.WOLPorts {
		if err := c.port("wake.wol_ports["+strconv.Itoa(i)+"]", p); err != nil {
			return err
		}
	}

	l := c.Link
	if l.Limits.Delay.D() < time.Millisecond {
		return c.errAt("link.limits.delay", "%s is below 1ms", l.Limits.Delay.D())
	}
	if err := c.atLeast("link.probe_interval", l.ProbeInterval, time.Millisecond); err != nil {
		return err
	}
	if l.Window.D() < 10*l.ProbeInterval.D() {
		return c.errAt("link.window", "%s holds fewer than 10 probes at link.probe_interval %s", l.Window.D(), l.ProbeInterval.D())
	}
	if err := c.hostPort("link.reflector_listen", l.ReflectorListen, false); err != nil {
		return err
	}

	return c.validateCluster()
}

func (c *Config) validateProxy() error {
	p := c.Proxy
	if err := c.hostPort("proxy.listen", p.Listen, false); err != nil {
		return err
	}
	for i, u := range p.Upstreams {
		key := "proxy.upstreams[" + strconv.Itoa(i) + "]"
		if u.Address == "" {
			return c.errAt(key, "address is required")
		}
		if err := c.hostPortRequired(key+".address", u.Address); err != nil {
			return err
		}
		for j, pin := range u.Pins {
			if _, err := tlsconf.ParsePin(pin); err != nil {
				return c.errAt(key+".pins["+strconv.Itoa(j)+"]", "%v", err)
			}
		}
		if u.Probe != "" {
			if err := c.hostPortRequired(key+".probe", u.Probe); err != nil {
				return err
			}
		}
		if u.ClientCertPasswordFile != "" && u.ClientCert == "" {
			return c.errAt(key+".client_cert_password_file", "set client_cert too")
		}
	}
	if err := c.oneOf("proxy.balance", p.Balance, proxy.LeastBusy, proxy.Ordered); err != nil {
		return err
	}
	if err := c.oneOf("proxy.proxy_protocol", p.ProxyProtocol, Off, ProxyProtocolV2); err != nil {
		return err
	}
	for key, d := range map[string]Duration{
		"proxy.connection_timeout": p.ConnectionTimeout,
		"proxy.handshake_timeout":  p.HandshakeTimeout,
		"proxy.idle_timeout":       p.IdleTimeout,
		"proxy.health_interval":    p.HealthInterval,
	} {
		if err := c.atLeast(key, d, 10*time.Millisecond); err != nil {
			return err
		}
	}
	if p.MaxConnections < 0 {
		return c.errAt("proxy.max_connections", "must not be negative")
	}
	return nil
}

func (c *Config) validateCluster() error {
	cl := c.Cluster
	if err := c.hostPort("cluster.bind", cl.Bind, false); err != nil {
		return err
	}
	if cl.Bind == "" {
		if len(cl.Join) > 0 {
			return c.errAt("cluster.join", "set cluster.bind to join a cluster")
		}
	} else {
		if err := c.hostPort("cluster.advertise", cl.Advertise, false); err != nil {
			return err
		}
		if cl.SecretKeyFile == "" {
			// Loopback too: any local user may send to a loopback port, and
			// unauthenticated gossip would let them add certificates to
			// the allow-list, pose as a node, or switch validation off.
			return c.errAt("cluster.bind", "set cluster.secret_key_file ((umask 077; openssl rand -base64 32 > gossip.key), the same file on every node): gossip carries the agent allow-list, and any local user may send to %s", cl.Bind)
		}
	}
	for i, j := range cl.Join {
		if err := c.hostPortRequired("cluster.join["+strconv.Itoa(i)+"]", j); err != nil {
			return err
		}
	}
	if err := c.hostPort("cluster.dns.listen", cl.DNS.Listen, false); err != nil {
		return err
	}
	if cl.Bind != "" && c.Push.Auth == push.AuthToken && c.Push.TokenKeyFile == "" && Enabled(c.Push.Listen) {
		return c.errAt("push.token_key_file", "push.auth token in a cluster needs one token key file shared by every node (each node's own data_dir/push-token.key would refuse the tokens of the others): copy one there on every node, e.g. (umask 077; head -c 32 /dev/urandom | base64 > /etc/dpgate/push-token.key)")
	}
	if cl.MinCopies < 1 || cl.MinCopies > 2 {
		return c.errAt("cluster.min_copies", "%d: want 1 or 2 (a push is committed on at most its two owners, and the node it is connected to)", cl.MinCopies)
	}
	if Enabled(cl.DNS.Listen) && cl.Bind == "" {
		return c.errAt("cluster.dns.listen", "the answers are the cluster's view of its nodes: set cluster.bind too (one node with a bind address is a cluster of one)")
	}
	if err := checkDomain(cl.DNS.Domain); err != nil {
		return c.errAt("cluster.dns.domain", "%q %v", cl.DNS.Domain, err)
	}
	// Load is compared once a refresh (a second): less would not be sooner.
	if err := c.atLeast("cluster.rebalance_after", cl.RebalanceAfter, time.Second); err != nil {
		return err
	}
	// memberlist needs time for a probe, its timeout and indirect probes.
	return c.atLeast("cluster.probe_interval", cl.ProbeInterval, 50*time.Millisecond)
}

func (c *Config) oneOf(key, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return c.errAt(key, "%q is not one of %v", v, allowed)
}

func (c *Config) atLeast(key string, d Duration, min time.Duration) error {
	if d.D() < min {
		return c.errAt(key, "%s is below the minimum %s", d.D(), min)
	}
	return nil
}

func (c *Config) port(key string, p int) error {
	if p < 1 || p > 65535 {
		return c.errAt(key, "%d is not a port (1-65535)", p)
	}
	return nil
}

// hostPort checks a listen address; "" is allowed, and "off" when mayBeOff.
func (c *Config) hostPort(key, addr string, mayBeOff bool) error {
	if addr == "" || (mayBeOff && addr == Off) {
		return nil
	}
	return c.hostPortRequired(key, addr)
}

func (c *Config) hostPortRequired(key, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return c.errAt(key, "%q is not host:port (%v)", addr, stripAddrErr(err))
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return c.errAt(key, "%q has no valid port", addr)
	}
	return nil
}

func stripAddrErr(err error) string {
	if ae, ok := err.(*net.AddrError); ok {
		return ae.Err
	}
	return err.Error()
}

// IsLoopback reports whether a host:port address binds only loopback.
// An empty host (all interfaces) is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// dnsLabel is a letter-digit-hyphen label (RFC 1035; underscore too, as
// in SRV names), 1 to 63 characters (checked apart, as for nodeName), no
// hyphen at either end.
var dnsLabel = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?$`)

// checkDomain says why name is not a DNS zone name dpgate can answer for.
func checkDomain(name string) error {
	trimmed := strings.TrimSuffix(name, ".")
	if trimmed == "" {
		return errors.New("is not a domain name (the root zone is not ours to answer)")
	}
	if len(trimmed) > 253-len("_dpgate-push._tcp.") {
		return fmt.Errorf("is %d characters, too long for the names below it to stay within 253", len(trimmed))
	}
	for _, l := range strings.Split(trimmed, ".") {
		if len(l) > 63 || !dnsLabel.MatchString(l) {
			return fmt.Errorf("has the label %q: want 1 to 63 letters, digits, hyphens or underscores, no hyphen at either end", l)
		}
	}
	return nil
}
