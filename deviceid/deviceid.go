// Package deviceid is the one rule for device ids, wherever one comes
// from: a HELLO, the admin API, an agent certificate's CN, a device token,
// a wake datagram, a peer node. Standard library only, so agents and the
// wake datagram code use it without linking the gateway.
package deviceid

import (
	"errors"
	"fmt"
	"unicode"
	"unicode/utf8"
)

// MaxLen is the longest device id, in bytes.
const MaxLen = 128

// Check says why id is not a device id, or nil: 1 to MaxLen bytes of
// valid UTF-8 with no control character and no white space.
func Check(id string) error {
	switch {
	case id == "":
		return errors.New("device id is empty")
	case len(id) > MaxLen:
		return fmt.Errorf("device id of %d bytes, the limit is %d", len(id), MaxLen)
	case !utf8.ValidString(id):
		return fmt.Errorf("device id %q is not valid UTF-8", id)
	}
	for _, r := range id {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return fmt.Errorf("device id %q has a control or white-space character (%U)", id, r)
		}
	}
	return nil
}
