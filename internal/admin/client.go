package admin

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

// Client calls a running gateway's admin API; the CLI uses it.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient returns a client for the API listening on listen (a host:port
// as in admin.listen; an empty or wildcard host means this machine).
func NewClient(listen, token string) *Client {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		host, port = "127.0.0.1", "13290"
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return &Client{
		base:  "http://" + net.JoinHostPort(host, port),
		token: token,
		http:  &http.Client{Timeout: 3 * time.Minute},
	}
}

// SetTimeout bounds each request, the reply included (3 minutes unless
// set): past it the request fails, saying the API did not answer.
func (c *Client) SetTimeout(d time.Duration) { c.http.Timeout = d }

// WithTLS makes the client speak HTTPS with cfg (the admin listener serves
// TLS off loopback; the CLI pins the gateway's certificate).
func (c *Client) WithTLS(cfg *tls.Config) *Client {
	c.base = "https://" + strings.TrimPrefix(c.base, "http://")
	c.http = &http.Client{Timeout: c.http.Timeout, Transport: &http.Transport{TLSClientConfig: cfg}}
	return c
}

// NewSocketClient returns a client for the API's Unix socket
// (admin.socket); the socket's permissions stand in for the token.
func NewSocketClient(path, token string) (*Client, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("%s: %w", path, errNotSocket)
	}
	c, err := net.DialTimeout("unix", path, 3*time.Second) // may this user connect? (EACCES otherwise)
	if err != nil {
		return nil, err
	}
	c.Close()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{base: "http://dpgate", token: token, http: &http.Client{Timeout: 3 * time.Minute, Transport: tr}}, nil
}

// ErrUnreachable wraps errors where no gateway answered at all, so callers
// can fall back to working offline on the data directory.
var ErrUnreachable = errors.New("admin API unreachable")

// Do sends a request with an optional body (a []byte is sent as is, other
// values as JSON) and decodes a 2xx JSON reply into out when out is not nil.
// A non-2xx reply becomes an error carrying the API's message.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	data, err := c.Raw(ctx, method, path, body)
	if err != nil {
		return err
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("admin API %s %s: bad reply: %w", method, path, err)
		}
	}
	return nil
}

// Raw is Do for replies that are not JSON (/metrics, /debug/pprof/):
// the 2xx reply's body as it came.
func (c *Client) Raw(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case []byte:
		rd, ctype = bytes.NewReader(b), "application/octet-stream"
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd, ctype = bytes.NewReader(data), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w at %s (is dpgate serve running with this configuration?): %v", ErrUnreachable, c.base, err)
		}
		return nil, c.failed(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, c.failed(err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return nil, &HTTPError{Status: resp.StatusCode, Err: errors.New(e.Error)}
		}
		return nil, &HTTPError{Status: resp.StatusCode, Err: fmt.Errorf("%s %s: %s", method, path, resp.Status)}
	}
	return data, nil
}

// Base is the API's base URL, e.g. http://127.0.0.1:13290.
func (c *Client) Base() string { return c.base }

// failed words a request's failure; one that ran out of time says so,
// with what to look at.
func (c *Client) failed(err error) error {
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return fmt.Errorf("admin API %s did not answer within %s (the gateway stopped with SIGSTOP, hung or swamped? see its log; under systemd its watchdog restarts a hung one): %w",
			c.base, c.http.Timeout, err)
	}
	return fmt.Errorf("admin API %s: %w", c.base, err)
}
