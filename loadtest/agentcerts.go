package loadtest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/dpgate/dpgate/tlsconf"
)

// AgentCerts are client certificates for a load test's agents, for a
// gateway on push.auth cert (the default): one ECDSA P-256 key and a
// self-signed certificate per device id (common name agent-N, valid two
// days), in one PEM file the worker processes read (the key, then the
// certificates in agent order). Register adds them to the gateways'
// allow-lists through the admin API, Unregister removes them again.
type AgentCerts struct {
	File         string
	certsPEM     [][]byte // one PEM block per agent
	fingerprints []string
}

// IssueAgentCerts issues n certificates for agent-0 .. agent-(n-1) into
// dir/agent-certs.pem.
func IssueAgentCerts(dir string, n int) (*AgentCerts, error) {
	key, err := tlsconf.GenerateKey("ecdsa-p256")
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	var file bytes.Buffer
	pem.Encode(&file, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	a := &AgentCerts{File: filepath.Join(dir, "agent-certs.pem")}
	for i := range n {
		c, err := tlsconf.Issue(tlsconf.Template{CommonName: fmt.Sprintf("agent-%d", i), Client: true, Days: 2, Key: key}, nil)
		if err != nil {
			return nil, err
		}
		b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
		file.Write(b)
		a.certsPEM = append(a.certsPEM, b)
		a.fingerprints = append(a.fingerprints, tlsconf.Fingerprint(c.Leaf))
	}
	return a, os.WriteFile(a.File, file.Bytes(), 0o600)
}

// LoadAgentCerts reads a file IssueAgentCerts wrote: the certificate of
// agent i is the i-th.
func LoadAgentCerts(file string) ([]tls.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var key crypto.Signer
	var out []tls.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		switch blk.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			key, _ = k.(crypto.Signer)
		case "CERTIFICATE":
			if key == nil {
				return nil, fmt.Errorf("%s: a certificate before the key", file)
			}
			out = append(out, tls.Certificate{Certificate: [][]byte{blk.Bytes}, PrivateKey: key})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no certificates", file)
	}
	return out, nil
}

// certBatch is how many certificates one POST /v1/certs carries.
const certBatch = 1000

// Register adds the certificates to the allow-list of every admin API
// (one is enough in a cluster, which replicates it; several standalone
// gateways each need them).
func (a *AgentCerts) Register(ctx context.Context, admins []string, token string, p Progress) error {
	if len(admins) == 0 {
		return errors.New("agent certificates need --admin: they go into the gateway's allow-list")
	}
	for _, base := range admins {
		for i := 0; i < len(a.certsPEM); i += certBatch {
			body := bytes.Join(a.certsPEM[i:min(i+certBatch, len(a.certsPEM))], nil)
			if err := adminCall(ctx, http.MethodPost, base+"/v1/certs", token, body, http.StatusCreated); err != nil {
				return fmt.Errorf("adding agent certificates to %s: %w", base, err)
			}
			p.count("agent certificates added", int64(min(i+certBatch, len(a.certsPEM))), int64(len(a.certsPEM)))
		}
	}
	return nil
}

// Unregister removes the certificates from every admin API's allow-list
// (one store commit each: a few seconds for 10,000).
func (a *AgentCerts) Unregister(ctx context.Context, admins []string, token string, p Progress) error {
	var errs []error
	for _, base := range admins {
		for i, fp := range a.fingerprints {
			err := adminCall(ctx, http.MethodDelete, base+"/v1/certs/"+fp, token, nil, http.StatusOK)
			if err != nil && !errors.Is(err, errNotFound) { // gone already (another node of the cluster)
				errs = append(errs, fmt.Errorf("removing agent certificate %s from %s: %w", fp, base, err))
				break
			}
			p.count("agent certificates removed", int64(i+1), int64(len(a.fingerprints)))
		}
	}
	return errors.Join(errs...)
}

var errNotFound = errors.New("not found")

// adminCall sends one admin API request and checks its status.
func adminCall(ctx context.Context, method, url, token string, body []byte, want int) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/x-pem-file")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch resp.StatusCode {
	case want:
		return nil
	case http.StatusNotFound:
		return errNotFound
	}
	return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
}

// Credentials are how a load test's agents authenticate, as the worker
// processes' flags: device tokens from push.token_key_file, or
// certificates issued and registered for the run.
type Credentials struct {
	TokenKeyFile string // --token-key
	AgentCerts   bool   // --agent-certs: issue, register, remove at the end
}

// prepare issues and registers what the agents need and returns the
// worker flags and what undoes it (removing the certificates, with a
// context of its own: a run cancelled by Ctrl-C still cleans up).
func (c Credentials) prepare(ctx context.Context, agents int, admins []string, token string, p Progress) (args []string, undo func(), err error) {
	undo = func() {}
	if c.TokenKeyFile != "" {
		args = append(args, "--token-key", c.TokenKeyFile)
	}
	if !c.AgentCerts {
		return args, undo, nil
	}
	dir, err := os.MkdirTemp("", "dpload-certs-")
	if err != nil {
		return nil, undo, err
	}
	p.note("issuing %d agent certificates", agents)
	certs, err := IssueAgentCerts(dir, agents)
	if err == nil {
		err = certs.Register(ctx, admins, token, p)
	}
	undo = func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := certs.Unregister(uctx, admins, token, p); err != nil {
			p.note("%v", err)
		}
		os.RemoveAll(dir)
	}
	if err != nil {
		undo()
		return nil, func() {}, err
	}
	return append(args, "--agent-certs", certs.File), undo, nil
}
