package store

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSync is what a commit waits for on this disk, without bbolt:
// "append" writes 200 bytes at the end of a file and fdatasyncs it (the
// floor of an append-only log); "pages" writes two 4 KiB pages in
// place, fdatasyncs, writes a meta page and fdatasyncs again (bbolt's
// pattern). Both report the latency percentiles, whose tail bounds the
// tail of a durable push.
func BenchmarkSync(b *testing.B) {
	for _, c := range []struct {
		name string
		do   func(f *os.File, i int) error
	}{
		{"append", func(f *os.File, i int) error {
			if _, err := f.Write(make([]byte, 200)); err != nil {
				return err
			}
			return unix.Fdatasync(int(f.Fd()))
		}},
		{"pages", func(f *os.File, i int) error {
			page := make([]byte, 8192)
			if _, err := f.WriteAt(page, int64(2+i%1000*2)*4096); err != nil {
				return err
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				return err
			}
			if _, err := f.WriteAt(page[:4096], int64(i%2)*4096); err != nil {
				return err
			}
			return unix.Fdatasync(int(f.Fd()))
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			f, err := os.Create(filepath.Join(b.TempDir(), "sync"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			var lat latencies
			for i := 0; b.Loop(); i++ {
				start := time.Now()
				if err := c.do(f, i); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			lat.report(b)
		})
	}
}
