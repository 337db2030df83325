// Package capture makes captures of wake-up traffic decode with gopacket:
// imported (for its side effect, like image/png), it registers the UDP
// ports of dpgate's wake datagrams (15000, agents' wake-up port; 15010,
// requests; 13000, shutdown notices) as wake.Datagram and ports 7 and 9
// as wake.WakeOnLAN with gopacket/layers, so that a packet read from a
// pcap file or an interface finds them by port.
//
// The gateway and the agent do not import it: gopacket/layers' own
// start-up work (its tables of every protocol it knows) took 20 ms of the
// 37 ms dpgate spent starting, before every command.
package capture

import (
	"github.com/google/gopacket/layers"

	"github.com/dpgate/dpgate/wake"
)

func init() {
	for _, p := range []layers.UDPPort{15000, 15010, 13000} {
		layers.RegisterUDPPortLayerType(p, wake.LayerTypeDatagram)
	}
	for _, p := range []layers.UDPPort{7, 9} {
		layers.RegisterUDPPortLayerType(p, wake.LayerTypeWakeOnLAN)
	}
}
