package gateway

import (
	"runtime"

	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/wake"
)

// PlatformLimits names what this build cannot do on the platform it was
// built for (all of it works on Linux); Start logs each, and
// docs/operations.md ("Platforms") lists them.
func PlatformLimits() []string {
	var out []string
	if !link.HasTCPInfo {
		out = append(out, "no TCP path figures (TCP_INFO): push sessions over TCP and proxied upstream connections report no RTT or retransmissions; QUIC sessions do")
	}
	if !link.ReflectorTTL {
		out = append(out, "the STAMP reflector does not report the TTL probes arrived with (hop count unknown)")
	}
	if !wake.BindsToDevice {
		out = append(out, "Wake-on-LAN's limited broadcast leaves through the default route's interface only (no SO_BINDTODEVICE); directed broadcast and unicast magic packets work")
	}
	if runtime.GOOS != "linux" {
		out = append(out, "no systemd notification or watchdog; the admin socket's peer is not checked (SO_PEERCRED), its file mode is the only guard")
	}
	if runtime.GOOS == "windows" {
		out = append(out, "no upgrade without downtime (dpgate upgrade, SIGUSR2): restart the service; no SIGHUP (reload with POST /v1/reload) or SIGUSR1 (read /metrics)")
	}
	return out
}
