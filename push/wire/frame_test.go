package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	hello := Hello{MinVersion: 1, MaxVersion: 1, Caps: CapWake, LastAck: 42, DeviceID: "pc-0042",
		MAC: []byte{0, 0x1b, 0x21, 1, 2, 3}, LocalAddr: netip.MustParseAddr("192.168.1.20"), Token: "tok"}
	var hdr [HeaderSize]byte
	typ, body, err := ReadFrame(bytes.NewReader(hello.Marshal()), &hdr, nil, MaxFrame)
	if err != nil || typ != TypeHello {
		t.Fatalf("ReadFrame: 0x%02x, %v", typ, err)
	}
	got, err := ParseHello(body)
	if err != nil || !reflect.DeepEqual(got, hello) {
		t.Errorf("HELLO round trip: got %+v, %v; want %+v", got, err, hello)
	}

	w := Welcome{Version: 1, Session: [16]byte{1, 2}, Keepalive: 30, Nodes: []string{"10.0.0.1:13295", "gw-2:13295"}}
	_, body, _ = ReadFrame(bytes.NewReader(w.Marshal()), &hdr, nil, MaxFrame)
	if gw, err := ParseWelcome(body); err != nil || !reflect.DeepEqual(gw, w) {
		t.Errorf("WELCOME round trip: got %+v, %v", gw, err)
	}
	m := Message{Seq: 7, ID: [16]byte{0xab}, Expiry: 1700000000000, Payload: []byte("sync now")}
	_, body, _ = ReadFrame(bytes.NewReader(m.Marshal()), &hdr, nil, MaxFrame)
	if gm, err := ParseMessage(body); err != nil || gm.Seq != 7 || gm.ID != m.ID || gm.Expiry != m.Expiry || string(gm.Payload) != "sync now" {
		t.Errorf("PUSH round trip: got %+v, %v", gm, err)
	}
	d := Drain{DelayMillis: 2500, Reason: "maintenance"}
	_, body, _ = ReadFrame(bytes.NewReader(d.Marshal()), &hdr, nil, MaxFrame)
	if gd, err := ParseDrain(body); err != nil || gd != d {
		t.Errorf("DRAIN round trip: got %+v, %v", gd, err)
	}
}

// TestPushHexDump pins the byte layout documented in docs/PROTOCOL.md.
func TestPushHexDump(t *testing.T) {
	m := Message{Seq: 1, ID: [16]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff},
		Expiry: 1767225600000, Payload: []byte("sync")}
	want := "05000024" + "0000000000000001" + "00112233445566778899aabbccddeeff" + "0000019b76daa800" + "73796e63"
	if got := hex.EncodeToString(m.Marshal()); got != want {
		t.Errorf("PUSH bytes\n got %s\nwant %s", got, want)
	}
	h := Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "pc-1"}
	wantHello := "01000015" + "01" + "01" + "0000" + "0000000000000000" + "04" + "70632d31" + "00" + "00" + "0000"
	if got := hex.EncodeToString(h.Marshal()); got != wantHello {
		t.Errorf("HELLO bytes\n got %s\nwant %s", got, wantHello)
	}
}

func TestReadFrameLimits(t *testing.T) {
	var hdr [HeaderSize]byte
	big := []byte{TypePush, 0x01, 0x00, 0x01}
	if _, _, err := ReadFrame(bytes.NewReader(big), &hdr, nil, MaxFrame); !errors.Is(err, ErrTooLarge) {
		t.Errorf("65537-byte frame: %v, want ErrTooLarge", err)
	}
	short := []byte{TypeAck, 0, 0, 8, 1, 2}
	if _, _, err := ReadFrame(bytes.NewReader(short), &hdr, nil, MaxFrame); err == nil {
		t.Error("truncated frame accepted")
	}
	bad := []struct {
		name string
		fn   func() error
	}{
		{"HELLO with trailing bytes", func() error {
			_, err := ParseHello(append((&Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "x"}).Marshal()[HeaderSize:], 0))
			return err
		}},
		{"HELLO with empty device", func() error {
			_, err := ParseHello((&Hello{MinVersion: 1, MaxVersion: 1}).Marshal()[HeaderSize:])
			return err
		}},
		{"HELLO with a 5-byte MAC", func() error {
			_, err := ParseHello([]byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 'x', 5, 1, 2, 3, 4, 5, 0, 0, 0})
			return err
		}},
		{"HELLO with non-UTF-8 id", func() error {
			_, err := ParseHello([]byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0, 0})
			return err
		}},
		{"short PUSH", func() error { _, err := ParseMessage(make([]byte, 20)); return err }},
		{"long ACK", func() error { _, err := ParseU64(make([]byte, 9)); return err }},
	}
	for _, b := range bad {
		if err := b.fn(); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v, want ErrFrame", b.name, err)
		}
	}
}

// FuzzFrames feeds arbitrary bytes to the frame reader and every body
// decoder: they must return an error or a value, never panic, and
// whatever HELLO decodes must encode back to the same body.
func FuzzFrames(f *testing.F) {
	f.Add((&Hello{MinVersion: 1, MaxVersion: 1, DeviceID: "pc", MAC: make([]byte, 6), Token: "t"}).Marshal())
	f.Add((&Welcome{Version: 1, Nodes: []string{"a:1"}}).Marshal())
	f.Add((&Message{Seq: 1, Payload: []byte("x")}).Marshal())
	f.Add((&ErrorFrame{Code: 1, Reason: "r"}).Marshal())
	f.Add((&Redirect{Reason: 1, Address: "b:2"}).Marshal())
	f.Add((&Drain{DelayMillis: 5, Reason: "d"}).Marshal())
	f.Add(MarshalU64(TypeAck, 5))
	f.Fuzz(func(t *testing.T, data []byte) {
		var hdr [HeaderSize]byte
		typ, body, err := ReadFrame(bytes.NewReader(data), &hdr, nil, MaxFrame)
		if err != nil {
			return
		}
		switch typ {
		case TypeHello:
			h, err := ParseHello(body)
			if err == nil {
				if again := h.Marshal()[HeaderSize:]; !bytes.Equal(again, body) {
					t.Fatalf("HELLO %x decodes to %+v, which encodes to %x", body, h, again)
				}
			}
		case TypeWelcome:
			ParseWelcome(body)
		case TypeRedirect:
			ParseRedirect(body)
		case TypeError:
			ParseError(body)
		case TypePush:
			ParseMessage(body)
		case TypeDrain:
			ParseDrain(body)
		default:
			ParseU64(body)
		}
	})
}
