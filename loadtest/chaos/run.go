//go:build linux

package chaos

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dpgate/dpgate/push/client"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

// Kinds of fault, each alone in Config.Faults or mixed at random.
var Kinds = []string{"kill", "pause", "isolate", "split", "readdress", "diskfull", "truncate", "bitflip", "rolling", "upgrade"}

// Config configures Run.
type Config struct {
	Dpgate string // the dpgate binary (required)
	Dir    string // work directory (required; the caller removes it)
	Nodes  int    // default 3
	Agents int    // default 30
	Rate   float64
	// Faults run one after another, each for Length, with the cluster
	// let recover in between; Mixed (when not zero) then runs random
	// faults of random length (5 to 30 s) for that long.
	Faults []string
	Length time.Duration // default 8s
	Mixed  time.Duration
	// Settle bounds the wait, after each fault and at the end, for every
	// agent to be connected and every accepted push delivered. Default 90s.
	Settle time.Duration
	Log    func(format string, args ...any) // progress; default none
}

// Publish is one publish attempt.
type Publish struct {
	N       int       `json:"n"`
	Device  string    `json:"device"`
	Payload string    `json:"payload"`
	Node    int       `json:"node"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Result  string    `json:"result"` // accepted, refused (4xx/5xx), failed (no answer)
	Status  int       `json:"status,omitempty"`
	Copies  int       `json:"copies,omitempty"`
}

// Delivery is one push an agent received (and acknowledged).
type Delivery struct {
	Device  string    `json:"device"`
	Payload string    `json:"payload"`
	ID      string    `json:"id"`
	Seq     uint64    `json:"seq"`
	Server  string    `json:"server"`
	At      time.Time `json:"at"`
}

// Fault is one fault as it ran.
type Fault struct {
	Kind  string    `json:"kind"`
	Node  int       `json:"node"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"` // healed
	// Recovered is from the heal until every agent was connected and
	// every push accepted so far delivered; -1 if not within Settle.
	Recovered time.Duration `json:"recovered_ns"`
	Note      string        `json:"note,omitempty"`
}

// History is everything recorded.
type History struct {
	Publishes  []Publish  `json:"publishes"`
	Deliveries []Delivery `json:"deliveries"`
	Faults     []Fault    `json:"faults"`
	Nodes      int        `json:"nodes"`
	Agents     int        `json:"agents"`
	// LibraryDuplicates are copies the agent library dropped by message
	// id before the agent saw them (so Deliveries has none of them).
	LibraryDuplicates uint64 `json:"library_duplicates"`
}

type agent struct {
	id     string
	mu     sync.Mutex
	server string
}

type runner struct {
	cfg   Config
	net   *network
	nodes []*node
	files shared
	pin   string
	log   func(string, ...any)

	mu         sync.Mutex
	hist       History
	delivered  map[string]bool // payloads
	agents     []*agent
	clients    []*client.Client
	nextAddr   byte
	httpClient *http.Client
}

// Run sets up the site, runs the faults while agents and publishers work,
// waits for the end state and returns the history (also on error, as far
// as it got).
func Run(ctx context.Context, cfg Config) (*History, error) {
	cfg.Nodes = cmp.Or(cfg.Nodes, 3)
	cfg.Agents = cmp.Or(cfg.Agents, 30)
	cfg.Rate = cmp.Or(cfg.Rate, 20)
	cfg.Length = cmp.Or(cfg.Length, 8*time.Second)
	cfg.Settle = cmp.Or(cfg.Settle, 90*time.Second)
	r := &runner{cfg: cfg, log: cfg.Log, delivered: map[string]bool{}, nextAddr: 100,
		httpClient: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	if r.log == nil {
		r.log = func(string, ...any) {}
	}
	r.hist.Nodes, r.hist.Agents = cfg.Nodes, cfg.Agents
	defer r.teardown()
	if err := r.setup(ctx); err != nil {
		return &r.hist, err
	}
	runCtx, stopAgents := context.WithCancel(ctx)
	var bg sync.WaitGroup
	r.startAgents(runCtx, &bg)
	if err := r.settle(ctx, "start"); err != nil {
		stopAgents()
		bg.Wait()
		return r.history(), err
	}
	pubCtx, stopPublishing := context.WithCancel(runCtx)
	var pubs sync.WaitGroup
	pubs.Add(1)
	go func() { defer pubs.Done(); r.publish(pubCtx) }()

	var runErr error
	for _, kind := range cfg.Faults {
		if runErr = r.fault(ctx, kind, cfg.Length); runErr != nil {
			break
		}
	}
	if runErr == nil && cfg.Mixed > 0 {
		end := time.Now().Add(cfg.Mixed)
		for time.Now().Before(end) && ctx.Err() == nil {
			kind := Kinds[mrand.IntN(len(Kinds))]
			length := 5*time.Second + time.Duration(mrand.Int64N(int64(25*time.Second)))
			if runErr = r.fault(ctx, kind, length); runErr != nil {
				break
			}
		}
	}
	time.Sleep(2 * time.Second) // some publishing after the last heal
	stopPublishing()
	pubs.Wait()
	if runErr == nil {
		runErr = r.settle(ctx, "end")
	}
	r.dump() // with the agents still connected
	stopAgents()
	bg.Wait()
	for _, c := range r.clients {
		r.hist.LibraryDuplicates += c.Duplicates()
	}
	return r.history(), runErr
}

func (r *runner) history() *History {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hist
	h.Publishes = slices.Clone(h.Publishes)
	h.Deliveries = slices.Clone(h.Deliveries)
	h.Faults = slices.Clone(h.Faults)
	return &h
}

func randB64(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func (r *runner) setup(ctx context.Context) error {
	var err error
	if r.net, err = newNetwork(); err != nil {
		return err
	}
	dir := r.cfg.Dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	cert, err := tlsconf.Issue(tlsconf.Template{CommonName: "dpgate chaos site"}, nil)
	if err != nil {
		return err
	}
	r.files = shared{cert: filepath.Join(dir, "gateway.pem"), tokenKey: filepath.Join(dir, "push-token.key"),
		adminToken: filepath.Join(dir, "admin.token"), gossipKey: filepath.Join(dir, "gossip.key"), token: randB64(24)}
	if err := tlsconf.WriteKeyPair(cert, r.files.cert, ""); err != nil {
		return err
	}
	r.pin = tlsconf.Pin(cert.Leaf)
	// The nodes' admin listeners are off loopback (in the namespaces), so
	// they serve TLS with the site's certificate: pinned here.
	pins, _ := tlsconf.ParsePins([]string{r.pin})
	r.httpClient.Transport = &http.Transport{MaxIdleConnsPerHost: 16, TLSClientConfig: tlsconf.PinnedClientConfig(pins, "dpgate")}
	for file, body := range map[string]string{r.files.tokenKey: randB64(32), r.files.adminToken: r.files.token, r.files.gossipKey: randB64(32)} {
		if err := os.WriteFile(file, []byte(body+"\n"), 0o600); err != nil {
			return err
		}
	}
	for i := range r.cfg.Nodes {
		ns, err := r.net.addNode(i)
		if err != nil {
			return err
		}
		nd := &node{i: i, name: fmt.Sprintf("node-%d", i), ns: ns, bin: r.cfg.Dpgate, files: r.files, hc: r.httpClient,
			dir: filepath.Join(dir, fmt.Sprintf("node%d", i)), addr: r.net.addr(byte(10 + i)), peers: r.peers}
		nd.dataDir = filepath.Join(nd.dir, "data")
		if err := nd.mountData(32); err != nil {
			return err
		}
		r.nodes = append(r.nodes, nd)
	}
	for _, nd := range r.nodes {
		if err := nd.start(ctx); err != nil {
			return err
		}
	}
	r.log("chaos: %d nodes up on %s/24", len(r.nodes), r.net.subnet)
	return nil
}

// dump saves each live node's /metrics and /v1/devices into its
// directory, for a look after the run.
func (r *runner) dump() {
	for _, nd := range r.nodes {
		if nd.State() != "up" {
			continue
		}
		for file, path := range map[string]string{"metrics.txt": "/metrics", "devices.json": "/v1/devices", "status.json": "/v1/status"} {
			req, _ := http.NewRequest("GET", nd.adminURL()+path, nil)
			req.Header.Set("Authorization", "Bearer "+r.files.token)
			resp, err := r.httpClient.Do(req)
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			os.WriteFile(filepath.Join(nd.dir, file), b, 0o600)
		}
		var all []json.RawMessage
		for _, a := range r.agents {
			req, _ := http.NewRequest("GET", nd.adminURL()+"/v1/devices/"+a.id, nil)
			req.Header.Set("Authorization", "Bearer "+r.files.token)
			if resp, err := r.httpClient.Do(req); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					all = append(all, b)
				}
			}
		}
		b, _ := json.Marshal(all)
		os.WriteFile(filepath.Join(nd.dir, "device-each.json"), b, 0o600)
	}
}

// peers are the gossip addresses of every node but self.
func (r *runner) peers(self int) []string {
	var out []string
	for _, nd := range r.nodes {
		if nd.i != self {
			out = append(out, nd.gossipAddr())
		}
	}
	return out
}

func (r *runner) teardown() {
	for _, nd := range r.nodes {
		nd.kill()
		run("umount", nd.dataDir)
	}
	if r.net != nil {
		r.net.close()
	}
}

func (r *runner) startAgents(ctx context.Context, wg *sync.WaitGroup) {
	pins, _ := tlsconf.ParsePins([]string{r.pin})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	keyB64, _ := os.ReadFile(r.files.tokenKey)
	key, _ := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(keyB64)))
	for i := range r.cfg.Agents {
		a := &agent{id: fmt.Sprintf("dev-%03d", i)}
		r.agents = append(r.agents, a)
		var servers []string
		for j := range r.nodes {
			servers = append(servers, r.nodes[(i+j)%len(r.nodes)].pushAddr())
		}
		c, err := client.New(client.Config{Servers: servers, DeviceID: a.id, Token: wire.IssueToken(key, a.id, time.Now().Add(48*time.Hour)),
			TLS: tlsconf.PinnedClientConfig(pins, "dpgate"), MaxBackoff: 2 * time.Second, Logger: quiet,
			OnPush: func(m wire.Message) {
				d := Delivery{Device: a.id, Payload: string(m.Payload), ID: hex.EncodeToString(m.ID[:]), Seq: m.Seq, At: time.Now()}
				a.mu.Lock()
				d.Server = a.server
				a.mu.Unlock()
				r.mu.Lock()
				r.hist.Deliveries = append(r.hist.Deliveries, d)
				r.delivered[d.Payload] = true
				r.mu.Unlock()
			},
			OnEvent: func(e client.Event) {
				a.mu.Lock()
				defer a.mu.Unlock()
				switch e.Kind {
				case "connected":
					a.server = e.Server
				case "disconnected", "drain", "error", "redirect", "replaced":
					a.server = ""
				}
			}})
		if err != nil {
			panic(err) // the config above is complete
		}
		r.clients = append(r.clients, c)
		wg.Add(1)
		go func() { defer wg.Done(); c.Run(ctx) }()
	}
}

// publish posts pushes at the configured rate to random nodes and random
// devices, each with a unique payload, recording every attempt.
func (r *runner) publish(ctx context.Context) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / r.cfg.Rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, 64)
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			continue // 64 in flight: the site is stuck; do not pile up
		}
		p := Publish{N: n, Device: r.agents[mrand.IntN(len(r.agents))].id, Payload: fmt.Sprintf("push-%06d", n), Node: mrand.IntN(len(r.nodes))}
		url := r.nodes[p.Node].adminURL()
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			r.post(&p, url)
			r.mu.Lock()
			r.hist.Publishes = append(r.hist.Publishes, p)
			r.mu.Unlock()
		}()
	}
}

func (r *runner) post(p *Publish, url string) {
	body, _ := json.Marshal(map[string]string{"data": p.Payload})
	req, _ := http.NewRequest("POST", url+"/v1/devices/"+p.Device+"/push", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+r.files.token)
	req.Header.Set("Content-Type", "application/json")
	p.Start = time.Now()
	resp, err := r.httpClient.Do(req)
	p.End = time.Now()
	if err != nil {
		p.Result = "failed"
		return
	}
	defer resp.Body.Close()
	p.Status = resp.StatusCode
	if resp.StatusCode/100 != 2 {
		p.Result = "refused"
		return
	}
	var reply struct{ Copies int }
	json.NewDecoder(resp.Body).Decode(&reply)
	p.Result, p.Copies = "accepted", reply.Copies
}

// settle waits until every agent is connected to a node that is up and
// every push accepted so far has been delivered.
func (r *runner) settle(ctx context.Context, what string) error {
	deadline := time.Now().Add(r.cfg.Settle)
	for {
		missingAgents, missingPushes := r.pending()
		if missingAgents == 0 && missingPushes == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: after %s: %d agents not connected and %d accepted pushes undelivered after %s", what, missingAgents, missingPushes, r.cfg.Settle)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *runner) pending() (agents, pushes int) {
	up := map[string]bool{}
	for _, nd := range r.nodes {
		if nd.State() == "up" {
			up[nd.pushAddr()] = true
		}
	}
	for _, a := range r.agents {
		a.mu.Lock()
		if !up[a.server] {
			agents++
		}
		a.mu.Unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.hist.Publishes {
		if p.Result == "accepted" && !r.delivered[p.Payload] {
			pushes++
		}
	}
	return agents, pushes
}

// fault runs one fault on a random node for length, heals it and waits
// for the site to recover.
func (r *runner) fault(ctx context.Context, kind string, length time.Duration) error {
	k := mrand.IntN(len(r.nodes))
	nd := r.nodes[k]
	f := Fault{Kind: kind, Node: k, Start: time.Now()}
	r.log("chaos: %s on %s for %s", kind, nd.name, length.Round(time.Second))
	hold := func() {
		select {
		case <-ctx.Done():
		case <-time.After(length):
		}
	}
	var err error
	switch kind {
	case "kill":
		nd.kill()
		hold()
		err = nd.start(ctx)
	case "pause":
		nd.signal(syscall.SIGSTOP)
		hold()
		nd.signal(syscall.SIGCONT)
	case "isolate":
		var others []netip.Addr
		for _, o := range r.nodes {
			if o != nd {
				others = append(others, o.address())
			}
		}
		if err = r.net.isolate(nd.ns, others); err == nil {
			hold()
			err = r.net.heal(nd.ns)
		}
	case "split": // the largest minority (1 of 3, 2 of 5) cut off from the rest
		minority := map[*node]bool{}
		for _, i := range mrand.Perm(len(r.nodes))[:(len(r.nodes)-1)/2] {
			minority[r.nodes[i]] = true
		}
		var majority []netip.Addr
		var names []string
		for _, o := range r.nodes {
			if !minority[o] {
				majority = append(majority, o.address())
			} else {
				names = append(names, o.name)
			}
		}
		for o := range minority {
			if err = r.net.isolate(o.ns, majority); err != nil {
				break
			}
		}
		f.Note = "minority: " + strings.Join(names, ", ")
		if err == nil {
			hold()
		}
		for o := range minority {
			if herr := r.net.heal(o.ns); herr != nil && err == nil {
				err = herr
			}
		}
	case "readdress":
		nd.kill()
		r.mu.Lock()
		a := r.net.addr(r.nextAddr)
		r.nextAddr++
		r.mu.Unlock()
		if err = r.net.addAddr(nd.ns, a); err == nil {
			nd.mu.Lock()
			nd.addr = a
			nd.mu.Unlock()
			hold()
			err = nd.start(ctx)
			f.Note = "now at " + a.String()
		}
	case "diskfull":
		if err = nd.fill(); err == nil {
			hold()
			err = nd.unfill()
		}
	case "truncate", "bitflip":
		nd.kill()
		if err = nd.corrupt(kind); err != nil {
			break
		}
		hold()
		if serr := nd.start(ctx); serr == nil {
			f.Note = "started on the damaged store"
			break
		} else if nd.exitCode() != 1 {
			err = serr
			break
		}
		var out string
		if out, err = nd.recoverStore(); err == nil {
			f.Note = "refused at start (exit 1), then dpgate store recover: " + lastLine(out, "kept ")
			err = nd.start(ctx)
		}
	case "rolling":
		for _, o := range r.nodes {
			o.stop()
			if err = o.start(ctx); err != nil {
				break
			}
			if err = r.settleAgents(ctx); err != nil {
				break
			}
		}
	case "upgrade": // a rolling upgrade: each node replaced by a new process, no socket closed
		for _, o := range r.nodes {
			if err = o.upgrade(ctx, r.files.token); err != nil {
				break
			}
			if err = r.settleAgents(ctx); err != nil {
				break
			}
		}
	default:
		err = fmt.Errorf("chaos: unknown fault %q (want one of %v)", kind, Kinds)
	}
	f.End = time.Now()
	if err != nil {
		f.Recovered = -1
		r.addFault(f)
		return fmt.Errorf("chaos: %s on %s: %w", kind, nd.name, err)
	}
	serr := r.settle(ctx, kind)
	f.Recovered = time.Since(f.End)
	if serr != nil {
		f.Recovered = -1
	}
	r.addFault(f)
	r.log("chaos: %s healed; recovered in %s", kind, f.Recovered.Round(100*time.Millisecond))
	return serr
}

// settleAgents waits for every agent to be on a node that is up (a step
// of a rolling restart).
func (r *runner) settleAgents(ctx context.Context) error {
	deadline := time.Now().Add(r.cfg.Settle)
	for time.Now().Before(deadline) {
		if a, _ := r.pending(); a == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return errors.New("agents did not come back within Settle")
}

func (r *runner) addFault(f Fault) {
	r.mu.Lock()
	r.hist.Faults = append(r.hist.Faults, f)
	r.mu.Unlock()
}

// lastLine is the last line of s that starts with prefix, or s's last line.
func lastLine(s, prefix string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], prefix) {
			return lines[i]
		}
	}
	return lines[len(lines)-1]
}
