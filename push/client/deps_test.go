package client_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestAgentLinksTheWireFormatOnly: an agent built on push/client links
// the wire format and the device id rule of this project, and quic-go,
// nothing of the server: not the store (bbolt), the metrics or the rate
// limiters, which the whole push package brought in before it was split.
func TestAgentLinksTheWireFormatOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	allowed := []string{"github.com/dpgate/dpgate/push/client", "github.com/dpgate/dpgate/push/wire", "github.com/dpgate/dpgate/deviceid"}
	for _, dep := range strings.Fields(string(out)) {
		first := strings.Split(dep, "/")[0]
		switch {
		case !strings.Contains(first, "."): // the standard library
		case strings.HasPrefix(dep, "github.com/dpgate/dpgate/"):
			if !slices.Contains(allowed, dep) {
				t.Errorf("push/client depends on %s; want only %v of this project", dep, allowed[1:])
			}
		case strings.HasPrefix(dep, "github.com/quic-go/quic-go"), strings.HasPrefix(dep, "golang.org/x/crypto"),
			strings.HasPrefix(dep, "golang.org/x/net"), strings.HasPrefix(dep, "golang.org/x/sys"):
			// QUIC, and what quic-go itself needs
		default:
			t.Errorf("push/client depends on %s, which an agent should not link", dep)
		}
	}
}
