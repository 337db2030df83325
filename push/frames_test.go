package push

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// readerConn is a net.Conn whose reads come from r.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// TestRecordConnStopsAtRecords: however large the read, and whether the
// bytes come from await or the connection, recordConn never returns bytes
// of two records, and returns every byte once.
func TestRecordConnStopsAtRecords(t *testing.T) {
	var stream []byte
	var ends []int // offsets where a record ends
	for _, n := range []int{0, 1, 4, 100, 16384 + 256, 3} {
		hdr := []byte{23, 3, 3, 0, 0}
		binary.BigEndian.PutUint16(hdr[3:], uint16(n))
		stream = append(stream, hdr...)
		stream = append(stream, bytes.Repeat([]byte{byte(n)}, n)...)
		ends = append(ends, len(stream))
	}
	for _, size := range []int{1, 3, 5, 7, 64, 1 << 16} {
		r := bytes.NewReader(stream)
		c := &recordConn{Conn: readerConn{r: r}}
		// Every other read comes through await's buffer, as in a
		// session after a wait.
		c.wait = func() error {
			n, err := r.Read(c.pend[:])
			c.n, c.pendErr = n, err
			return nil
		}
		var got []byte
		buf := make([]byte, size)
		for i := 0; ; i++ {
			if i%2 == 0 && !c.pending() {
				c.await()
			}
			n, err := c.Read(buf)
			start := len(got)
			got = append(got, buf[:n]...)
			for _, e := range ends {
				if start < e && e < len(got) {
					t.Fatalf("read size %d: one read of bytes %d-%d crosses the record end at %d", size, start, len(got), e)
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got, stream) {
			t.Fatalf("read size %d: got %d bytes, want the %d of the stream", size, len(got), len(stream))
		}
	}
}
