package gateway

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/loadtest"
)

// TestLinksSteerTheProxy: two upstreams measured through the impairment
// relay against the gateway's own reflector; the one at 300 ms each way
// is judged out of limits, shows so in /v1/links and the proxy's status,
// and is tried after the other.
func TestLinksSteerTheProxy(t *testing.T) {
	t.Parallel()
	// First a gateway that is only a reflector, then the one that probes.
	refl, _, _ := newTestGateway(t, "push:\n  listen: \"off\"\nlink:\n  reflector_listen: 127.0.0.1:0\n")
	reflAddr := refl.reflectorAddr
	fast, err := loadtest.NewUDPRelay("127.0.0.1:0", reflAddr, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	slow, err := loadtest.NewUDPRelay("127.0.0.1:0", reflAddr, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	late := loadtest.Impairment{Delay: 300 * time.Millisecond}
	slow.Set(late, late)
	g, api, _ := newTestGateway(t, fmt.Sprintf(`proxy:
  listen: 127.0.0.1:0
  upstreams:
    - address: 127.0.0.1:1
      probe: %s
    - address: 127.0.0.1:2
      probe: %s
link:
  probe_interval: 10ms
  window: 2s
`, fast.Addr(), slow.Addr()))
	waitFor(t, 30*time.Second, func() error {
		var r struct{ Links []link.Status }
		if err := api.Do(context.Background(), "GET", "/v1/links", nil, &r); err != nil {
			return err
		}
		if len(r.Links) != 2 || r.Links[0].Verdict != link.OK || r.Links[1].Verdict != link.OutOfLimits {
			return fmt.Errorf("links %+v, want ok and out-of-limits", r.Links)
		}
		return nil
	})
	st := g.proxy.Status()
	if st.Upstreams[0].OutOfLimits || !st.Upstreams[1].OutOfLimits {
		t.Errorf("proxy upstreams %+v, want only the second out of limits", st.Upstreams)
	}
	if v := g.uplinkVerdict(); v != string(link.OutOfLimits) {
		t.Errorf("cluster uplink verdict %q, want the worst: out-of-limits", v)
	}
}
