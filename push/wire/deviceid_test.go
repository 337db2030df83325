package wire

import (
	"strings"
	"testing"
)

// TestHelloDeviceIDRule: one rule for HELLO and the API (push's
// TestDeviceIDRule). A 129-byte id was answered WELCOME before.
func TestHelloDeviceIDRule(t *testing.T) {
	good := []string{"pc-1", "PC_Ünïcode.example", strings.Repeat("a", MaxDeviceID)}
	bad := []string{"", strings.Repeat("a", MaxDeviceID+1), "bad\xffutf8", "nul\x00", "new\nline", "has space", "tab\t", "del\x7f"}
	for _, id := range good {
		if err := CheckDeviceID(id); err != nil {
			t.Errorf("CheckDeviceID(%q) = %v, want nil", id, err)
		}
	}
	for _, id := range bad {
		if CheckDeviceID(id) == nil {
			t.Errorf("CheckDeviceID(%q) accepted it", id)
		}
		// A HELLO built by hand, past MarshalHello's truncation.
		w := newFrame(TypeHello, 64)
		w.u8(1)
		w.u8(1)
		w.u16(0)
		w.u64(0)
		w.u8(uint8(len(id)))
		w.b = append(w.b, id...)
		w.u8(0)
		w.u8(0)
		w.u16(0)
		if _, err := ParseHello(w.b[HeaderSize:]); err == nil {
			t.Errorf("ParseHello accepted device id %q", id)
		}
	}
}
