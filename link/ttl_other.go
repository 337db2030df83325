//go:build !linux

package link

import "net"

// ReflectorTTL says whether the reflector reports the TTL its probes
// arrived with on this platform (elsewhere Stats.ReflectorTTL stays 0).
const ReflectorTTL = false

func receiveTTL(*net.UDPConn) {}

func ttlOf([]byte) uint8 { return 0 }
