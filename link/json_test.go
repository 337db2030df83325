package link_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dpgate/dpgate/link"
)

// TestStatsJSONRoundTrip: what the admin API writes, a client (dpgate
// status, the console, dpload) reads back the same, to the microsecond.
// Before, durations went out as rtt_p50_ms and so on and came back as 0:
// "dpgate status" showed every uplink's rtt as 0s.
func TestStatsJSONRoundTrip(t *testing.T) {
	roundTrip(t, link.Stats{Target: "127.0.0.1:862", Sent: 300, Received: 297, Loss: 0.01, LossOut: 0.0067, LossBack: 0.0033,
		RTTMin: 201 * time.Microsecond, RTTP50: 382 * time.Microsecond, RTTP90: 692 * time.Microsecond,
		RTTP99: 3249 * time.Microsecond, RTTMax: 1500 * time.Millisecond, Jitter: 271 * time.Microsecond,
		Duplicates: 2, Reordered: 1, ReflectorTTL: 63, WindowStart: time.Date(2026, 12, 7, 9, 21, 49, 656575643, time.UTC)},
		`"rtt_p50_ms":0.382`)
}

// TestPathStatsJSONRoundTrip: the same for a device's path figures
// ("dpgate device show" printed rtt_ms 0 where the API said 0.812).
func TestPathStatsJSONRoundTrip(t *testing.T) {
	roundTrip(t, link.PathStats{Source: "quic", RTT: 812 * time.Microsecond, RTTVar: 236 * time.Microsecond, MinRTT: 705 * time.Microsecond, Sent: 6, Lost: 1},
		`"rtt_ms":0.812`, `"loss":0.16666`)
}

// roundTrip checks that want's JSON holds each of the API's fields given
// and reads back as want.
func roundTrip[T comparable](t *testing.T, want T, fields ...string) {
	t.Helper()
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fields {
		if !strings.Contains(string(b), f) {
			t.Errorf("the API's JSON changed: %s has no %s", b, f)
		}
	}
	var got T
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("read back\n%+v\nwant\n%+v\nfrom %s", got, want, b)
	}
}
