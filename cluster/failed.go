package cluster

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/dpgate/dpgate/tlsconf"
)

// Failed nodes, the same on every node.
//
// memberlist forgets a dead node within seconds, and a node that joins
// later, or was down when it failed, never hears of it. So each node
// keeps, by name, what it last knew of each node that is gone: failed
// (declared dead, since when) or cleared (left in good order, or
// forgotten by an operator, when). A node back alive has no record:
// alive says more than either. The records go with memberlist's
// push/pull, the exchange of whole state at every join and every
// PushPullInterval (15 s) with a random node, over TCP: a node that
// joins has them from the node it joined before the join returns.
//
// Of two records of one name the later wins, a cleared one counting
// clearGrace later than it is; a node alive here takes none. So every
// node ends with the same records whatever order they meet in, a node
// back from a restart with a list from before a Forget does not list
// the forgotten node again, and a leave that one node took for a
// failure (it missed the announcement) is corrected there rather than
// spread. Times are the nodes' clocks: clocks seconds apart matter only
// for a node that failed and was cleared within those seconds.

// FailedKept is how long a failed node is listed (Failed) unless it comes
// back or leaves: a day, as Serf keeps a failed member for reconnecting.
// A clearing is kept as long.
const FailedKept = 24 * time.Hour

// clearGrace: a failure of a node less than this after it was cleared
// (seen to leave, or forgotten) is taken for the same departure: one
// node missed the leave announcement under load, or detected the
// failure seconds after another saw the node leave. Detection of one
// event differs by seconds between nodes; a node back and failed again
// within this is listed by the nodes that see it fail.
const clearGrace = 30 * time.Second

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
	slices.SortFunc(out, func(a, b Failed) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// dropOldFailed drops the records older than FailedKept. c.mu is held.
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

// nodeFailed records m declared dead now. c.mu is held.
func (c *Cluster) nodeFailed(m Member) {
	delete(c.cleared, m.Name)
	c.failed[m.Name] = Failed{Member: m, Since: time.Now()}
}

// nodeCleared records that name left in good order or was forgotten
// now. c.mu is held.
func (c *Cluster) nodeCleared(name string) {
	delete(c.failed, name)
	c.cleared[name] = time.Now()
}

// nodeAlive drops what was recorded of name: it is back. c.mu is held.
func (c *Cluster) nodeAlive(name string) {
	delete(c.failed, name)
	delete(c.cleared, name)
}

// Forget errors.
var (
	ErrAlive     = errors.New("cluster: the node is alive; stop it (it leaves in good order) rather than forget it")
	ErrNotFailed = errors.New("cluster: no failed node of that name")
)

// Forget drops a failed node from Failed on every node (told over TCP at
// once, and in every push/pull after, so a node down now learns it when
// it is back), for a node that is gone for good: decommissioned without
// leaving, or dead. Its devices and pushes the others did not know of
// are given up. A node of that name that comes back joins as any node
// does.
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
	if _, alive := c.members[name]; !alive && name != c.cfg.Name {
		c.nodeCleared(name)
	}
}

// failedRecord is a failed node (Since set) or a clearing (Cleared set),
// in FailedFile (a JSON array of them) and in push/pull. Versions before
// clearings read a clearing's zero Since as older than FailedKept and
// skip it.
type failedRecord struct {
	Name    string    `json:"name"`
	Addr    string    `json:"addr,omitempty"`
	Meta    Meta      `json:"meta,omitzero"`
	Since   time.Time `json:"since,omitzero"`
	Cleared time.Time `json:"cleared,omitzero"`
}

// at is when the record's judgement was made, a clearing counted
// clearGrace later (see clearGrace).
func (r failedRecord) at() time.Time {
	if r.Since.IsZero() {
		return r.Cleared.Add(clearGrace)
	}
	return r.Since
}

// records returns the failed nodes and the clearings, by name. c.mu is
// held.
func (c *Cluster) records() []failedRecord {
	recs := make([]failedRecord, 0, len(c.failed)+len(c.cleared))
	for _, f := range c.failed {
		recs = append(recs, failedRecord{Name: f.Name, Addr: f.Addr, Meta: f.Meta, Since: f.Since})
	}
	for name, at := range c.cleared {
		recs = append(recs, failedRecord{Name: name, Cleared: at})
	}
	slices.SortFunc(recs, func(a, b failedRecord) int { return strings.Compare(a.Name, b.Name) })
	return recs
}

// merge takes a peer's records: of each name's, this node's and the
// peer's, the later wins (failedRecord.at; a clearing at a tie). Names
// alive here, this node's own and records past FailedKept are left out.
// It returns the failures newly listed and the names no longer listed
// as failed. c.mu is held.
func (c *Cluster) merge(recs []failedRecord) (learned []Failed, cleared []string) {
	for _, r := range recs {
		_, alive := c.members[r.Name]
		if r.Name == "" || r.Name == c.cfg.Name || alive || (r.Since.IsZero() == r.Cleared.IsZero()) ||
			time.Since(cmp.Or(r.Since, r.Cleared)) > FailedKept {
			continue
		}
		var mine failedRecord
		f, isFailed := c.failed[r.Name]
		at, isCleared := c.cleared[r.Name]
		switch {
		case isFailed:
			mine = failedRecord{Name: r.Name, Since: f.Since}
		case isCleared:
			mine = failedRecord{Name: r.Name, Cleared: at}
		}
		if (isFailed || isCleared) && !r.at().After(mine.at()) && !(r.at().Equal(mine.at()) && !r.Cleared.IsZero()) {
			continue // this node's is as late or later
		}
		if r.Since.IsZero() {
			if isFailed {
				cleared = append(cleared, r.Name)
			}
			delete(c.failed, r.Name)
			c.cleared[r.Name] = r.Cleared
			continue
		}
		delete(c.cleared, r.Name)
		nf := Failed{Member: Member{Name: r.Name, Addr: r.Addr, Meta: r.Meta}, Since: r.Since}
		c.failed[r.Name] = nf
		if !isFailed {
			learned = append(learned, nf)
		}
	}
	return learned, cleared
}

// readFailed takes again the records FailedFile kept, those within
// FailedKept. A missing file is none; a damaged one is logged and left
// out.
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
	c.merge(recs)
	c.failedAt, _ = json.Marshal(c.records())
}

// rememberFailed writes the records to FailedFile when they changed (as
// rememberPeers does).
func (c *Cluster) rememberFailed() {
	if c.cfg.FailedFile == "" {
		return
	}
	c.mu.Lock()
	c.dropOldFailed()
	b, _ := json.Marshal(c.records())
	same := bytes.Equal(b, c.failedAt)
	c.mu.Unlock()
	if same {
		return
	}
	if err := tlsconf.WriteFileAtomic(c.cfg.FailedFile, append(b, '\n'), 0o600); err != nil {
		c.log.Warn("cluster: keeping the failed nodes", "file", c.cfg.FailedFile, "err", err)
		return
	}
	c.mu.Lock()
	c.failedAt = b
	c.mu.Unlock()
}

// The push/pull state: a JSON array, first an object of the cluster's
// own, {"failed_nodes": [records]}, then the replicated state's elements
// (Config.State's LocalState, itself an array). Versions before it hand
// the whole array to State.Merge, which skips an element without a
// fingerprint, so a rolling upgrade loses nothing. The state is spliced
// in and cut out as bytes, not decoded and encoded again: an allow-list
// of 20,000 certificates is 4 MB.
type pushPullFailed struct {
	FailedNodes []failedRecord `json:"failed_nodes"`
}

// ownPrefix starts a push/pull state of this version.
var ownPrefix = []byte(`[{"failed_nodes":`)

// localState is what this node sends in a push/pull.
func (c *Cluster) localState() []byte {
	var state []byte
	if c.cfg.State != nil {
		state = bytes.TrimSpace(c.cfg.State.LocalState())
	}
	var inner []byte // the state's elements, without its brackets
	if len(state) > 0 {
		if len(state) < 2 || state[0] != '[' || state[len(state)-1] != ']' {
			c.log.Error("cluster: the replicated state is not a JSON array; sending it without the failed nodes")
			return state
		}
		inner = bytes.TrimSpace(state[1 : len(state)-1])
	}
	c.mu.Lock()
	c.dropOldFailed()
	own, _ := json.Marshal(pushPullFailed{FailedNodes: c.records()})
	c.mu.Unlock()
	out := make([]byte, 0, len(own)+len(inner)+3)
	out = append(append(out, '['), own...)
	if len(inner) > 0 {
		out = append(append(out, ','), inner...)
	}
	return append(out, ']')
}

// mergeRemoteState takes a peer's push/pull state: the failed nodes it
// knows, then the rest for Config.State.
func (c *Cluster) mergeRemoteState(b []byte) {
	b = bytes.TrimSpace(b)
	if !bytes.HasPrefix(b, ownPrefix) {
		c.mergeState(b) // a node of an earlier version: all of it is State's
		return
	}
	dec := json.NewDecoder(bytes.NewReader(b[1:]))
	var own pushPullFailed
	if err := dec.Decode(&own); err != nil {
		c.log.Warn("cluster: a peer's failed nodes do not decode", "err", err)
		return
	}
	rest := bytes.TrimLeft(b[1+dec.InputOffset():], " \t\r\n")
	recs := own.FailedNodes
	c.mu.Lock()
	learned, cleared := c.merge(recs)
	c.mu.Unlock()
	for _, f := range learned {
		c.log.Warn("cluster: node failed (another node saw it before this one knew of it)", "node", f.Name, "addr", f.Addr,
			"since", f.Since.UTC().Format(time.RFC3339))
	}
	for _, name := range cleared {
		c.log.Info("cluster: node no longer listed as failed (another node saw it leave, or it was forgotten)", "node", name)
	}
	if len(rest) > 0 && rest[0] == ',' { // the state's elements follow
		c.mergeState(append([]byte{'['}, rest[1:]...))
	}
}
