package loadtest

import "testing"

func TestThresholds(t *testing.T) {
	rep := ConnectReport{Agents: 200, Connected: 200, HeldAfterHold: 199, HandshakeP99: 4.2, Failures: map[string]int64{"tls": 3}}
	for _, tc := range []struct {
		expr string
		pass bool
	}{
		{"p99<5ms", true}, {"p99 < 0.004s", false}, {"p99<4200us", false}, {"p99<=4200us", true},
		{"connected>=100%", true}, {"held>=100%", false}, {"failed==0", false}, {"failed<10", true},
	} {
		th, err := ParseThreshold(tc.expr)
		if err != nil {
			t.Fatal(err)
		}
		if pass, got, err := th.Check(rep.Figures()); err != nil || pass != tc.pass {
			t.Errorf("%s on p99 4.2 ms, 200/200 connected, 199 held, 3 failed: pass %v (got %v, %v), want %v", tc.expr, pass, got, err, tc.pass)
		}
	}
	for _, bad := range []string{"p99", "p99<<5", "P99<5ms", "p99<5min"} {
		if _, err := ParseThreshold(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	th, _ := ParseThreshold("nope<1")
	if _, _, err := th.Check(rep.Figures()); err == nil {
		t.Error("an unknown figure passed")
	}
}
