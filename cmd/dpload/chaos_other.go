//go:build !linux

package main

import (
	"context"
	"errors"
	"io"
)

// runChaos needs Linux: network namespaces, nftables, tmpfs mounts.
func runChaos(context.Context, []string, io.Writer, io.Writer) error {
	return errors.New("chaos: needs Linux (network namespaces, nftables and tmpfs mounts, as root)")
}
