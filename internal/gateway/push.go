package gateway

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dpgate/dpgate/cluster"
	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/push"
	"github.com/dpgate/dpgate/push/queue"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// TokenKeyFile holds the HMAC key of device tokens in the data directory.
const TokenKeyFile = "push-token.key"

// QUICResetKeyFile holds the key of the push server's QUIC stateless
// resets in the data directory (push.Config.QUICResetKey), made on first
// use.
const QUICResetKeyFile = "quic-reset.key"

// TokenKeys reads the keys that verify device tokens: push.token_key_file
// (one base64 key per line, the first signs; it must exist, a configured
// key is never generated), or data_dir/push-token.key, made on first use.
// The server and dpgate token issue share them.
func TokenKeys(cfg *config.Config) ([][]byte, error) {
	file := cfg.Push.TokenKeyFile
	if file == "" {
		key, err := tlsconf.LoadOrCreateKey(filepath.Join(cfg.Node.DataDir, TokenKeyFile), 32, 16)
		if err != nil {
			return nil, err
		}
		return [][]byte{key}, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("push.token_key_file: %w (a configured key is never generated: copy the cluster's file there, or create one with: (umask 077; head -c 32 /dev/urandom | base64 > %s))", err, file)
	}
	keys, err := wire.ParseTokenKeys(data)
	if err != nil {
		return nil, fmt.Errorf("push.token_key_file %s: %w", file, err)
	}
	return keys, nil
}

// quicResetKey reads data_dir/quic-reset.key, made on first use. One
// that is damaged is set aside and replaced, with a warning: the old key
// only made resets for the sessions of a process that is gone, so a new
// one loses nothing, while refusing it would stop the whole gateway.
func (g *Gateway) quicResetKey() ([]byte, error) {
	file := filepath.Join(g.cfg.Node.DataDir, QUICResetKeyFile)
	key, err := tlsconf.LoadOrCreateKey(file, 32, 32)
	if !errors.Is(err, tlsconf.ErrDamagedKey) {
		return key, err
	}
	aside := file + ".damaged-" + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(file, aside); err != nil {
		return nil, err
	}
	g.log.Warn("push: the QUIC stateless-reset key was damaged; set aside and a new one made (QUIC agents of the process before reconnect after their idle timeout, not at once)",
		"file", file, "aside", aside)
	return tlsconf.LoadOrCreateKey(file, 32, 32)
}

// newPush builds the push server from push.* keys, when push is on, and
// in a cluster its routing between nodes (the router, which keeps each
// device's queue on its owner nodes).
func (g *Gateway) newPush(ls Listeners) error {
	c := g.cfg.Push
	if !g.pushEnabled() {
		return nil
	}
	keys, err := TokenKeys(g.cfg)
	if err != nil {
		return fmt.Errorf("gateway: push: %w", err)
	}
	reg, err := queue.NewRegistry(g.db)
	if err != nil {
		return fmt.Errorf("gateway: push: %w", err)
	}
	if reg.Removed > 0 {
		g.log.Warn("removed stored devices whose ids break the device id rule (docs/PROTOCOL.md), with their queues",
			"devices", reg.Removed)
	}
	if g.queue, err = queue.NewQueue(g.db); err != nil {
		return fmt.Errorf("gateway: push: %w", err)
	}
	var resetKey []byte
	if *c.QUIC {
		if resetKey, err = g.quicResetKey(); err != nil {
			return fmt.Errorf("gateway: push: %w", err)
		}
	}
	pc := push.Config{
		Identity:       g.id,
		AllowList:      g.allow,
		Auth:           c.Auth,
		TokenKeys:      keys,
		Queue:          g.queue,
		Registry:       reg,
		Keepalive:      c.Keepalive.D(),
		MaxConnections: g.limits.push,
		SourceRate:     c.SourceRate,
		MaxPayload:     int(c.MaxPayload),
		KeyExchange:    g.keyExchange,
		QUICResetKey:   resetKey,
		Registerer:     g.tel.Registry,
		Logger:         g.log,
	}
	if g.cluster != nil {
		// The port mux: other nodes reach the router on the push port,
		// by ALPN.
		pc.Protocols = map[string]push.Protocol{wire.PeerALPN: {
			TLS:   cluster.PeerServerTLS(g.id, func(pin string) bool { return g.router.IsPeer(pin) }),
			Serve: func(c *tls.Conn) { g.router.ServeConn(c) },
		}}
	}
	s, err := push.New(pc)
	if err != nil {
		return fmt.Errorf("gateway: push: %w", err)
	}
	g.push = s
	var r *cluster.Router
	if g.cluster != nil {
		r, err = cluster.NewRouter(cluster.RouterConfig{
			SweepInterval: g.routerSweep,
			Cluster:       g.cluster,
			Local:         s,
			Queries:       g.clusterQueries(),
			Identity:      g.id,
			KeyExchange:   g.keyExchange,
			Registerer:    g.tel.Registry,
			Logger:        g.log,
		})
		if err != nil {
			s.Close()
			return fmt.Errorf("gateway: cluster: %w", err)
		}
		s.SetCluster(r)
		g.router = r
	}
	g.pushRoutes()
	p := part{name: "push",
		shutdown: func(ctx context.Context) error {
			// Agents are told to reconnect elsewhere, spread over a few
			// seconds so the other nodes do not get them all at once.
			err := s.Shutdown(ctx)
			if r != nil {
				// The agents are gone; what is still queued here goes to
				// the nodes that keep it from now on. (After a Handover the
				// next process keeps the queues.)
				if !g.handedOver.Load() {
					if herr := r.Handoff(ctx); herr != nil {
						err = errors.Join(err, fmt.Errorf("handoff: %w", herr))
					}
				}
				r.Close()
			}
			return err
		},
		close: func() error {
			if r != nil {
				r.Close()
			}
			return s.Close()
		},
	}
	if r != nil {
		p.start = func() error { r.Start(); return nil }
	}
	if ln := ls.Push; ln != nil {
		g.pushAddr = ln.Addr().String()
		p.serve = append(p.serve, func() error {
			g.log.Info("push server listening", "addr", g.pushAddr, "quic", ls.PushUDP != nil, "auth", c.Auth)
			return s.Serve(ln)
		})
		if pc := ls.PushUDP; pc != nil {
			p.serve = append(p.serve, func() error { return s.ServeQUIC(pc) })
		}
	}
	g.add(p)
	return nil
}

// accept commits a push for the devices: through the cluster's router
// when there is one (on the devices' owner nodes), else here.
func (g *Gateway) accept(ctx context.Context, devices []string, payload []byte, ttl time.Duration) ([]PushReply, error) {
	out := make([]PushReply, len(devices))
	if r := g.router; r != nil {
		if err := g.push.Check(devices, payload); err != nil {
			return nil, err
		}
		acc, err := r.Push(ctx, devices, payload, ttl)
		if err != nil {
			return nil, err
		}
		g.wakeOffline(devices)
		for _, a := range acc {
			if a.Copies < g.cfg.Cluster.MinCopies {
				g.m.underCopied.Inc()
				return nil, admin.Error(http.StatusServiceUnavailable, fmt.Errorf(
					"the push for %s was committed on %d node(s), fewer than cluster.min_copies %d: this node reaches none of the device's owners; it keeps the push and hands it over when it can, so a retry may deliver it twice",
					a.Device, a.Copies, g.cfg.Cluster.MinCopies))
			}
		}
		for i, a := range acc {
			out[i] = PushReply{Device: a.Device, ID: hex.EncodeToString(a.ID[:]), Seq: a.Seq, Copies: a.Copies, Status: "queued", id: a.ID, expiry: a.Expiry}
		}
		return out, nil
	}
	payloads := make([][]byte, len(devices))
	for i := range payloads {
		payloads[i] = payload
	}
	return g.acceptEach(ctx, devices, payloads, ttl)
}

// acceptEach commits payloads[i] for devices[i]: here in one commit, or
// in a cluster through the router, push by push (each on its device's
// owners).
func (g *Gateway) acceptEach(ctx context.Context, devices []string, payloads [][]byte, ttl time.Duration) ([]PushReply, error) {
	if g.router != nil {
		for i, d := range devices { // every one checked before any is committed
			if err := g.push.Check([]string{d}, payloads[i]); err != nil {
				return nil, fmt.Errorf("pushes[%d]: %w", i, err)
			}
		}
		var out []PushReply
		for i, d := range devices {
			r, err := g.accept(ctx, []string{d}, payloads[i], ttl)
			if err != nil {
				return nil, fmt.Errorf("pushes[%d] (%s; the %d before it were accepted): %w", i, d, i, err)
			}
			out = append(out, r...)
		}
		return out, nil
	}
	msgs, err := g.push.PushEach(devices, payloads, ttl)
	if err != nil {
		return nil, err
	}
	g.wakeOffline(devices)
	out := make([]PushReply, len(msgs))
	for i, m := range msgs {
		out[i] = PushReply{Device: devices[i], ID: hex.EncodeToString(m.ID[:]), Seq: m.Seq, Copies: 1, Status: "queued", id: m.ID, expiry: m.Expiry}
	}
	return out, nil
}

func (g *Gateway) pushEnabled() bool { return g.cfg.Push.Listen != "" && g.cfg.Push.Listen != "off" }

// PushRequest is the body of POST /v1/devices/{id}/push and /v1/push.
type PushRequest struct {
	Data       *string  `json:"data,omitempty"`        // UTF-8 payload
	DataBase64 *string  `json:"data_base64,omitempty"` // or binary, base64
	TTL        string   `json:"ttl,omitempty"`         // Go duration; default push.queue_ttl
	Devices    []string `json:"devices,omitempty"`     // /v1/push only
	All        bool     `json:"all,omitempty"`         // /v1/push only: every known device
}

// PushReply describes one accepted push.
type PushReply struct {
	Device string `json:"device"`
	ID     string `json:"id"`
	Seq    uint64 `json:"seq"`    // sequence of this node's copy; 0 when the cluster keeps it on other nodes
	Copies int    `json:"copies"` // nodes that committed it before the answer
	Status string `json:"status"` // queued, delivered (ACKed) or expired (undelivered within its ttl)

	id     [16]byte
	expiry int64
}

// BatchRequest is the body of POST /v1/push/batch: many pushes, each
// with its own device and payload, in one request and (without a
// cluster) one commit, for management servers that push at high rates.
type BatchRequest struct {
	Pushes []BatchPush `json:"pushes"`
	TTL    string      `json:"ttl,omitempty"` // for all of them; default push.queue_ttl
}

// BatchPush is one push of a batch.
type BatchPush struct {
	Device     string  `json:"device"`
	Data       *string `json:"data,omitempty"`
	DataBase64 *string `json:"data_base64,omitempty"`
}

// maxBatch bounds a batch's pushes.
const maxBatch = 1000

// BulkReply is the answer of POST /v1/push.
type BulkReply struct {
	Queued int         `json:"queued"`
	Pushes []PushReply `json:"pushes"`
	// NotReached: for a push to all in a cluster, the nodes that did not
	// say which devices they know; the devices only they know are missed.
	NotReached []string `json:"not_reached,omitempty"`
}

func (g *Gateway) parsePush(r *http.Request) (PushRequest, []byte, time.Duration, error) {
	var req PushRequest
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return req, nil, 0, admin.Error(http.StatusBadRequest, err)
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return req, nil, 0, admin.Error(http.StatusBadRequest, fmt.Errorf("body is not a JSON push request: %w", err))
	}
	payload, err := decodePayload(req.Data, req.DataBase64)
	if err != nil {
		return req, nil, 0, admin.Error(http.StatusBadRequest, err)
	}
	ttl, err := g.parseTTL(req.TTL)
	return req, payload, ttl, err
}

// parseBatch reads a BatchRequest.
func (g *Gateway) parseBatch(r *http.Request) ([]string, [][]byte, time.Duration, error) {
	var req BatchRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		return nil, nil, 0, admin.Error(http.StatusBadRequest, fmt.Errorf("body is not a JSON batch {\"pushes\": [...]}: %w", err))
	}
	if len(req.Pushes) == 0 || len(req.Pushes) > maxBatch {
		return nil, nil, 0, admin.Error(http.StatusBadRequest, fmt.Errorf("a batch holds 1 to %d pushes, not %d", maxBatch, len(req.Pushes)))
	}
	devices, payloads := make([]string, len(req.Pushes)), make([][]byte, len(req.Pushes))
	for i, p := range req.Pushes {
		payload, err := decodePayload(p.Data, p.DataBase64)
		if err != nil {
			return nil, nil, 0, admin.Error(http.StatusBadRequest, fmt.Errorf("pushes[%d]: %w", i, err))
		}
		devices[i], payloads[i] = p.Device, payload
	}
	ttl, err := g.parseTTL(req.TTL)
	return devices, payloads, ttl, err
}

// decodePayload is a push's data or data_base64.
func decodePayload(data, b64 *string) ([]byte, error) {
	switch {
	case data != nil && b64 != nil:
		return nil, errors.New("give data or data_base64, not both")
	case data != nil:
		return []byte(*data), nil
	case b64 != nil:
		b, err := base64.StdEncoding.DecodeString(*b64)
		if err != nil {
			return nil, fmt.Errorf("data_base64: %w", err)
		}
		return b, nil
	}
	return nil, nil
}

// parseTTL is a request's ttl, or push.queue_ttl without one.
func (g *Gateway) parseTTL(s string) (time.Duration, error) {
	if s == "" {
		return g.cfg.Push.QueueTTL.D(), nil
	}
	ttl, err := time.ParseDuration(s)
	if err != nil || ttl <= 0 {
		return 0, admin.Error(http.StatusBadRequest, fmt.Errorf("ttl %q is not a positive Go duration", s))
	}
	return ttl, nil
}

func pushError(err error) error {
	if errors.Is(err, push.ErrPayloadTooLarge) {
		return admin.Error(http.StatusRequestEntityTooLarge, err)
	}
	if errors.Is(err, push.ErrBadDevice) {
		return admin.Error(http.StatusBadRequest, err)
	}
	return err
}

func (g *Gateway) pushRoutes() {
	a := g.admin
	a.HandleJSON("POST /v1/devices/{id}/push", func(r *http.Request) (int, any, error) {
		_, payload, ttl, err := g.parsePush(r)
		if err != nil {
			return 0, nil, err
		}
		var wait time.Duration
		if w := r.URL.Query().Get("wait"); w != "" {
			if wait, err = time.ParseDuration(w); err != nil || wait < 0 || wait > time.Minute {
				return 0, nil, admin.Error(http.StatusBadRequest, fmt.Errorf("wait %q is not a duration of at most 1m", w))
			}
		}
		replies, err := g.accept(r.Context(), []string{r.PathValue("id")}, payload, ttl)
		if err != nil {
			return 0, nil, pushError(err)
		}
		reply := replies[0]
		if wait > 0 {
			// Wait for the ACK (here, or reported by the node the device is
			// connected to), but not past the push's expiry: after it the
			// push can no longer be delivered.
			expiry := time.UnixMilli(reply.expiry)
			ctx, cancel := context.WithTimeout(r.Context(), min(wait, time.Until(expiry)+10*time.Millisecond))
			defer cancel()
			acked := g.push.WaitID(ctx, reply.id) == nil
			switch {
			case !time.Now().Before(expiry):
				// Gone from the queue at or after its expiry: reported as
				// expired (an ACK in the same millisecond is counted so too).
				reply.Status = "expired"
				return http.StatusOK, reply, nil
			case acked:
				reply.Status = "delivered"
				return http.StatusOK, reply, nil
			}
		}
		return http.StatusAccepted, reply, nil
	})
	a.HandleJSON("POST /v1/push", func(r *http.Request) (int, any, error) {
		req, payload, ttl, err := g.parsePush(r)
		if err != nil {
			return 0, nil, err
		}
		devices := req.Devices
		var notReached []string
		switch {
		case req.All && len(devices) > 0:
			return 0, nil, admin.Error(http.StatusBadRequest, errors.New("give devices or all, not both"))
		case req.All:
			devices, notReached = g.allDevices(r.Context())
		case len(devices) == 0:
			return 0, nil, admin.Error(http.StatusBadRequest, errors.New("give devices: [...] or all: true"))
		}
		if len(devices) == 0 {
			return http.StatusAccepted, BulkReply{Pushes: []PushReply{}, NotReached: notReached}, nil
		}
		replies, err := g.accept(r.Context(), devices, payload, ttl)
		if err != nil {
			return 0, nil, pushError(err)
		}
		return http.StatusAccepted, BulkReply{Queued: len(replies), Pushes: replies, NotReached: notReached}, nil
	})
	a.HandleJSON("POST /v1/push/batch", func(r *http.Request) (int, any, error) {
		devices, payloads, ttl, err := g.parseBatch(r)
		if err != nil {
			return 0, nil, err
		}
		replies, err := g.acceptEach(r.Context(), devices, payloads, ttl)
		if err != nil {
			return 0, nil, pushError(err)
		}
		return http.StatusAccepted, BulkReply{Queued: len(replies), Pushes: replies}, nil
	})
	a.HandleJSON("GET /v1/devices", func(r *http.Request) (int, any, error) {
		l := g.deviceList(r.Context())
		if l.Devices == nil {
			l.Devices = []DeviceEntry{}
		}
		return http.StatusOK, l, nil
	})
	a.HandleJSON("GET /v1/devices/{id}", func(r *http.Request) (int, any, error) {
		id := r.PathValue("id")
		d, ok := g.push.Device(id)
		if !ok {
			if err := g.unknownDevice(id); err != nil {
				return 0, nil, err
			}
			d = push.DeviceStatus{ID: id} // an owner that knows the node it is connected to
		}
		reply := DeviceReply{DeviceStatus: d}
		if w, ok := g.wake.Last(d.ID); ok {
			reply.LastWake = &w
		}
		if r := g.router; r != nil {
			reply.Owners, reply.Holder = r.Owners(d.ID), r.Holder(d.ID)
		}
		return http.StatusOK, reply, nil
	})
	a.HandleJSON("DELETE /v1/devices/{id}", func(r *http.Request) (int, any, error) {
		rm, err := g.removeDevice(r.Context(), r.PathValue("id"), "api")
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, rm, nil
	})
}

// DeviceRemoved is the reply of DELETE /v1/devices/{id}.
type DeviceRemoved struct {
	Status string `json:"status"` // "removed"
	Device string `json:"device"`
	// In a cluster: the nodes that knew the device and forgot it, and
	// those that did not answer (they may still know it).
	Nodes      []string `json:"nodes,omitempty"`
	NotReached []string `json:"not_reached,omitempty"`
}

// removeDevice forgets a device and drops its queued pushes here and, in
// a cluster, on every other node (its owners keep copies of its queue).
// A device connected here or elsewhere is refused (409): its agent would
// say HELLO again at once.
func (g *Gateway) removeDevice(ctx context.Context, id, by string) (DeviceRemoved, error) {
	rm := DeviceRemoved{Status: "removed", Device: id}
	if g.push.Holds(id) {
		return rm, admin.Error(http.StatusConflict, fmt.Errorf("%w: %s", push.ErrConnected, id))
	}
	if g.router != nil {
		elsewhere, err := g.router.RemoveElsewhere(ctx, id)
		if ce := (*cluster.ConnectedError)(nil); errors.As(err, &ce) {
			return rm, admin.Error(http.StatusConflict, fmt.Errorf("device %q is connected to %s; stop its agent first", id, ce.Node))
		}
		rm.Nodes, rm.NotReached = elsewhere.Nodes, elsewhere.NotReached
	}
	found, err := g.push.RemoveDevice(id)
	switch {
	case errors.Is(err, push.ErrConnected):
		return rm, admin.Error(http.StatusConflict, err)
	case err != nil:
		return rm, err
	case found:
		rm.Nodes = append([]string{g.cfg.Node.Name}, rm.Nodes...)
	}
	if len(rm.Nodes) == 0 {
		msg := fmt.Sprintf("device %q is unknown", id)
		if len(rm.NotReached) > 0 {
			msg += fmt.Sprintf(" to the nodes that answered; %s did not answer and may know it", strings.Join(rm.NotReached, " and "))
		}
		return rm, admin.Error(http.StatusNotFound, errors.New(msg))
	}
	g.log.Info("device removed with its queue", "device", id, "by", by, "nodes", rm.Nodes, "not_reached", rm.NotReached)
	if g.router == nil {
		rm.Nodes = nil // one node: nothing more to say
	}
	return rm, nil
}

// unknownDevice is the answer for a device this node keeps nothing of:
// nil when, as one of its owners, it knows the node the device is
// connected to (the reply names that node); else a 404 that says who
// would know.
func (g *Gateway) unknownDevice(id string) error {
	r := g.router
	if r == nil {
		return admin.Error(http.StatusNotFound, fmt.Errorf("device %q is unknown", id))
	}
	if r.Holder(id) != "" {
		return nil
	}
	owners := r.Owners(id)
	if slices.Contains(owners, g.cfg.Node.Name) {
		return admin.Error(http.StatusNotFound, fmt.Errorf("device %q is unknown: this node is one of its owners and knows of no node it is connected to", id))
	}
	return admin.Error(http.StatusNotFound, fmt.Errorf("device %q is unknown on this node; its owners, %s, know the node it is connected to", id, strings.Join(owners, " and ")))
}
