package gateway

import (
	"crypto/x509"
	"fmt"

	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/tlsconf"
)

// AgentCAFile is the agent CA (certificate and key) in the data directory,
// created on first use.
const AgentCAFile = "agent-ca.pem"

// IssueAgentCert issues a client certificate for device cn (its common
// name and DNS name), signed by the agent CA in the data directory, and
// returns it with the PKCS#12 container of certificate, key and CA
// (password may be empty). The caller adds it to the allow-list.
func IssueAgentCert(cfg *config.Config, cn string, t tlsconf.Template, password string) (*x509.Certificate, []byte, error) {
	ca, _, err := tlsconf.LoadOrCreate(cfg.InDataDir(AgentCAFile), tlsconf.Template{
		CommonName: "dpgate agent CA " + cfg.Node.Name, CA: true, Days: 3650,
	}, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("agent CA: %w", err)
	}
	t.CommonName, t.DNSNames, t.Client = cn, []string{cn}, true
	c, err := tlsconf.Issue(t, &ca)
	if err != nil {
		return nil, nil, err
	}
	pfx, err := tlsconf.EncodePFX(c, []*x509.Certificate{ca.Leaf}, password)
	if err != nil {
		return nil, nil, err
	}
	return c.Leaf, pfx, nil
}
