// Package wake forwards wake-ups into the LAN: the management server's UDP
// wake-up does not cross NAT into a branch office, a gateway inside it
// can deliver one. The formats are gopacket layers (this file, byte
// layouts in docs/PROTOCOL.md), so tests and tcpdump-style tools decode
// captures of them (wake/capture registers their UDP ports); wake.go is
// the service (requests in, wake-ups out, shutdown notices) and keys.go
// the keys.
package wake

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/dpgate/dpgate/deviceid"
	"github.com/google/gopacket"
)

// Layer types, registered with gopacket. Which UDP ports decode as them
// is registered by wake/capture, apart: it links gopacket/layers, whose
// start-up work (20 ms) would otherwise come before every dpgate command.
var (
	LayerTypeDatagram  = gopacket.RegisterLayerType(1570, gopacket.LayerTypeMetadata{Name: "DpgateWake", Decoder: gopacket.DecodeFunc(decodeDatagram)})
	LayerTypeWakeOnLAN = gopacket.RegisterLayerType(1571, gopacket.LayerTypeMetadata{Name: "WakeOnLAN", Decoder: gopacket.DecodeFunc(decodeWakeOnLAN)})
)

// Kinds of datagram.
const (
	KindWakeUp   uint8 = 1 // gateway -> agent's UDP 15000: connect now
	KindRequest  uint8 = 2 // management server -> gateway's UDP 15010: wake this device
	KindShutdown uint8 = 3 // agent -> gateway's UDP 13000: I am shutting down
)

// Signature algorithms.
const (
	AlgEd25519 uint8 = 1 // 64-byte signature by the gateway's wake key
	AlgHMAC    uint8 = 2 // 32-byte HMAC-SHA256 with a shared secret
)

// Magic opens every datagram.
var Magic = [4]byte{'D', 'P', 'W', 'K'}

// Version of the datagram layout.
const Version = 1

// Datagram is the dpgate wake-up datagram (also a wake request and a
// shutdown notice, by Kind). Layout, all integers big-endian:
//
//	magic "DPWK" (4) | version (1) | kind (1) | alg (1) | id length (1)
//	| device id | timestamp, unix ms (8) | nonce (8) | signature (64 or 32)
//
// The signature covers every byte before it.
type Datagram struct {
	contents  []byte // as decoded
	Version   uint8
	Kind      uint8
	Alg       uint8
	DeviceID  string
	Timestamp int64 // unix milliseconds
	Nonce     [8]byte
	Signature []byte
}

// Errors of decoding; the service counts rejections by them.
var (
	ErrTruncated = errors.New("wake: datagram truncated")
	ErrMagic     = errors.New("wake: not a dpgate wake datagram")
	ErrVersion   = errors.New("wake: unknown datagram version")
	ErrAlg       = errors.New("wake: unknown signature algorithm")
	ErrTrailing  = errors.New("wake: bytes after the signature")
	ErrNoDevice  = errors.New("wake: no device id")
	ErrDeviceID  = errors.New("wake: device id breaks the rule (docs/PROTOCOL.md)")
)

func sigLen(alg uint8) int {
	switch alg {
	case AlgEd25519:
		return 64
	case AlgHMAC:
		return 32
	}
	return -1
}

func (d *Datagram) LayerType() gopacket.LayerType     { return LayerTypeDatagram }
func (d *Datagram) CanDecode() gopacket.LayerClass    { return LayerTypeDatagram }
func (d *Datagram) NextLayerType() gopacket.LayerType { return gopacket.LayerTypeZero }

// DecodeFromBytes parses a datagram; it does not check the signature.
func (d *Datagram) DecodeFromBytes(b []byte, df gopacket.DecodeFeedback) error {
	if len(b) < 8 {
		return ErrTruncated
	}
	if [4]byte(b[:4]) != Magic {
		return ErrMagic
	}
	d.Version, d.Kind, d.Alg = b[4], b[5], b[6]
	if d.Version != Version {
		return ErrVersion
	}
	n := sigLen(d.Alg)
	if n < 0 {
		return ErrAlg
	}
	idLen := int(b[7])
	if idLen == 0 {
		return ErrNoDevice
	}
	end := 8 + idLen + 16 + n
	if len(b) < end {
		return ErrTruncated
	}
	if len(b) > end {
		return ErrTrailing
	}
	d.DeviceID = string(b[8 : 8+idLen])
	if err := deviceid.Check(d.DeviceID); err != nil {
		return fmt.Errorf("%w: %v", ErrDeviceID, err)
	}
	p := 8 + idLen
	d.Timestamp = int64(binary.BigEndian.Uint64(b[p:]))
	copy(d.Nonce[:], b[p+8:p+16])
	d.Signature = append(d.Signature[:0], b[p+16:end]...)
	d.contents = b[:end]
	return nil
}

// Signed is the part the signature covers.
func (d *Datagram) Signed() []byte {
	b := make([]byte, 0, 24+len(d.DeviceID))
	b = append(b, Magic[:]...)
	b = append(b, d.Version, d.Kind, d.Alg, byte(len(d.DeviceID)))
	b = append(b, d.DeviceID...)
	b = binary.BigEndian.AppendUint64(b, uint64(d.Timestamp))
	return append(b, d.Nonce[:]...)
}

// SerializeTo writes the datagram (with its Signature as set).
func (d *Datagram) SerializeTo(buf gopacket.SerializeBuffer, opts gopacket.SerializeOptions) error {
	if err := deviceid.Check(d.DeviceID); err != nil {
		return fmt.Errorf("wake: %w", err)
	}
	if n := sigLen(d.Alg); n < 0 || len(d.Signature) != n {
		return fmt.Errorf("wake: signature of %d bytes for algorithm %d", len(d.Signature), d.Alg)
	}
	signed := d.Signed()
	out, err := buf.PrependBytes(len(signed) + len(d.Signature))
	if err != nil {
		return err
	}
	copy(out, signed)
	copy(out[len(signed):], d.Signature)
	return nil
}

func decodeDatagram(data []byte, p gopacket.PacketBuilder) error {
	d := &Datagram{}
	if err := d.DecodeFromBytes(data, p); err != nil {
		return err
	}
	p.AddLayer(d)
	p.SetApplicationLayer(d)
	return nil
}

// LayerContents is what the datagram was decoded from; LayerPayload is
// empty (nothing follows it); Payload makes it an application layer.
func (d *Datagram) LayerContents() []byte { return d.contents }
func (d *Datagram) LayerPayload() []byte  { return nil }
func (d *Datagram) Payload() []byte       { return d.contents }

// WakeOnLAN is the magic packet: 6 bytes 0xFF, then the target's MAC 16
// times, then an optional SecureOn password of 4 or 6 bytes.
type WakeOnLAN struct {
	contents []byte // as decoded
	MAC      net.HardwareAddr
	Password []byte
}

// ErrNotMagic is returned for a payload that is not a magic packet.
var ErrNotMagic = errors.New("wake: not a Wake-on-LAN magic packet")

func (w *WakeOnLAN) LayerType() gopacket.LayerType     { return LayerTypeWakeOnLAN }
func (w *WakeOnLAN) CanDecode() gopacket.LayerClass    { return LayerTypeWakeOnLAN }
func (w *WakeOnLAN) NextLayerType() gopacket.LayerType { return gopacket.LayerTypeZero }

// DecodeFromBytes parses a magic packet.
func (w *WakeOnLAN) DecodeFromBytes(b []byte, df gopacket.DecodeFeedback) error {
	if len(b) < 102 {
		return ErrTruncated
	}
	for _, c := range b[:6] {
		if c != 0xFF {
			return ErrNotMagic
		}
	}
	mac := b[6:12]
	for i := 1; i < 16; i++ {
		if string(b[6+6*i:12+6*i]) != string(mac) {
			return ErrNotMagic
		}
	}
	switch rest := len(b) - 102; rest {
	case 0, 4, 6:
		w.Password = append(w.Password[:0], b[102:]...)
	default:
		return fmt.Errorf("%w: %d bytes after the MAC repetitions (0, 4 or 6 expected)", ErrNotMagic, rest)
	}
	w.MAC = append(w.MAC[:0], mac...)
	w.contents = b
	return nil
}

// SerializeTo writes the magic packet.
func (w *WakeOnLAN) SerializeTo(buf gopacket.SerializeBuffer, opts gopacket.SerializeOptions) error {
	if len(w.MAC) != 6 {
		return fmt.Errorf("wake: Wake-on-LAN needs a 6-byte MAC, got %d bytes", len(w.MAC))
	}
	if n := len(w.Password); n != 0 && n != 4 && n != 6 {
		return fmt.Errorf("wake: SecureOn password of %d bytes (4 or 6)", n)
	}
	out, err := buf.PrependBytes(102 + len(w.Password))
	if err != nil {
		return err
	}
	for i := range 6 {
		out[i] = 0xFF
	}
	for i := range 16 {
		copy(out[6+6*i:], w.MAC)
	}
	copy(out[102:], w.Password)
	return nil
}

// LayerContents is what the packet was decoded from; LayerPayload is
// empty (nothing follows it); Payload makes it an application layer.
func (w *WakeOnLAN) LayerContents() []byte { return w.contents }
func (w *WakeOnLAN) LayerPayload() []byte  { return nil }
func (w *WakeOnLAN) Payload() []byte       { return w.contents }

func decodeWakeOnLAN(data []byte, p gopacket.PacketBuilder) error {
	w := &WakeOnLAN{}
	if err := w.DecodeFromBytes(data, p); err != nil {
		return err
	}
	p.AddLayer(w)
	p.SetApplicationLayer(w)
	return nil
}

// Marshal serializes one layer to bytes.
func Marshal(l gopacket.SerializableLayer) ([]byte, error) {
	buf := gopacket.NewSerializeBuffer()
	if err := l.SerializeTo(buf, gopacket.SerializeOptions{}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
