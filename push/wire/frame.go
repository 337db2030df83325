// Package wire is the push protocol's wire format (docs/PROTOCOL.md):
// frame types, error codes and capabilities, the frames' encoders and
// decoders (frame.go), the HMAC device tokens of push.auth token
// (token.go), and the set of recent push ids both ends keep for
// at-least-once delivery (recent.go). It needs the standard library only, so that an agent
// (push/client) links nothing of the server: push serves it, push/client
// speaks it.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"unicode/utf8"

	"github.com/dpgate/dpgate/deviceid"
)

// Frame types. docs/PROTOCOL.md gives each one's byte layout.
const (
	TypeHello    byte = 0x01 // agent -> server, first frame
	TypeWelcome  byte = 0x02 // server -> agent, session accepted
	TypeRedirect byte = 0x03 // server -> agent, go to another node
	TypeError    byte = 0x04 // either way, then close
	TypePush     byte = 0x05 // server -> agent
	TypeAck      byte = 0x06 // agent -> server
	TypePing     byte = 0x07 // either way
	TypePong     byte = 0x08 // either way
	TypeDrain    byte = 0x09 // server -> agent: reconnect elsewhere
	TypeBye      byte = 0x0A // either way, then close
	TypeWake     byte = 0x0B // server -> agent (CapWake): sync now
)

// Protocol versions this implementation speaks.
const (
	Version    = 1
	ALPN       = "dpgate-push/1"
	PeerALPN   = "dpgate-peer/1" // nodes of a cluster on the push port (cluster/peer.go)
	HeaderSize = 4               // type (1 byte) + payload length (3 bytes, big-endian)
	// MaxFrame is the largest frame body any peer may send: a PUSH with a
	// payload at the configured maximum fits well within it.
	MaxFrame = 64 << 10
	// MaxDeviceID is the longest device id.
	MaxDeviceID = deviceid.MaxLen
)

// Error codes of ERROR frames.
const (
	CodeProtocol      uint16 = 1 // malformed or unexpected frame
	CodeVersion       uint16 = 2 // no common protocol version
	CodeAuth          uint16 = 3 // authentication failed
	CodeFrameTooLarge uint16 = 4
	CodeOverloaded    uint16 = 5 // connection limit reached
	CodeShutdown      uint16 = 6
	CodeReplaced      uint16 = 7 // the same device connected again elsewhere
	CodeTimeout       uint16 = 8 // no HELLO, or no traffic within the keepalive
)

// ErrFrame is wrapped by every decoding error.
var ErrFrame = errors.New("push: malformed frame")

// Capability bits of HELLO.
const (
	CapWake uint16 = 1 << 0 // the agent handles WAKE frames (issue 6)
	// CapRedirected: the agent comes from a REDIRECT. The server accepts
	// it rather than redirecting again, so balancing decisions do not
	// cascade between nodes whose views of the load lag each other.
	CapRedirected uint16 = 1 << 1
)

// Hello is the agent's first frame.
type Hello struct {
	MinVersion, MaxVersion uint8
	Caps                   uint16
	LastAck                uint64 // highest sequence the agent acknowledged
	DeviceID               string
	MAC                    []byte     // 0 or 6 bytes, for Wake-on-LAN
	LocalAddr              netip.Addr // the agent's own address; zero if unknown
	Token                  string     // for push.auth: token
}

// Welcome accepts a session.
type Welcome struct {
	Version   uint8
	Session   [16]byte
	Keepalive uint16   // seconds between PINGs the server expects
	Nodes     []string // host:port of push servers for failover, this one first
}

// Redirect sends the agent to another node.
type Redirect struct {
	Reason  uint8 // 1 overloaded, 2 balancing, 3 draining
	Address string
}

// ErrorFrame reports a fatal error; the sender closes afterwards.
type ErrorFrame struct {
	Code   uint16
	Reason string
}

// Message is a PUSH.
type Message struct {
	Seq     uint64
	ID      [16]byte
	Expiry  int64 // unix milliseconds
	Payload []byte
}

// Drain asks the agent to reconnect to another node after a delay.
type Drain struct {
	DelayMillis uint32
	Reason      string
}

// writer builds one frame.
type writer struct{ b []byte }

func newFrame(typ byte, sizeHint int) *writer {
	w := &writer{b: make([]byte, HeaderSize, HeaderSize+sizeHint)}
	w.b[0] = typ
	return w
}

func (w *writer) u8(v uint8)      { w.b = append(w.b, v) }
func (w *writer) u16(v uint16)    { w.b = binary.BigEndian.AppendUint16(w.b, v) }
func (w *writer) u32(v uint32)    { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *writer) u64(v uint64)    { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *writer) raw(v []byte)    { w.b = append(w.b, v...) }
func (w *writer) str8(s string)   { w.u8(uint8(len(s))); w.b = append(w.b, s...) }
func (w *writer) str16(s string)  { w.u16(uint16(len(s))); w.b = append(w.b, s...) }
func (w *writer) bytes8(v []byte) { w.u8(uint8(len(v))); w.b = append(w.b, v...) }
func (w *writer) done() []byte {
	n := len(w.b) - HeaderSize
	w.b[1], w.b[2], w.b[3] = byte(n>>16), byte(n>>8), byte(n)
	return w.b
}
func truncate(s string, n int) string { return s[:min(len(s), n)] }

// Marshal functions return a complete frame, header included.

func (h *Hello) Marshal() []byte {
	w := newFrame(TypeHello, 64+len(h.DeviceID)+len(h.Token))
	w.u8(h.MinVersion)
	w.u8(h.MaxVersion)
	w.u16(h.Caps)
	w.u64(h.LastAck)
	w.str8(truncate(h.DeviceID, MaxDeviceID))
	w.bytes8(h.MAC)
	if h.LocalAddr.IsValid() {
		w.bytes8(h.LocalAddr.AsSlice())
	} else {
		w.u8(0)
	}
	w.str16(h.Token)
	return w.done()
}

func (m *Welcome) Marshal() []byte {
	w := newFrame(TypeWelcome, 32)
	w.u8(m.Version)
	w.raw(m.Session[:])
	w.u16(m.Keepalive)
	n := min(len(m.Nodes), 32)
	w.u8(uint8(n))
	for _, a := range m.Nodes[:n] {
		w.str8(truncate(a, 255))
	}
	return w.done()
}

func (r *Redirect) Marshal() []byte {
	w := newFrame(TypeRedirect, 2+len(r.Address))
	w.u8(r.Reason)
	w.str8(truncate(r.Address, 255))
	return w.done()
}

func (e *ErrorFrame) Marshal() []byte {
	w := newFrame(TypeError, 4+len(e.Reason))
	w.u16(e.Code)
	w.str16(truncate(e.Reason, 1024))
	return w.done()
}

func (m *Message) Marshal() []byte {
	w := newFrame(TypePush, 32+len(m.Payload))
	w.u64(m.Seq)
	w.raw(m.ID[:])
	w.u64(uint64(m.Expiry))
	w.raw(m.Payload)
	return w.done()
}

func (d *Drain) Marshal() []byte {
	w := newFrame(TypeDrain, 5+len(d.Reason))
	w.u32(d.DelayMillis)
	w.str8(truncate(d.Reason, 255))
	return w.done()
}

// MarshalU64 builds ACK, PING or PONG, whose body is one uint64.
func MarshalU64(typ byte, v uint64) []byte {
	w := newFrame(typ, 8)
	w.u64(v)
	return w.done()
}

// MarshalBye builds BYE with a reason code (0: normal).
func MarshalBye(reason uint8) []byte {
	w := newFrame(TypeBye, 1)
	w.u8(reason)
	return w.done()
}

// ReadFrame reads one frame into buf (grown if needed) and returns its
// type and body. A length above max is an error before the body is read.
func ReadFrame(r io.Reader, hdr *[HeaderSize]byte, buf []byte, max int) (byte, []byte, error) {
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	typ, n := FrameHeader(hdr[:])
	if n > max {
		return typ, nil, TooLarge(typ, n, max)
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return hdr[0], nil, err
	}
	return hdr[0], buf, nil
}

// FrameHeader reads a frame's type and body length from its first
// HeaderSize bytes.
func FrameHeader(b []byte) (typ byte, n int) {
	return b[0], int(b[1])<<16 | int(b[2])<<8 | int(b[3])
}

// ErrTooLarge is returned by ReadFrame for a frame over the limit.
var ErrTooLarge = errors.New("push: frame too large")

// TooLarge is the ErrTooLarge of a frame of type typ and n bytes over max.
func TooLarge(typ byte, n, max int) error {
	return fmt.Errorf("%w: frame type 0x%02x of %d bytes exceeds the %d-byte limit", ErrTooLarge, typ, n, max)
}

// reader decodes one frame body; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) need(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("%w: body ends %d bytes short", ErrFrame, n-len(r.b))
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	if v := r.need(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.need(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.need(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.need(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) str(n int, what string) string {
	v := r.need(n)
	if r.err == nil && !utf8.Valid(v) {
		r.err = fmt.Errorf("%w: %s is not UTF-8", ErrFrame, what)
	}
	return string(v)
}

// end fails if bytes are left over: every frame has an exact layout.
func (r *reader) end(what string) error {
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %d unexpected bytes after %s", ErrFrame, len(r.b), what)
	}
	return r.err
}

// CheckDeviceID is the one rule for device ids (package deviceid): 1 to
// MaxDeviceID bytes of valid UTF-8 with no control character and no white
// space.
func CheckDeviceID(id string) error { return deviceid.Check(id) }

// ParseHello decodes a HELLO body.
func ParseHello(b []byte) (Hello, error) {
	r := &reader{b: b}
	var h Hello
	h.MinVersion, h.MaxVersion, h.Caps, h.LastAck = r.u8(), r.u8(), r.u16(), r.u64()
	h.DeviceID = r.str(int(r.u8()), "device id")
	switch mac := r.need(int(r.u8())); len(mac) {
	case 0:
	case 6:
		h.MAC = append([]byte(nil), mac...)
	default:
		if r.err == nil {
			r.err = fmt.Errorf("%w: MAC of %d bytes, want 0 or 6", ErrFrame, len(mac))
		}
	}
	switch ip := r.need(int(r.u8())); len(ip) {
	case 0:
	case 4, 16:
		h.LocalAddr, _ = netip.AddrFromSlice(ip)
	default:
		if r.err == nil {
			r.err = fmt.Errorf("%w: local address of %d bytes, want 0, 4 or 16", ErrFrame, len(ip))
		}
	}
	h.Token = r.str(int(r.u16()), "token")
	if err := r.end("HELLO"); err != nil {
		return h, err
	}
	if err := CheckDeviceID(h.DeviceID); err != nil {
		return h, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	if h.MinVersion > h.MaxVersion {
		return h, fmt.Errorf("%w: version range %d..%d is empty", ErrFrame, h.MinVersion, h.MaxVersion)
	}
	return h, nil
}

// ParseWelcome decodes a WELCOME body.
func ParseWelcome(b []byte) (Welcome, error) {
	r := &reader{b: b}
	var m Welcome
	m.Version = r.u8()
	copy(m.Session[:], r.need(16))
	m.Keepalive = r.u16()
	n := int(r.u8())
	for i := 0; i < n && r.err == nil; i++ {
		m.Nodes = append(m.Nodes, r.str(int(r.u8()), "node address"))
	}
	return m, r.end("WELCOME")
}

// ParseRedirect decodes a REDIRECT body.
func ParseRedirect(b []byte) (Redirect, error) {
	r := &reader{b: b}
	m := Redirect{Reason: r.u8()}
	m.Address = r.str(int(r.u8()), "address")
	return m, r.end("REDIRECT")
}

// ParseError decodes an ERROR body.
func ParseError(b []byte) (ErrorFrame, error) {
	r := &reader{b: b}
	e := ErrorFrame{Code: r.u16()}
	e.Reason = r.str(int(r.u16()), "reason")
	return e, r.end("ERROR")
}

// ParseMessage decodes a PUSH body. The payload aliases b.
func ParseMessage(b []byte) (Message, error) {
	r := &reader{b: b}
	var m Message
	m.Seq = r.u64()
	copy(m.ID[:], r.need(16))
	m.Expiry = int64(r.u64())
	if r.err != nil {
		return m, r.err
	}
	m.Payload = r.b
	return m, nil
}

// ParseDrain decodes a DRAIN body.
func ParseDrain(b []byte) (Drain, error) {
	r := &reader{b: b}
	d := Drain{DelayMillis: r.u32()}
	d.Reason = r.str(int(r.u8()), "reason")
	return d, r.end("DRAIN")
}

// ParseBye decodes a BYE body: exactly one byte, the reason.
func ParseBye(b []byte) (uint8, error) {
	r := &reader{b: b}
	v := r.u8()
	return v, r.end("BYE")
}

// ParseU64 decodes the body of ACK, PING and PONG.
func ParseU64(b []byte) (uint64, error) {
	r := &reader{b: b}
	v := r.u64()
	return v, r.end("ACK/PING/PONG")
}
