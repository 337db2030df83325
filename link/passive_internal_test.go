package link

import (
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestQUICPathMinimumNotAboveSmoothed: quic-go keeps its smoothed RTT in
// whole microseconds and its minimum in nanoseconds. The figures are
// whole microseconds, the minimum never above the smoothed RTT (seen in
// TestPathStats under load: 241.253 ms smoothed, 241.253443 ms minimum).
func TestQUICPathMinimumNotAboveSmoothed(t *testing.T) {
	for _, st := range []quic.ConnectionStats{
		{SmoothedRTT: 241253 * time.Microsecond, MinRTT: 241253443 * time.Nanosecond, MeanDeviation: 90469 * time.Microsecond},
		{SmoothedRTT: 3390 * time.Microsecond, MinRTT: 16 * time.Microsecond, MeanDeviation: 6753 * time.Microsecond},
		{SmoothedRTT: 1500 * time.Microsecond, MinRTT: 1502 * time.Microsecond}, // the float32 arithmetic's rounding
	} {
		p := quicPath(st)
		if p.MinRTT > p.RTT || p.RTT%time.Microsecond != 0 || p.MinRTT%time.Microsecond != 0 || p.RTTVar%time.Microsecond != 0 {
			t.Errorf("from %+v: %+v, want whole microseconds and the minimum at most the smoothed RTT", st, p)
		}
		if p.RTT != st.SmoothedRTT.Truncate(time.Microsecond) {
			t.Errorf("from %+v: RTT %s, want the smoothed RTT", st, p.RTT)
		}
	}
}
