package gateway

import (
	"fmt"
	"strconv"

	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/proxy"
	"github.com/dpgate/dpgate/tlsconf"
)

// newProxy builds the proxy from proxy.* keys, loading each upstream's
// PKCS#12 client certificate; the proxy is off while no upstream is set.
func (g *Gateway) newProxy(ls Listeners) error {
	c := g.cfg.Proxy
	if !g.cfg.ProxyEnabled() {
		g.log.Info("proxy off: no upstream configured")
		return nil
	}
	pc := proxy.Config{
		Identity:          g.id,
		Balance:           c.Balance,
		ConnectionTimeout: c.ConnectionTimeout.D(),
		HandshakeTimeout:  c.HandshakeTimeout.D(),
		IdleTimeout:       c.IdleTimeout.D(),
		MaxConnections:    g.limits.proxy,
		SourceRate:        c.SourceRate,
		MaxIngressRate:    uint64(c.MaxIngressRate),
		ProxyProtocol:     c.ProxyProtocol == config.ProxyProtocolV2,
		KeyExchange:       g.keyExchange,
		HealthInterval:    c.HealthInterval.D(),
		Registerer:        g.tel.Registry,
		Logger:            g.log,
	}
	if c.ValidateAgentCerts {
		pc.AllowList = g.allow
	}
	ups, err := upstreamConfigs(g.cfg)
	if err != nil {
		return err
	}
	pc.Upstreams = ups
	p, err := proxy.New(pc)
	if err != nil {
		return err
	}
	g.proxy = p
	pt := part{name: "proxy", shutdown: p.Shutdown, close: p.Close}
	if ln := ls.Proxy; ln != nil {
		g.proxyAddr = ln.Addr().String()
		pt.serve = []func() error{func() error {
			g.log.Info("proxy listening", "addr", ln.Addr().String(), "upstreams", len(c.Upstreams),
				"balance", c.Balance, "validate_agent_certs", c.ValidateAgentCerts)
			return p.Serve(ln)
		}}
	} else {
		g.log.Warn("proxy configured but given no listener")
	}
	g.add(pt)
	return nil
}

// upstreamConfigs are proxy.upstreams as the proxy takes them: pins
// parsed, PKCS#12 client certificates loaded.
func upstreamConfigs(cfg *config.Config) ([]proxy.UpstreamConfig, error) {
	var out []proxy.UpstreamConfig
	for i, u := range cfg.Proxy.Upstreams {
		key := "proxy.upstreams[" + strconv.Itoa(i) + "]"
		pins, err := tlsconf.ParsePins(u.Pins)
		if err != nil {
			return nil, fmt.Errorf("gateway: %s.pins: %w", key, err)
		}
		uc := proxy.UpstreamConfig{Address: u.Address, Pins: pins}
		if u.ClientCert != "" {
			cert, err := tlsconf.LoadPFX(u.ClientCert, u.ClientCertPasswordFile)
			if err != nil {
				return nil, fmt.Errorf("gateway: %s.client_cert: %w", key, err)
			}
			uc.ClientCert = &cert
		}
		out = append(out, uc)
	}
	return out, nil
}
