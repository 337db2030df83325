package push

import (
	"errors"
	"strings"
	"testing"

	"github.com/dpgate/dpgate/push/wire"
)

// TestDeviceIDRule: one rule for HELLO (push/wire's TestHelloDeviceIDRule)
// and the API. ids with invalid UTF-8, NUL, newline or a space were
// queued by the API and could never be delivered.
func TestDeviceIDRule(t *testing.T) {
	t.Parallel()
	bad := []string{"", strings.Repeat("a", wire.MaxDeviceID+1), "bad\xffutf8", "nul\x00", "new\nline", "has space", "tab\t", "del\x7f"}
	s := &Server{cfg: Config{MaxPayload: 1024}}
	for _, id := range bad {
		if err := s.Check([]string{id}, nil); !errors.Is(err, ErrBadDevice) {
			t.Errorf("Server.Check(%q) = %v, want ErrBadDevice", id, err)
		}
	}
}
