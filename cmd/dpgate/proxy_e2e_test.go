//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpgate/dpgate/internal/e2e"
	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/internal/testutil"
	"github.com/dpgate/dpgate/tlsconf"
)

// startCentral runs the stand-in central server (testdata/central,
// built by TestMain without the race detector) and returns its address.
func startCentral(t *testing.T, certFile string) (string, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(centralBin, certFile)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "central listening ")
	if err != nil || !ok {
		t.Fatalf("central server did not start: %q %v", line, err)
	}
	return addr, cmd
}

// TestProxyEndToEnd runs the built dpgate with a config file in front of
// a central server in another process, with agent certificates required.
func TestProxyEndToEnd(t *testing.T) {
	t.Parallel() // its own ports and data directory
	dir := t.TempDir()
	centralPEM := filepath.Join(dir, "central.pem")
	if r := dpgate(t, nil, "cert", "gen", "--cn", "central", "--out", centralPEM); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	centralPin := strings.TrimSpace(dpgate(t, nil, "cert", "pin", centralPEM).Stdout)
	centralAddr, central := startCentral(t, centralPEM)

	proxyAddr, adminAddr := testutil.FreePort(t), testutil.FreePort(t)
	cfg := writeConfig(t, dir, adminAddr, fmt.Sprintf(`proxy:
  listen: %s
  upstreams:
    - address: %s
      pins: [%q]
  validate_agent_certs: true
  health_interval: 100ms
`, proxyAddr, centralAddr, centralPin))
	s := startServe(t, nil, "-c", cfg)
	s.WaitLog(t, `msg="proxy listening" addr=`+proxyAddr)

	// An agent certificate issued through the running gateway.
	pfx := filepath.Join(dir, "agent.pfx")
	if r := dpgate(t, nil, "cert", "agent-gen", "-c", cfg, "--cn", "device-9", "--out", pfx); r.Code != 0 {
		t.Fatalf("agent-gen: %s", r.Stderr)
	}
	agentCert, err := tlsconf.LoadPFX(pfx, "")
	if err != nil {
		t.Fatal(err)
	}
	gwPin := e2e.GatewayPin(t, bin, dir)
	pins, _ := tlsconf.ParsePins([]string{gwPin})
	agentCfg := func(c *tls.Certificate) *tls.Config {
		cfg := tlsconf.PinnedClientConfig(pins, "gateway")
		if c != nil {
			cfg.Certificates = []tls.Certificate{*c}
		}
		return cfg
	}
	echo := func(cfg *tls.Config, msg string) (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", proxyAddr, cfg)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, msg)
		c.CloseWrite()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if got, err := echo(agentCfg(&agentCert), "agent to central"); err != nil || got != "agent to central" {
		t.Fatalf("relay through dpgate: %q, %v", got, err)
	}

	stranger, _ := tlsconf.Issue(tlsconf.Template{CommonName: "stranger", Client: true}, nil)
	if got, _ := echo(agentCfg(&stranger), "x"); got != "" {
		t.Errorf("unknown agent certificate relayed %q", got)
	}
	s.WaitLog(t, `msg="proxy: agent certificate refused .*fingerprint=`+tlsconf.Fingerprint(stranger.Leaf)+`.*reason=unknown`)

	if r := dpgate(t, nil, "cert", "rm", "-c", cfg, tlsconf.Fingerprint(agentCert.Leaf)); r.Code != 0 {
		t.Fatalf("cert rm: %s", r.Stderr)
	}
	if got, _ := echo(agentCfg(&agentCert), "y"); got != "" {
		t.Errorf("deleted agent certificate relayed %q", got)
	}

	api := apiClient(t, cfg)
	var st gateway.Status
	if err := api.Do(context.Background(), "GET", "/v1/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Proxy == nil || len(st.Proxy.Upstreams) != 1 || st.Proxy.Upstreams[0].Relays != 1 || st.Proxy.BytesIn != int64(len("agent to central")) {
		t.Errorf("status %+v, want one upstream with 1 relay and %d bytes in", st.Proxy, len("agent to central"))
	}

	// The central server dies: health checks eject it and /healthz says so.
	central.Process.Signal(syscall.SIGKILL)
	waitFor(t, 30*time.Second, func() error {
		resp, err := http.Get(api.Base() + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			return errors.New("/healthz still " + resp.Status)
		}
		return nil
	})
	if code, _ := s.Stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}
}
