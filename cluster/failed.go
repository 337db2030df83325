package cluster

import (
	"cmp"
	"encoding/json"
	"errors"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/dpgate/dpgate/tlsconf"
)

// Failed nodes, kept the same on every node.
//
// memberlist forgets a dead node within seconds, and a node that joins
// later never hears of it. So each node keeps its own list (Failed), and
// tells every node it sees join, and every node again each
// RejoinInterval (5 s at the least), what it knows (kindFailed, over TCP): the
// failed nodes, and when it last cleared one (the node came back, left in
// good order, or was forgotten). A node takes a failed node it did not
// know unless it is alive here or was cleared here after it failed, or
// less than clearGrace before; it drops one cleared after it failed. So
// a node back from a restart with a list from before a Forget does not
// list the forgotten node again, nor make the others do so, and a leave
// one node took for a failure does not spread. Times are the nodes'
// clocks: a clock seconds off matters only for a node that failed and
// was cleared within those seconds.

// FailedKept is how long a failed node is listed (Failed) unless it comes
// back or leaves: a day, as Serf keeps a failed member for reconnecting.
const FailedKept = 24 * time.Hour

// Failed is a node declared dead that has not come back: it did not
// leave in good order, so it may still hold devices and pushes the live
// nodes do not know of.
type Failed struct {
	Member           // as last seen alive
	Since  time.Time // when it was declared dead
}

// Failed returns the nodes declared dead in the last FailedKept that have
// not come back or left since, by name. A node that left in good order
// (drain, upgrade, stop) is not among them.
func (c *Cluster) Failed() []Failed {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropOldFailed()
	out := make([]Failed, 0, len(c.failed))
	for _, f := range c.failed {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// dropOldFailed drops the failed nodes and clearings older than
// FailedKept. c.mu is held.
func (c *Cluster) dropOldFailed() {
	for name, f := range c.failed {
		if time.Since(f.Since) > FailedKept {
			delete(c.failed, name)
		}
	}
	for name, at := range c.cleared {
		if time.Since(at) > FailedKept {
			delete(c.cleared, name)
		}
	}
}

// nodeFailed lists m as failed now. c.mu is held.
func (c *Cluster) nodeFailed(m Member) {
	c.failed[m.Name] = Failed{Member: m, Since: time.Now()}
}

// nodeCleared ends name's failure, if it is listed, and any an older list
// may hold: it came back, left in good order or was forgotten. c.mu is
// held.
func (c *Cluster) nodeCleared(name string) {
	delete(c.failed, name)
	c.cleared[name] = time.Now()
}

// Forget errors.
var (
	ErrAlive     = errors.New("cluster: the node is alive; stop it (it leaves in good order) rather than forget it")
	ErrNotFailed = errors.New("cluster: no failed node of that name")
)

// Forget drops a failed node from Failed on every node (told over TCP), for a
// node that is gone for good: decommissioned without leaving, or dead.
// Its devices and pushes the others did not know of are given up. A
// node of that name that comes back joins as any node does.
func (c *Cluster) Forget(name string) error {
	c.mu.Lock()
	_, alive := c.members[name]
	_, failed := c.failed[name]
	if failed && !alive {
		c.nodeCleared(name)
	}
	c.mu.Unlock()
	switch {
	case alive:
		return ErrAlive
	case !failed:
		return ErrNotFailed
	}
	c.sendToAll(append([]byte{kindForget}, name...), 2*time.Second)
	return nil
}

// forgotten is another node's Forget of name.
func (c *Cluster) forgotten(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, alive := c.members[name]; !alive {
		c.nodeCleared(name)
	}
}

// failedRecord is a failed node, or with Cleared set a node's failure
// ended then, in FailedFile (a JSON array of them) and in kindFailed
// messages.
type failedRecord struct {
	Name    string    `json:"name"`
	Addr    string    `json:"addr,omitempty"`
	Meta    Meta      `json:"meta,omitzero"`
	Since   time.Time `json:"since,omitzero"`
	Cleared time.Time `json:"cleared,omitzero"`
}

// readFailed lists again the failed nodes FailedFile kept, those still
// within FailedKept. A missing file is none; a damaged one is logged and
// left out.
func (c *Cluster) readFailed() {
	if c.cfg.FailedFile == "" {
		return
	}
	b, err := os.ReadFile(c.cfg.FailedFile)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var recs []failedRecord
	if err == nil {
		err = json.Unmarshal(b, &recs)
	}
	if err != nil {
		c.log.Warn("cluster: the failed nodes kept cannot be read; they are not listed again", "file", c.cfg.FailedFile, "err", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mergeFailed(recs, 0)
	c.failedAt = string(c.encodeFailed())
}

// encodeFailed is the failed nodes and the clearings, by name. c.mu is
// held.
func (c *Cluster) encodeFailed() []byte {
	recs := make([]failedRecord, 0, len(c.failed)+len(c.cleared))
	for _, f := range c.failed {
		recs = append(recs, failedRecord{Name: f.Name, Addr: f.Addr, Meta: f.Meta, Since: f.Since})
	}
	for name, at := range c.cleared {
		recs = append(recs, failedRecord{Name: name, Cleared: at})
	}
	slices.SortFunc(recs, func(a, b failedRecord) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), a.Cleared.Compare(b.Cleared))
	})
	b, _ := json.Marshal(recs)
	return b
}

// clearGrace: a peer's failure of a node cleared here less than this
// before is taken for the same departure, seen by that peer as a failure
// (a leave announcement it missed under load, a failure detected seconds
// after the leave seen here), and not listed: one node's mistake does
// not spread. Detection of the same event differs by seconds between
// nodes; a node back and failed again within this is listed by those
// that see it fail, not learned by the others.
const clearGrace = 30 * time.Second

// mergeFailed takes what a peer (or FailedFile) knows: its clearings
// first, then the failed nodes neither alive here nor cleared here
// since they failed, less grace (clearGrace for a peer's, 0 for the
// file, which holds this node's own judgements). It returns the nodes
// newly listed. c.mu is held.
func (c *Cluster) mergeFailed(recs []failedRecord, grace time.Duration) (learned []Failed) {
	for _, r := range recs {
		if r.Cleared.IsZero() || time.Since(r.Cleared) > FailedKept || !r.Cleared.After(c.cleared[r.Name]) {
			continue
		}
		c.cleared[r.Name] = r.Cleared
		if f, ok := c.failed[r.Name]; ok && !f.Since.After(r.Cleared) {
			delete(c.failed, r.Name)
		}
	}
	for _, r := range recs {
		_, alive := c.members[r.Name]
		_, known := c.failed[r.Name]
		if r.Since.IsZero() || r.Name == "" || r.Name == c.cfg.Name || alive || known ||
			time.Since(r.Since) > FailedKept || !r.Since.After(c.cleared[r.Name].Add(grace)) {
			continue
		}
		f := Failed{Member: Member{Name: r.Name, Addr: r.Addr, Meta: r.Meta}, Since: r.Since}
		c.failed[r.Name] = f
		learned = append(learned, f)
	}
	return learned
}

// rememberFailed writes the failed nodes to FailedFile when they changed
// (as rememberPeers does).
func (c *Cluster) rememberFailed() {
	if c.cfg.FailedFile == "" {
		return
	}
	c.mu.Lock()
	c.dropOldFailed()
	b := c.encodeFailed()
	same := string(b) == c.failedAt
	c.mu.Unlock()
	if same {
		return
	}
	if err := tlsconf.WriteFileAtomic(c.cfg.FailedFile, append(b, '\n'), 0o600); err != nil {
		c.log.Warn("cluster: keeping the failed nodes", "file", c.cfg.FailedFile, "err", err)
		return
	}
	c.mu.Lock()
	c.failedAt = string(b)
	c.mu.Unlock()
}

// tellFailed has the teller send what this node knows of failed nodes to
// name, which has just joined. It never waits: with the teller's queue
// full (a cluster of more nodes than it holds, all joining at once) the
// node is not told, and learns from the others.
func (c *Cluster) tellFailed(name string) {
	select {
	case c.tell <- name:
	default:
		c.log.Debug("cluster: failed nodes not told to a node that joined (queue full)", "node", name)
	}
}

// minTellEvery bounds how often tellAll runs, whatever RejoinInterval
// (tests shorten it to 200 ms): a TCP message to every node each time.
const minTellEvery = 5 * time.Second

// tellAll has the teller tell every other live node, when there is
// anything to tell, every RejoinInterval (30 s; minTellEvery at the
// least): a tell at a join is one
// TCP message, which a loaded peer may not accept in time (seen under
// load in tests: "dial tcp ...: i/o timeout"), so each node hears again
// until it has what the others know.
func (c *Cluster) tellAll() {
	c.mu.Lock()
	var names []string
	if len(c.failed)+len(c.cleared) > 0 {
		for name := range c.members {
			if name != c.cfg.Name {
				names = append(names, name)
			}
		}
	}
	c.mu.Unlock()
	for _, name := range names {
		c.tellFailed(name)
	}
}

// teller sends the failed nodes and clearings to each node that joined,
// one after the other, until Close.
func (c *Cluster) teller() {
	defer c.wg.Done()
	for {
		select {
		case <-c.done:
			return
		case name := <-c.tell:
			c.mu.Lock()
			m, alive := c.members[name]
			var msg []byte
			if len(c.failed)+len(c.cleared) > 0 {
				msg = append([]byte{kindFailed}, c.encodeFailed()...)
			}
			c.mu.Unlock()
			host, port, err := net.SplitHostPort(m.Addr)
			if !alive || msg == nil || err != nil {
				continue
			}
			p, _ := strconv.Atoi(port)
			if err := c.ml.SendReliable(&memberlist.Node{Name: name, Addr: net.ParseIP(host), Port: uint16(p)}, msg); err != nil {
				c.log.Debug("cluster: telling a node that joined of the failed nodes", "node", name, "err", err)
			}
		}
	}
}

// toldFailed takes a peer's failed nodes and clearings (kindFailed).
func (c *Cluster) toldFailed(b []byte) {
	var recs []failedRecord
	if err := json.Unmarshal(b, &recs); err != nil {
		c.log.Warn("cluster: a peer's failed nodes do not decode", "err", err)
		return
	}
	c.mu.Lock()
	learned := c.mergeFailed(recs, clearGrace)
	c.mu.Unlock()
	for _, f := range learned {
		c.log.Warn("cluster: node failed (before this node knew it; another node told it)", "node", f.Name, "addr", f.Addr,
			"since", f.Since.UTC().Format(time.RFC3339))
	}
}
