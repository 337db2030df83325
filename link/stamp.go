// Package link measures the loss and delay of the gateway's uplinks
// against the limits the central side requires (10 % loss, 100 ms
// round-trip time): STAMP (RFC 8762, unauthenticated mode) test packets
// from a session-sender per uplink (sender.go) to a stateful
// session-reflector (reflector.go), statistics over a sliding window
// (stats.go), and a verdict with hysteresis (verdict.go).
package link

import (
	"encoding/binary"
	"errors"
	"time"
)

// PacketSize is the size of both STAMP test packets in unauthenticated
// mode (RFC 8762, sections 4.2.1 and 4.3.1).
const PacketSize = 44

// DefaultPort is STAMP's well-known UDP port.
const DefaultPort = 862

// Sender is the session-sender's test packet:
//
//	0  sequence number (4)
//	4  timestamp (8, NTP format)
//	12 error estimate (2)
//	14 MBZ (30)
type Sender struct {
	Seq       uint32
	Timestamp time.Time
	ErrorEst  uint16
}

// Reflected is the session-reflector's test packet:
//
//	0  sequence number (4): the reflector's own, counted per session
//	4  timestamp (8): when it was sent back
//	12 error estimate (2)
//	14 MBZ (2)
//	16 receive timestamp (8)
//	24 session-sender sequence number (4)
//	28 session-sender timestamp (8)
//	36 session-sender error estimate (2)
//	38 MBZ (2)
//	40 session-sender TTL (1)
//	41 MBZ (3)
type Reflected struct {
	Seq            uint32
	Timestamp      time.Time
	ErrorEst       uint16
	Received       time.Time
	SenderSeq      uint32
	SenderTime     time.Time
	SenderErrorEst uint16
	SenderTTL      uint8
}

// ErrShort is returned for a packet under PacketSize bytes.
var ErrShort = errors.New("link: STAMP packet shorter than 44 bytes")

// errorEstimate: S=0 (not synchronized to UTC), Z=0 (NTP format), scale
// and multiplier for about 1 ms.
const errorEstimate = 0<<15 | 0<<14 | 22<<8 | 1

// ntpEpochOffset is the seconds from 1900-01-01 (NTP) to 1970-01-01.
const ntpEpochOffset = 2208988800

// NTP encodes t in the 64-bit NTP format: seconds since 1900 and a binary
// fraction.
func NTP(t time.Time) uint64 {
	secs := uint64(t.Unix() + ntpEpochOffset)
	frac := uint64(t.Nanosecond()) << 32 / 1e9
	return secs<<32 | frac
}

// FromNTP decodes the 64-bit NTP format.
func FromNTP(v uint64) time.Time {
	secs := int64(v>>32) - ntpEpochOffset
	nanos := int64((v & 0xffffffff) * 1e9 >> 32)
	return time.Unix(secs, nanos)
}

// Marshal writes the packet into b (at least PacketSize bytes, zeroed
// MBZ fields included) and returns b[:PacketSize].
func (p *Sender) Marshal(b []byte) []byte {
	b = b[:PacketSize]
	clear(b)
	binary.BigEndian.PutUint32(b[0:], p.Seq)
	binary.BigEndian.PutUint64(b[4:], NTP(p.Timestamp))
	binary.BigEndian.PutUint16(b[12:], p.ErrorEst)
	return b
}

// ParseSender decodes a session-sender packet. Longer packets (RFC 8972
// extensions) are accepted; the rest is ignored.
func ParseSender(b []byte) (Sender, error) {
	if len(b) < PacketSize {
		return Sender{}, ErrShort
	}
	return Sender{
		Seq:       binary.BigEndian.Uint32(b[0:]),
		Timestamp: FromNTP(binary.BigEndian.Uint64(b[4:])),
		ErrorEst:  binary.BigEndian.Uint16(b[12:]),
	}, nil
}

// Marshal writes the packet into b (at least PacketSize bytes).
func (p *Reflected) Marshal(b []byte) []byte {
	b = b[:PacketSize]
	clear(b)
	binary.BigEndian.PutUint32(b[0:], p.Seq)
	binary.BigEndian.PutUint64(b[4:], NTP(p.Timestamp))
	binary.BigEndian.PutUint16(b[12:], p.ErrorEst)
	binary.BigEndian.PutUint64(b[16:], NTP(p.Received))
	binary.BigEndian.PutUint32(b[24:], p.SenderSeq)
	binary.BigEndian.PutUint64(b[28:], NTP(p.SenderTime))
	binary.BigEndian.PutUint16(b[36:], p.SenderErrorEst)
	b[40] = p.SenderTTL
	return b
}

// ParseReflected decodes a session-reflector packet.
func ParseReflected(b []byte) (Reflected, error) {
	if len(b) < PacketSize {
		return Reflected{}, ErrShort
	}
	return Reflected{
		Seq:            binary.BigEndian.Uint32(b[0:]),
		Timestamp:      FromNTP(binary.BigEndian.Uint64(b[4:])),
		ErrorEst:       binary.BigEndian.Uint16(b[12:]),
		Received:       FromNTP(binary.BigEndian.Uint64(b[16:])),
		SenderSeq:      binary.BigEndian.Uint32(b[24:]),
		SenderTime:     FromNTP(binary.BigEndian.Uint64(b[28:])),
		SenderErrorEst: binary.BigEndian.Uint16(b[36:]),
		SenderTTL:      b[40],
	}, nil
}
