package loadtest

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Target is what a proxy scenario connects to: a proxy in front of a
// sink, or the sink itself for the direct baseline.
type Target struct {
	Name string
	Addr string
	TLS  *tls.Config // each connection clones it
	// PID of the proxy process, for memory figures; 0 if unknown.
	PID int
}

func (t Target) dial(ctx context.Context, resume bool) (*tls.Conn, error) {
	cfg := t.TLS.Clone()
	if !resume {
		cfg.ClientSessionCache = nil
		cfg.SessionTicketsDisabled = true
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

// ThroughputResult is the outcome of Throughput.
type ThroughputResult struct {
	Streams  int     `json:"streams"`
	Bytes    int64   `json:"bytes"`   // confirmed by the sink
	Seconds  float64 `json:"seconds"` // from first write to last count
	Gbps     float64 `json:"gbit_per_s"`
	Mismatch int     `json:"mismatched_streams"` // sink count != bytes sent
	// CPUPerGiB is the proxy's CPU time (user and system) per GiB it
	// relayed, when its PID is known (0 otherwise).
	CPUPerGiB float64 `json:"cpu_seconds_per_gib,omitempty"`
}

// Throughput sends as fast as it can on streams connections for d; the
// sink confirms every stream's byte count after its half-close.
func Throughput(ctx context.Context, t Target, streams int, d time.Duration) (ThroughputResult, error) {
	res := ThroughputResult{Streams: streams}
	conns := make([]*tls.Conn, streams)
	for i := range conns {
		c, err := t.dial(ctx, true)
		if err != nil {
			closeAll(conns[:i])
			return res, fmt.Errorf("%s: stream %d: %w", t.Name, i, err)
		}
		conns[i] = c
	}
	defer closeAll(conns)
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	var cpu0 time.Duration
	if t.PID != 0 {
		var err error
		if cpu0, err = ProcessCPU(t.PID); err != nil {
			return res, fmt.Errorf("%s: %w", t.Name, err)
		}
	}
	var wg sync.WaitGroup
	var total atomic.Int64
	var mismatch atomic.Int64
	errs := make(chan error, streams)
	start := time.Now()
	stop := start.Add(d)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(stop.Add(30 * time.Second))
			sent := int64(0)
			if _, err := c.Write([]byte{ModeDiscard}); err != nil {
				errs <- err
				return
			}
			for time.Now().Before(stop) && ctx.Err() == nil {
				n, err := c.Write(chunk)
				sent += int64(n)
				if err != nil {
					errs <- err
					return
				}
			}
			c.CloseWrite()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				errs <- fmt.Errorf("no byte count from the sink: %w", err)
				return
			}
			got, _ := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
			if got != sent {
				mismatch.Add(1)
			}
			total.Add(got)
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	close(errs)
	if err := <-errs; err != nil {
		return res, fmt.Errorf("%s: %w", t.Name, err)
	}
	res.Bytes = total.Load()
	res.Mismatch = int(mismatch.Load())
	res.Gbps = float64(res.Bytes) * 8 / res.Seconds / 1e9
	if t.PID != 0 && res.Bytes > 0 {
		cpu1, err := ProcessCPU(t.PID)
		if err != nil {
			return res, fmt.Errorf("%s: %w", t.Name, err)
		}
		res.CPUPerGiB = (cpu1 - cpu0).Seconds() / (float64(res.Bytes) / (1 << 30))
	}
	return res, nil
}

// ProcessCPU reads the CPU time (user and system) a process has used,
// from /proc/PID/stat (in clock ticks of 1/100 s, Linux's USER_HZ).
func ProcessCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: count after it.
	i := strings.LastIndexByte(string(data), ')')
	f := strings.Fields(string(data[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14 of the whole line
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// LatencyResult is the outcome of Latency, in microseconds.
type LatencyResult struct {
	Conns    int     `json:"conns"`
	Size     int     `json:"size"`
	Requests int64   `json:"requests"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	P999us   float64 `json:"p999_us"`
	Maxus    float64 `json:"max_us"`
	Bars     []Bar   `json:"latency_histogram,omitempty"`
}

// Latency runs request/response round trips of size bytes on conns
// echo connections for d, one request in flight per connection.
func Latency(ctx context.Context, t Target, conns, size int, d time.Duration) (LatencyResult, error) {
	res := LatencyResult{Conns: conns, Size: size}
	hist := hdrhistogram.New(1, 10_000_000, 3) // 1 us .. 10 s
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	stop := time.Now().Add(d)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := t.dial(ctx, true)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(stop.Add(30 * time.Second))
			req := make([]byte, size)
			resp := make([]byte, size)
			if _, err := c.Write([]byte{ModeEcho}); err != nil {
				errs <- err
				return
			}
			local := hdrhistogram.New(1, 10_000_000, 3)
			for time.Now().Before(stop) && ctx.Err() == nil {
				t0 := time.Now()
				if _, err := c.Write(req); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					errs <- err
					return
				}
				local.RecordValue(time.Since(t0).Microseconds())
			}
			mu.Lock()
			hist.Merge(local)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return res, fmt.Errorf("%s: %w", t.Name, err)
	}
	res.Requests = hist.TotalCount()
	res.P50us = float64(hist.ValueAtQuantile(50))
	res.P99us = float64(hist.ValueAtQuantile(99))
	res.P999us = float64(hist.ValueAtQuantile(99.9))
	res.Maxus = float64(hist.Max())
	res.Bars = Bars(hist, 40)
	return res, nil
}

// ConnectResult is the outcome of ConnectRate.
type ConnectResult struct {
	Workers  int     `json:"workers"`
	OK       int64   `json:"ok"`
	Failed   int64   `json:"failed"`
	PerSec   float64 `json:"per_second"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	FirstErr string  `json:"first_error,omitempty"`
}

// ConnectRate opens new TLS connections (full handshakes, no resumption)
// from workers goroutines for d; each sends one byte through and reads
// its echo, so the relay to the sink is complete before it counts.
func ConnectRate(ctx context.Context, t Target, workers int, d time.Duration) ConnectResult {
	res := ConnectResult{Workers: workers}
	hist := hdrhistogram.New(1, 60_000_000, 3)
	var mu sync.Mutex
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := hdrhistogram.New(1, 60_000_000, 3)
			for time.Now().Before(stop) && ctx.Err() == nil {
				t0 := time.Now()
				err := func() error {
					c, err := t.dial(ctx, false)
					if err != nil {
						return err
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := c.Write([]byte{ModeEcho, 'x'}); err != nil {
						return err
					}
					_, err = io.ReadFull(c, make([]byte, 1))
					return err
				}()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
				local.RecordValue(time.Since(t0).Microseconds())
			}
			mu.Lock()
			hist.Merge(local)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.OK, res.Failed = ok.Load(), failed.Load()
	res.PerSec = float64(res.OK) / time.Since(start).Seconds()
	res.P50ms = float64(hist.ValueAtQuantile(50)) / 1000
	res.P99ms = float64(hist.ValueAtQuantile(99)) / 1000
	if e, ok := firstErr.Load().(string); ok {
		res.FirstErr = e
	}
	return res
}

// IdleResult is the outcome of IdleMemory.
type IdleResult struct {
	Conns          int     `json:"conns"`
	RSSBeforeBytes int64   `json:"rss_before_bytes"`
	RSSAfterBytes  int64   `json:"rss_after_bytes"`
	PerConnBytes   float64 `json:"per_conn_bytes"`
}

// IdleMemory opens n connections through the target, pushes one byte
// through each (so every relay is fully set up, upstream included), and
// reports the proxy process's RSS growth per connection. The connections
// stay open until the result is taken.
func IdleMemory(ctx context.Context, t Target, n int, settle time.Duration) (IdleResult, error) {
	res := IdleResult{Conns: n}
	if t.PID == 0 {
		return res, errors.New("idle memory needs the proxy's PID")
	}
	var err error
	if res.RSSBeforeBytes, err = ProcessRSS(t.PID); err != nil {
		return res, err
	}
	conns := make([]*tls.Conn, 0, n)
	defer func() { closeAll(conns) }()
	sem := make(chan struct{}, 16)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var firstErr error
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := t.dial(ctx, true)
			if err == nil {
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err = c.Write([]byte{ModeEcho, 'x'}); err == nil {
					_, err = io.ReadFull(c, make([]byte, 1))
				}
				c.SetDeadline(time.Time{})
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				if c != nil {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return res, fmt.Errorf("%s: opening %d connections: %w", t.Name, n, firstErr)
	}
	select {
	case <-time.After(settle): // let the proxy's GC and scavenger settle
	case <-ctx.Done():
	}
	if res.RSSAfterBytes, err = ProcessRSS(t.PID); err != nil {
		return res, err
	}
	res.PerConnBytes = float64(res.RSSAfterBytes-res.RSSBeforeBytes) / float64(n)
	runtime.KeepAlive(conns)
	return res, nil
}

// ProcessRSS reads a process's resident set size from /proc.
func ProcessRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

func closeAll(conns []*tls.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}
