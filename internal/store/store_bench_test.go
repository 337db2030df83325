package store

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkPut is one committed, fsynced write transaction: the floor
// under anything the store accepts durably on this disk.
func BenchmarkPut(b *testing.B) {
	db, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	v := make([]byte, 64)
	var lat latencies
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		if err := db.Put("bench", fmt.Sprint(i%1000), v); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	lat.report(b)
}

// latencies are the durations of a benchmark's operations.
type latencies []time.Duration

// report adds their median, 99th percentile and maximum, in µs.
func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	at := func(q float64) float64 { return float64(l[int(q*float64(len(l)-1))].Microseconds()) }
	b.ReportMetric(at(0.5), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
	b.ReportMetric(at(1), "max-µs")
}

// BenchmarkOpenCheck is the consistency check Open runs before serving
// from a file, on a store of push-queue-shaped records (1,000 devices,
// 1 KiB values). The size is DPGATE_BENCH_STORE_MB (default 64); the
// figure for 1 GB in docs/BENCHMARKS.md comes from 1024.
func BenchmarkOpenCheck(b *testing.B) {
	mb := 64
	if v, err := strconv.Atoi(os.Getenv("DPGATE_BENCH_STORE_MB")); err == nil && v > 0 {
		mb = v
	}
	dir := b.TempDir()
	db, err := Open(dir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	val := make([]byte, 1024)
	records := mb * 1024 * 3 / 4 // about mb MiB on disk with bbolt's page fill
	for done := 0; done < records; {
		err := db.Update(func(tx *bolt.Tx) error {
			qb, err := tx.CreateBucketIfNotExists([]byte("push_queue"))
			if err != nil {
				return err
			}
			for i := 0; i < 20000 && done < records; i, done = i+1, done+1 {
				d, err := qb.CreateBucketIfNotExists(fmt.Appendf(nil, "device-%04d", done%1000))
				if err != nil {
					return err
				}
				k := binary.BigEndian.AppendUint64(nil, uint64(done))
				if err := d.Put(k, Seal(k, val)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	db.Close()
	for b.Loop() {
		db, err := Open(dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		db.Close()
	}
	st, _ := os.Stat(filepath.Join(dir, FileName))
	b.ReportMetric(float64(st.Size())/(1<<20), "file_MiB")
}
