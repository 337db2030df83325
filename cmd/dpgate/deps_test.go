package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestStartsWithoutPacketLayers: dpgate does not link gopacket/layers,
// whose start-up work (20 ms, its tables of every protocol) came before
// every command, --help included. Only wake/capture registers the wake
// ports with it, for tools that decode captures.
func TestStartsWithoutPacketLayers(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	if deps := strings.Fields(string(out)); slices.Contains(deps, "github.com/google/gopacket/layers") {
		t.Error("dpgate links github.com/google/gopacket/layers; only wake/capture should")
	}
}
