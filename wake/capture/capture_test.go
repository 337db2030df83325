package capture

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/dpgate/dpgate/wake"
)

// TestCaptureDecodesByPort writes a wake-up datagram and a magic packet,
// each in IPv4/UDP to its standard port, to a pcap file and reads it
// back: gopacket finds the layers by the ports this package registers.
func TestCaptureDecodesByPort(t *testing.T) {
	d := wake.NewDatagram(wake.KindWakeUp, "pc-7", 1)
	wake.SignHMAC(d, []byte("0123456789abcdef"))
	dgram, err := wake.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("02:00:00:00:00:07")
	magic, err := wake.Marshal(&wake.WakeOnLAN{MAC: mac})
	if err != nil {
		t.Fatal(err)
	}

	file := filepath.Join(t.TempDir(), "wake.pcap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriter(f)
	w.WriteFileHeader(65536, layers.LinkTypeIPv4)
	for _, p := range []struct {
		port layers.UDPPort
		body []byte
	}{{15000, dgram}, {15010, dgram}, {13000, dgram}, {9, magic}, {7, magic}} {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(127, 0, 0, 1), DstIP: net.IPv4(127, 0, 0, 1)}
		udp := &layers.UDP{SrcPort: 40000, DstPort: p.port}
		udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, udp, gopacket.Payload(p.body)); err != nil {
			t.Fatal(err)
		}
		w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Now(), CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}, buf.Bytes())
	}
	f.Close()

	f, err = os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var datagrams, magics int
	for pkt := range gopacket.NewPacketSource(rd, layers.LayerTypeIPv4).Packets() {
		if l, ok := pkt.Layer(wake.LayerTypeDatagram).(*wake.Datagram); ok && l.DeviceID == "pc-7" && bytes.Equal(l.LayerContents(), dgram) {
			datagrams++
		}
		if l, ok := pkt.Layer(wake.LayerTypeWakeOnLAN).(*wake.WakeOnLAN); ok && l.MAC.String() == mac.String() && bytes.Equal(l.LayerContents(), magic) {
			magics++
		}
	}
	if datagrams != 3 || magics != 2 {
		t.Errorf("from the pcap file: %d datagrams, %d magic packets; want 3 and 2", datagrams, magics)
	}
}
