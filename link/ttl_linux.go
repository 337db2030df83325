package link

import (
	"encoding/binary"
	"net"

	"golang.org/x/sys/unix"
)

// ReflectorTTL says whether the reflector reports the TTL its probes
// arrived with on this platform (elsewhere Stats.ReflectorTTL stays 0).
const ReflectorTTL = true

// receiveTTL asks the kernel for each datagram's TTL (IPv4, also IPv4
// arriving on a dual-stack socket) and hop limit (IPv6). Errors leave the
// field 0, as before: a socket of the other family refuses one of them.
func receiveTTL(pc *net.UDPConn) {
	raw, err := pc.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTTL, 1)
		unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT, 1)
	})
}

// ttlOf reads the TTL or hop limit from a datagram's control messages
// (an int each); 0 when absent.
func ttlOf(oob []byte) uint8 {
	msgs, _ := unix.ParseSocketControlMessage(oob)
	for _, m := range msgs {
		ttl := m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TTL
		hops := m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_HOPLIMIT
		if (ttl || hops) && len(m.Data) >= 4 {
			return uint8(binary.NativeEndian.Uint32(m.Data))
		}
	}
	return 0
}
