package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// Nodes talk to each other over HTTP/1.1 on the push port: TLS 1.3 with
// ALPN push.PeerALPN, both sides presenting their gateway certificate and
// checking the other's SPKI pin against the pins nodes gossip (gossip is
// encrypted with the cluster key off loopback). Three requests:
//
//	POST /v1/peer/store  {"items":[...]}  commit copies of pushes
//	POST /v1/peer/ops    {"ops":[...]}    registrations and ACKs, in order
//	POST /v1/peer/wake   {"device":"...","relay":true}
//
// store and ops answer 204 once applied (store: once committed to disk).
// wake answers 200 {"node":"..."} naming the node that sent the device a
// WAKE frame (itself, or with relay the holder it knows as an owner), or
// 404 when no node it can reach holds the device.

// PeerServerTLS is the push server's TLS configuration for connections
// from other nodes; isPeer says whether a pin is a cluster member's.
func PeerServerTLS(id *tlsconf.Identity, isPeer func(pin string) bool) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: id.GetCertificate,
		ClientAuth:     tls.RequireAnyClientCert,
		NextProtos:     []string{wire.PeerALPN},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !isPeer(tlsconf.Pin(cs.PeerCertificates[0])) {
				return errors.New("cluster: the certificate is not a member's")
			}
			return nil
		},
	}
}

// IsPeer reports whether a pin is the certificate of a live member.
func (r *Router) IsPeer(pin string) bool { return len(r.membersByPin(pin)) > 0 }

// membersByPin names the other members presenting the certificate with
// pin: one, unless nodes share a certificate (a site may give every node
// the same one, so agents pin one pin).
func (r *Router) membersByPin(pin string) []string {
	var out []string
	for _, m := range r.c.Members() {
		if m.Meta.Pin == pin && !m.Self {
			out = append(out, m.Name)
		}
	}
	return out
}

// ServeConn serves one connection from another node (the push server's
// Peer hook, after the TLS handshake). It returns at once.
func (r *Router) ServeConn(c net.Conn) {
	pin := ""
	if tc, ok := c.(*tls.Conn); ok {
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			pin = tlsconf.Pin(certs[0])
		}
	}
	// Wrapped, so net/http serves HTTP/1.1 on it rather than looking up a
	// handler for its ALPN protocol; the pin rides in the context.
	if pin == "" || !r.IsPeer(pin) || !r.peer.ln.add(peerConn{c, pin}) {
		c.Close()
	}
}

// peerConn is a handshaken connection from a member, with the pin of the
// certificate it presented.
type peerConn struct {
	net.Conn
	pin string
}

type pinKey struct{}

// nodeHeader names the sending node on every request between nodes: the
// certificate alone cannot, when nodes share one.
const nodeHeader = "Dpgate-Node"

// hexID is a push id written as hex in JSON.
type hexID [16]byte

func (h hexID) MarshalText() ([]byte, error) { return hex.AppendEncode(nil, h[:]), nil }

func (h *hexID) UnmarshalText(b []byte) error {
	if hex.DecodedLen(len(b)) != 16 {
		return errors.New("cluster: push id is not 32 hex digits")
	}
	_, err := hex.Decode(h[:], b)
	return err
}

// wireItem is a push copy between nodes, with the node that accepted it.
type wireItem struct {
	queue.Item
	Origin string
}

type wireJSON struct {
	Device  string `json:"d"`
	ID      hexID  `json:"i"`
	Expiry  int64  `json:"e"`
	Payload []byte `json:"p"`
	Origin  string `json:"o,omitempty"`
}

func (w wireItem) MarshalJSON() ([]byte, error) {
	return json.Marshal(wireJSON{w.Device, hexID(w.ID), w.Expiry, w.Payload, w.Origin})
}

func (w *wireItem) UnmarshalJSON(b []byte) error {
	var j wireJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if err := wire.CheckDeviceID(j.Device); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	w.Device, w.ID, w.Expiry, w.Payload, w.Origin = j.Device, j.ID, j.Expiry, j.Payload, j.Origin
	return nil
}

type storeBody struct {
	Items []wireItem `json:"items"`
}

type opsBody struct {
	Ops []op `json:"ops"`
}

// peerNet is the HTTP server and client between nodes.
type peerNet struct {
	r       *Router
	ln      *connListener
	srv     *http.Server
	client  *http.Client
	serving chan struct{} // closed when srv.Serve has returned
	// netDial opens the TCP connection to a peer (a test cuts it).
	netDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func newPeerNet(r *Router) *peerNet {
	pn := &peerNet{r: r, ln: newConnListener(), serving: make(chan struct{}),
		netDial: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/peer/store", pn.handleStore)
	mux.HandleFunc("POST /v1/peer/ops", pn.handleOps)
	mux.HandleFunc("POST /v1/peer/wake", pn.handleWake)
	mux.HandleFunc("POST /v1/peer/remove", pn.handleRemove)
	mux.HandleFunc("POST /v1/peer/query", pn.handleQuery)
	pn.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(peerConn); ok {
				ctx = context.WithValue(ctx, pinKey{}, pc.pin)
			}
			return ctx
		}, ErrorLog: log.New(slogWriter{r.log}, "cluster peer: ", 0)}
	go func() { // ends when close closes the server and its listener
		defer close(pn.serving)
		pn.srv.Serve(pn.ln)
	}()
	pn.client = &http.Client{
		Timeout: r.cfg.RequestTimeout,
		Transport: &http.Transport{
			DialTLSContext:      pn.dial,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	return pn
}

// dial connects to the node whose push address is addr and checks its pin.
func (pn *peerNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var pin string
	for _, m := range pn.r.c.Members() {
		if m.Meta.Push == addr {
			pin = m.Meta.Pin
		}
	}
	if pin == "" {
		return nil, fmt.Errorf("cluster: no member serves %s", addr)
	}
	cfg := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: pn.r.cfg.Identity.GetClientCertificate,
		NextProtos:           []string{wire.PeerALPN},
		InsecureSkipVerify:   true, // the pin check below replaces chain verification
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || tlsconf.Pin(cs.PeerCertificates[0]) != pin {
				return fmt.Errorf("cluster: %s does not present the pinned certificate", addr)
			}
			if cs.NegotiatedProtocol != wire.PeerALPN {
				return fmt.Errorf("cluster: %s does not speak %s", addr, wire.PeerALPN)
			}
			return nil
		},
	}
	cfg.CurvePreferences = pn.r.cfg.KeyExchange
	if host, _, err := net.SplitHostPort(addr); err == nil {
		cfg.ServerName = host // as tls.Dialer would (no SNI for an IP address)
	}
	raw, err := pn.netDial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// from names the node a request comes from: the node its header names,
// if that member presents the certificate the connection did; without
// the header (a node of an earlier version), the one member with that
// certificate. "" when neither holds.
func (pn *peerNet) from(req *http.Request) string {
	pin, _ := req.Context().Value(pinKey{}).(string)
	members := pn.r.membersByPin(pin)
	if name := req.Header.Get(nodeHeader); name != "" {
		if slices.Contains(members, name) {
			return name
		}
		return ""
	}
	if len(members) == 1 {
		return members[0]
	}
	return ""
}

// request checks that a request comes from a member and decodes its body
// (at most limit bytes) into body; else it answers the error itself.
func (pn *peerNet) request(w http.ResponseWriter, req *http.Request, limit int64, body any) (from string, ok bool) {
	if from = pn.from(req); from == "" {
		http.Error(w, "not a member", http.StatusForbidden)
		return "", false
	}
	if err := json.NewDecoder(io.LimitReader(req.Body, limit)).Decode(body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return "", false
	}
	return from, true
}

func (pn *peerNet) handleStore(w http.ResponseWriter, req *http.Request) {
	var body storeBody
	from, ok := pn.request(w, req, 256<<20, &body)
	if !ok {
		return
	}
	if err := pn.r.stored(from, body.Items); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (pn *peerNet) handleOps(w http.ResponseWriter, req *http.Request) {
	var body opsBody
	from, ok := pn.request(w, req, 64<<20, &body)
	if !ok {
		return
	}
	pn.r.applyOps(from, body.Ops)
	w.WriteHeader(http.StatusNoContent)
}

type wakeBody struct {
	Device string `json:"device"`
	Relay  bool   `json:"relay,omitempty"` // an owner may pass it on to the holder
}

type wakeReply struct {
	Node string `json:"node"`
}

// ErrNotHeld: the asked node does not hold the device and knows no holder.
var ErrNotHeld = errors.New("cluster: device not connected there")

func (pn *peerNet) handleWake(w http.ResponseWriter, req *http.Request) {
	var body wakeBody
	from, ok := pn.request(w, req, 64<<10, &body)
	if !ok {
		return
	}
	if body.Device == "" {
		http.Error(w, "a device id is required", http.StatusBadRequest)
		return
	}
	node, err := pn.r.wakeHere(req.Context(), body.Device, body.Relay, from)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	writeJSON(w, wakeReply{Node: node})
}

// writeJSON answers a peer's request with v.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// wake asks node to send device a WAKE frame, and names the node that did.
func (pn *peerNet) wake(ctx context.Context, node, device string, relay bool) (string, error) {
	var out wakeReply
	if err := pn.post(ctx, node, "/v1/peer/wake", wakeBody{Device: device, Relay: relay}, &out); err != nil {
		return "", err
	}
	return out.Node, nil
}

// store sends copies of pushes this node accepted.
func (pn *peerNet) store(ctx context.Context, node string, items []queue.Item) error {
	ws := make([]wireItem, len(items))
	for i, it := range items {
		ws[i] = wireItem{Item: it, Origin: pn.r.self}
	}
	return pn.storeWire(ctx, node, ws)
}

func (pn *peerNet) storeWire(ctx context.Context, node string, ws []wireItem) error {
	return pn.post(ctx, node, "/v1/peer/store", storeBody{Items: ws}, nil)
}

// post sends body to node's path. With out nil the answer must be 204;
// otherwise 200 with a JSON body decoded into out.
func (pn *peerNet) post(ctx context.Context, node, path string, body any, out any) error {
	addr := ""
	for _, m := range pn.r.c.Members() {
		if m.Name == node {
			addr = m.Meta.Push
		}
	}
	if addr == "" {
		return fmt.Errorf("cluster: node %s is not a member", node)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(nodeHeader, pn.r.self)
	resp, err := pn.client.Do(req)
	if err != nil {
		pn.r.m.peerErrors.WithLabelValues(node).Inc()
		return err
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		return json.NewDecoder(io.LimitReader(resp.Body, maxPeerReply)).Decode(out)
	}
	if resp.StatusCode == http.StatusNotFound && path == "/v1/peer/wake" {
		io.Copy(io.Discard, resp.Body)
		return ErrNotHeld
	}
	if resp.StatusCode != http.StatusNoContent || out != nil {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if resp.StatusCode != http.StatusConflict { // a refusal, not a failure
			pn.r.m.peerErrors.WithLabelValues(node).Inc()
		}
		return &peerStatusError{node: node, path: path, status: resp.StatusCode, msg: string(bytes.TrimSpace(msg))}
	}
	io.Copy(io.Discard, resp.Body)
	return nil
}

// maxPeerReply bounds a peer's JSON answer: the largest is a node's
// device list (100,000 devices, push.max_connections' default, of up to
// about 400 bytes each with 128-byte ids).
const maxPeerReply = 128 << 20

// peerStatusError is a peer's answer other than success.
type peerStatusError struct {
	node, path string
	status     int
	msg        string
}

func (e *peerStatusError) Error() string {
	return fmt.Sprintf("cluster: %s%s: %d %s: %s", e.node, e.path, e.status, http.StatusText(e.status), e.msg)
}

// close stops serving peers (their requests in flight are cut; they send
// again) and returns once the server has.
func (pn *peerNet) close() {
	pn.srv.Close()
	<-pn.serving
	pn.client.CloseIdleConnections()
}

// outbox sends one node, in order and in batches, what need not hold up
// the sender: copies forwarded to a holder, registrations, ACKs. What it
// cannot deliver in three tries is dropped and counted: a holder that is gone will
// register elsewhere and be sent the queue again, an owner that is gone is
// replaced by one the rebalance copies to.
type outbox struct {
	r       *Router
	node    string
	mu      sync.Mutex
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{} // closed when loop has returned
	// pending work, swapped out whole by the sender
	items []wireItem
	ops   []op
}

const maxOutbox = 100000

func newOutbox(r *Router, node string) *outbox {
	ob := &outbox{r: r, node: node, wake: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{})}
	go ob.loop() // ends on close, which waits for it
	return ob
}

func (ob *outbox) addItems(ws []wireItem) {
	ob.mu.Lock()
	if len(ob.items)+len(ws) > maxOutbox {
		ob.mu.Unlock()
		ob.dropped(len(ws), "full")
		return
	}
	ob.items = append(ob.items, ws...)
	ob.mu.Unlock()
	ob.signal()
}

func (ob *outbox) addOp(o op) {
	ob.mu.Lock()
	if len(ob.ops) >= maxOutbox {
		ob.mu.Unlock()
		ob.dropped(1, "full")
		return
	}
	ob.ops = append(ob.ops, o)
	ob.mu.Unlock()
	ob.signal()
}

func (ob *outbox) signal() {
	select {
	case ob.wake <- struct{}{}:
	default:
	}
}

func (ob *outbox) dropped(n int, reason string) {
	ob.r.m.outboxDropped.WithLabelValues(reason).Add(float64(n))
}

func (ob *outbox) loop() {
	defer close(ob.stopped)
	for {
		select {
		case <-ob.done:
			return
		case <-ob.wake:
		}
		ob.mu.Lock()
		items, ops := ob.items, ob.ops
		ob.items, ob.ops = nil, nil
		ob.mu.Unlock()
		for chunk := range slices.Chunk(items, 1000) {
			ob.send("forwarding pushes", len(chunk), func(ctx context.Context) error { return ob.r.peer.storeWire(ctx, ob.node, chunk) })
		}
		for chunk := range slices.Chunk(ops, 5000) {
			ob.send("sending registrations and ACKs", len(chunk), func(ctx context.Context) error {
				return ob.r.peer.post(ctx, ob.node, "/v1/peer/ops", opsBody{Ops: chunk}, nil)
			})
		}
	}
}

// send posts one batch, trying again 0.25 s and 1 s after a failure
// (copies and ops are idempotent, and a busy peer should not lose an ACK
// or a registration to one timeout) before dropping it.
func (ob *outbox) send(what string, n int, post func(context.Context) error) {
	var err error
	for _, wait := range []time.Duration{0, 250 * time.Millisecond, time.Second} {
		if wait > 0 {
			select {
			case <-ob.done:
				ob.dropped(n, "closed")
				return
			case <-time.After(wait):
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), ob.r.cfg.RequestTimeout)
		go func() { // a post in flight ends when the outbox closes; this ends with it
			select {
			case <-ob.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		err = post(ctx)
		cancel()
		if err == nil {
			return
		}
	}
	ob.r.log.Debug("cluster: "+what, "node", ob.node, "err", err)
	ob.dropped(n, "unreachable")
	ob.r.markStale(ob.node) // repair offers it again until it gets through
}

// close stops the outbox, cutting a post in flight, and returns once its
// loop has.
func (ob *outbox) close() {
	close(ob.done)
	<-ob.stopped
}

// connListener is a net.Listener fed with connections accepted elsewhere
// (the push server's, after the TLS handshake).
type connListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) add(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{} }
