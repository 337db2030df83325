package gateway

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/dpgate/dpgate/internal/admin"
)

// BenchmarkReplyJSON is the cost of writing a push's answer: to one
// device (POST /v1/devices/{id}/push), and to every device (POST /v1/push
// with all, 15,000 devices); compact, as programs get it, and indented,
// as ?pretty asks (and as every answer was before).
//
//	go test -run '^$' -bench ReplyJSON -benchmem -count 3 ./internal/gateway
func BenchmarkReplyJSON(b *testing.B) {
	push := func(i int) PushReply {
		return PushReply{Device: fmt.Sprintf("pc-%05d", i), ID: "5f0c2b9e8d7a6f4e3c2b1a0f9e8d7c6b",
			Seq: uint64(1000 + i), Copies: 1, Status: "queued"}
	}
	all := BulkReply{Queued: 15000}
	for i := range all.Queued {
		all.Pushes = append(all.Pushes, push(i))
	}
	for _, c := range []struct {
		name  string
		reply any
	}{{"one", push(0)}, {"all-15000", all}} {
		for _, query := range []string{"", "?pretty"} {
			b.Run(c.name+query, func(b *testing.B) {
				r := httptest.NewRequest("POST", "/v1/push"+query, nil)
				var bytes int
				for b.Loop() {
					w := &discard{header: http.Header{}}
					admin.WriteJSON(w, r, http.StatusAccepted, c.reply)
					bytes = w.n
				}
				b.ReportMetric(float64(bytes), "bytes/answer")
			})
		}
	}
}

// discard is a ResponseWriter that counts what is written to it.
type discard struct {
	header http.Header
	n      int
}

func (d *discard) Header() http.Header         { return d.header }
func (d *discard) WriteHeader(int)             {}
func (d *discard) Write(p []byte) (int, error) { d.n += len(p); return len(p), nil }
