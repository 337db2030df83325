package cluster

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
)

// Questions one node asks all the others, for what spans the cluster but
// lives on each node: the devices each knows (a push to all, the device
// list). The router carries them; what each answers is the gateway's
// (RouterConfig.Queries), so the router need not know the push server's
// types.

// AskAll asks every other push node the query, all at once, and returns
// each answer (JSON) by node, with the nodes that did not answer (sorted):
// those asked in vain and those declared dead and not back (Failed).
// A node that cannot be reached costs the request timeout, once.
func (r *Router) AskAll(ctx context.Context, query string) (answers map[string]json.RawMessage, notReached []string) {
	answers = map[string]json.RawMessage{}
	notReached = r.failedPushNodes()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range r.nodes() {
		if m.Name == r.self {
			continue
		}
		wg.Go(func() { // ends with its request
			var out json.RawMessage
			err := r.peer.post(ctx, m.Name, "/v1/peer/query", queryBody{Query: query}, &out)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				r.log.Warn("cluster: asking another node", "query", query, "node", m.Name, "err", err)
				notReached = append(notReached, m.Name)
				return
			}
			answers[m.Name] = out
		})
	}
	wg.Wait()
	slices.Sort(notReached)
	return answers, notReached
}

type queryBody struct {
	Query string `json:"q"`
}

func (pn *peerNet) handleQuery(w http.ResponseWriter, req *http.Request) {
	var body queryBody
	if _, ok := pn.request(w, req, 1<<10, &body); !ok {
		return
	}
	answer, ok := pn.r.cfg.Queries[body.Query]
	if !ok {
		http.Error(w, "unknown query "+body.Query, http.StatusNotFound)
		return
	}
	writeJSON(w, answer())
}
