package push

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"github.com/dpgate/dpgate/push/wire"
)

// chunkReader hands out its bytes in chunks of the given sizes, with
// errWouldBlock between them, as a non-blocking socket under crypto/tls
// would; then io.EOF.
type chunkReader struct {
	data    []byte
	chunks  []int
	blocked bool // the last read said errWouldBlock
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	if !r.blocked {
		r.blocked = true
		return 0, errWouldBlock
	}
	n := min(len(r.data), len(p))
	if len(r.chunks) > 0 {
		n = min(n, r.chunks[0])
		if r.chunks[0] -= n; r.chunks[0] == 0 {
			r.chunks = r.chunks[1:]
			r.blocked = false
		}
	}
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// TestFrameReaderAcrossWaits: however an agent's bytes are cut by the
// waits, the frame reader answers errIdle at each wait, keeps the part of
// a frame it has, and returns every frame whole, in order; a frame over
// the limit is refused from its header.
func TestFrameReaderAcrossWaits(t *testing.T) {
	t.Parallel()
	var stream []byte
	var want [][]byte
	for i := range 50 {
		body := bytes.Repeat([]byte{byte(i)}, i%(maxSmall+1))
		want = append(want, body)
		stream = append(stream, wire.TypePing, 0, 0, byte(len(body)))
		stream = append(stream, body...)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		var chunks []int
		for left := len(stream); left > 0; {
			n := min(left, 1+rng.IntN(2*maxSmall))
			chunks = append(chunks, n)
			left -= n
		}
		r := &chunkReader{data: stream, chunks: chunks}
		f := frameReader{r: r, w: &waitConn{}}
		var got [][]byte
		idles := 0
		for len(got) < len(want) {
			typ, body, err := f.next(maxSmall)
			if errors.Is(err, errIdle) {
				idles++
				if idles > len(chunks)+1 {
					t.Fatalf("trial %d: %d waits for %d chunks", trial, idles, len(chunks))
				}
				continue
			}
			if err != nil {
				t.Fatalf("trial %d, frame %d: %v", trial, len(got), err)
			}
			if typ != wire.TypePing {
				t.Fatalf("trial %d, frame %d: type 0x%02x", trial, len(got), typ)
			}
			got = append(got, bytes.Clone(body))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("trial %d, frame %d: %x, want %x", trial, i, got[i], want[i])
			}
		}
		if _, _, err := f.next(maxSmall); !errors.Is(err, io.EOF) {
			t.Fatalf("trial %d: after the last frame: %v, want EOF", trial, err)
		}
	}
	big := []byte{wire.TypePing, 0, 0, byte(maxSmall + 1)}
	f := frameReader{r: &chunkReader{data: big, blocked: true}, w: &waitConn{}}
	if _, _, err := f.next(maxSmall); !errors.Is(err, wire.ErrTooLarge) {
		t.Fatalf("a %d-byte body: %v, want ErrTooLarge", maxSmall+1, err)
	}
}

// TestWaitConnWriteDeadlines: a write the socket takes at once needs no
// deadline; one that must wait ends at writeTimeout, and never past a
// deadline the caller set (Shutdown's last frames), however long
// writeTimeout is.
func TestWaitConnWriteDeadlines(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close() // reads nothing
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	wc := &waitConn{Conn: raw, writeTimeout: time.Hour}
	if !wc.nonblocking() || !wc.selfTimed() {
		t.Fatal("a TCP connection did not become nonblocking")
	}
	if n, err := wc.Write([]byte("at once")); n != 7 || err != nil {
		t.Fatalf("a write the socket takes: %d, %v", n, err)
	}
	wc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	done := make(chan error, 1)
	go func() { // ends at the caller's deadline (or, broken, after an hour)
		chunk := make([]byte, 1<<20)
		for range 1024 { // the buffers hold a few MiB at most
			if _, err := wc.Write(chunk); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("a write to a peer that reads nothing ended with %v, want the deadline", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a waiting write went past the caller's 200 ms deadline (writeTimeout is an hour)")
	}
}
