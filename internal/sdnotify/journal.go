package sdnotify

import (
	"context"
	"io"
	"log/slog"
)

// JournalHandler is a log handler for a standard error that journald
// reads (StderrIsJournal): each record is written by the handler newH
// makes, prefixed with its syslog priority as sd-daemon(3) describes
// ("<3>" error, "<4>" warning, "<6>" info, "<7>" debug). journald takes
// the prefix off and files the line under that priority, so
// "journalctl -u dpgate -p warning" shows the warnings and errors; without
// it every line is filed as info.
func JournalHandler(w io.Writer, newH func(io.Writer) slog.Handler) slog.Handler {
	var h journalHandler
	for i, p := range priorities {
		h[i] = newH(prefixWriter{prefix: p.prefix, w: w})
	}
	return h
}

// priorities are the prefixes by level, most severe first.
var priorities = [...]struct {
	level  slog.Level
	prefix string
}{{slog.LevelError, "<3>"}, {slog.LevelWarn, "<4>"}, {slog.LevelInfo, "<6>"}, {slog.LevelDebug - 1000, "<7>"}}

// journalHandler holds one handler per priority, in priorities' order.
type journalHandler [len(priorities)]slog.Handler

func (h journalHandler) pick(l slog.Level) slog.Handler {
	for i, p := range priorities {
		if l >= p.level {
			return h[i]
		}
	}
	return h[len(h)-1]
}

func (h journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.pick(l).Enabled(ctx, l)
}

func (h journalHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.pick(r.Level).Handle(ctx, r)
}

func (h journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	for i := range h {
		h[i] = h[i].WithAttrs(as)
	}
	return h
}

func (h journalHandler) WithGroup(name string) slog.Handler {
	for i := range h {
		h[i] = h[i].WithGroup(name)
	}
	return h
}

// prefixWriter writes each record (slog's handlers write one in one call)
// after its prefix, in one write, so records from the handlers of several
// priorities never interleave.
type prefixWriter struct {
	prefix string
	w      io.Writer
}

func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := p.w.Write(append([]byte(p.prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}
