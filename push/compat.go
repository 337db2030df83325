package push

import (
	"time"

	"github.com/dpgate/dpgate/push/wire"
)

// Names that moved to push/wire, kept for programs built against them
// before the split (../shared/tools/pushpeers is one).

// Message is wire.Message.
//
// Deprecated: use wire.Message.
type Message = wire.Message

// IssueToken is wire.IssueToken.
//
// Deprecated: use wire.IssueToken.
func IssueToken(key []byte, device string, expiry time.Time) string {
	return wire.IssueToken(key, device, expiry)
}
