package sdnotify

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
)

// TestJournalHandlerPrefixesPriority: every line starts with the syslog
// priority of its level, attributes and groups added on the way kept,
// and the level set still filters.
func TestJournalHandlerPrefixesPriority(t *testing.T) {
	var buf bytes.Buffer
	var level slog.LevelVar
	log := slog.New(JournalHandler(&buf, func(w io.Writer) slog.Handler {
		return slog.NewTextHandler(w, &slog.HandlerOptions{Level: &level})
	}))
	log = log.With("node", "n1")
	log.Debug("hidden")
	log.Info("started")
	log.Warn("slow disk")
	log.WithGroup("g").Error("failed", "k", "v")
	level.Set(slog.LevelDebug)
	log.Debug("shown")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []struct{ prefix, has string }{{"<6>", "msg=started node=n1"}, {"<4>", "msg=\"slow disk\" node=n1"}, {"<3>", "msg=failed node=n1 g.k=v"}, {"<7>", "msg=shown"}}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w.prefix+"time=") || !strings.Contains(lines[i], w.has) {
			t.Errorf("line %d: %q, want %s before the record and %s in it", i, lines[i], w.prefix, w.has)
		}
	}
}
