// Package admin is dpgate's admin HTTP API: JSON on a loopback listener by
// default, a bearer token required on every route but /healthz, loopback
// included (a local user is not the operator). The server
// owns routing, authentication, limits and the JSON conventions; the
// gateway and its components register their routes on it.
//
// Conventions: every reply but /metrics and /debug/pprof/ is JSON; errors are {"error": "..."} with a
// 4xx/5xx status; request bodies are capped at 1 MiB.
package admin

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dpgate/dpgate/internal/ratelimit"
)

// MaxBody caps a request body.
const MaxBody = 1 << 20

// Server is the admin API.
type Server struct {
	token   string
	routes  []string
	log     *slog.Logger
	refused func(r *http.Request) // Config.Refused
	mux     *http.ServeMux
	http    *http.Server
	// console, when mounted, serves / and /ui/ with its own sign-in.
	console http.Handler

	serving   sync.WaitGroup // Serve loops
	mu        sync.Mutex
	listeners []net.Listener
	handing   bool              // HandOver: listeners closed, Serve returns nil
	busy      map[net.Conn]bool // connections not idle: new (no request read yet) or active
	idle      chan struct{}     // closed by the connection that leaves busy empty; nil unless waited for

	// open are the connections held, with their state (Config.MaxConns).
	maxConns int
	open     map[net.Conn]*connRec
	evictLog *ratelimit.Every
}

// connRec is a held connection's state and since when it is in it.
type connRec struct {
	state http.ConnState
	since time.Time
}

// Config configures the server.
type Config struct {
	// Token is the bearer token every route but the Open ones requires.
	// Empty fails closed: no request is authorized.
	Token  string
	Logger *slog.Logger // default slog.Default()
	// Refused, if set, is told of each request refused for a missing or
	// wrong token (a metric, a log line kept sparse).
	Refused func(r *http.Request)
	// MaxConns caps the connections held open at once, all listeners
	// together. Default: DefaultMaxConns.
	MaxConns int
}

// DefaultMaxConns is Config.MaxConns's default: room for a publisher's
// pool (pushpeers keeps 64), Prometheus, the console and the CLI, within
// the open files the gateway keeps aside from agents' connections.
const DefaultMaxConns = 128

// New builds the server; routes are added with Handle before Serve.
func New(cfg Config) *Server {
	s := &Server{token: cfg.Token, log: cfg.Logger, refused: cfg.Refused, mux: http.NewServeMux(),
		maxConns: cmp.Or(cfg.MaxConns, DefaultMaxConns), open: map[net.Conn]*connRec{}, evictLog: ratelimit.NewEvery(10 * time.Second)}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// Long enough for ?wait= on pushes, short enough to free stuck writers.
		WriteTimeout:   2 * time.Minute,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ConnContext:    connContext,
		ConnState:      s.connState,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.busy = map[net.Conn]bool{}
	// Go's profiles, behind the same token as the rest: heap, goroutines,
	// CPU (/debug/pprof/profile?seconds=N), for go tool pprof.
	s.Handle("GET /debug/pprof/", http.HandlerFunc(pprof.Index))
	s.Handle("GET /debug/pprof/cmdline", http.HandlerFunc(pprof.Cmdline))
	s.Handle("GET /debug/pprof/profile", http.HandlerFunc(pprof.Profile))
	s.Handle("GET /debug/pprof/symbol", http.HandlerFunc(pprof.Symbol))
	s.Handle("GET /debug/pprof/trace", http.HandlerFunc(pprof.Trace))
	return s
}

// Open reports whether path is served without a token: only the health
// probes, which say nothing but whether the gateway lives and can serve.
func Open(path string) bool { return path == "/healthz" || path == "/livez" || path == "/readyz" }

// Handle registers a route with a Go 1.22 pattern ("GET /v1/certs").
func (s *Server) Handle(pattern string, h http.Handler) {
	s.routes = append(s.routes, pattern)
	s.mux.Handle(pattern, h)
}

// Routes lists every registered pattern, in registration order.
func (s *Server) Routes() []string { return slices.Clone(s.routes) }

// HandleJSON registers a route whose function returns a value to encode
// as JSON with the status, or an error (see Error).
func (s *Server) HandleJSON(pattern string, fn func(r *http.Request) (int, any, error)) {
	s.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		status, v, err := fn(r)
		if err != nil {
			status = http.StatusInternalServerError
			var he *HTTPError
			if errors.As(err, &he) {
				status = he.Status
			} else {
				s.log.Error("admin: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				status = http.StatusRequestEntityTooLarge
				hint := ""
				if r.URL.Path == "/v1/push" {
					hint = ` (a push to every device: {"all": true})`
				}
				err = fmt.Errorf("request body over %d KiB, the admin API's limit: split it over several requests%s", MaxBody>>10, hint)
			}
			WriteJSON(w, r, status, map[string]string{"error": err.Error()})
			return
		}
		WriteJSON(w, r, status, v)
	}))
}

// MountConsole serves the web console at / and under /ui/: it signs its
// users in with the same token and keeps sessions of its own (package
// console), so its paths need no bearer token here. Call it before Serve.
func (s *Server) MountConsole(h http.Handler) { s.console = h }

// ConsolePath reports whether path belongs to the web console.
func ConsolePath(path string) bool { return path == "/" || strings.HasPrefix(path, "/ui/") }

// ServeHTTP authenticates, then routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.console != nil && ConsolePath(r.URL.Path) {
		s.console.ServeHTTP(w, r)
		return
	}
	if !Open(r.URL.Path) && !fromSocket(r.Context()) && !s.authorized(r) {
		if s.refused != nil {
			s.refused(r)
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="dpgate"`)
		WriteJSON(w, r, http.StatusUnauthorized, map[string]string{
			"error": "missing or wrong bearer token (Authorization: Bearer, the token in admin.token_file or data_dir/admin.token)"})
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && s.token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) == 1
}

// Serve serves on ln until Shutdown, Close or HandOver; it returns nil
// after those.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.handing {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners = append(s.listeners, ln)
	s.serving.Add(1)
	s.mu.Unlock()
	defer s.serving.Done()
	err := s.http.Serve(cappedListener{ln, s})
	s.mu.Lock()
	handing := s.handing
	s.mu.Unlock()
	if handing || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for requests in flight, up to ctx.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// HandOver is Shutdown for an upgrade, where another process goes on
// accepting on the same sockets: it closes this process's listeners,
// answers every connection it had accepted (a request that arrives on one
// after http.Server.Shutdown began is dropped unanswered: a client saw
// EOF in TestUpgradeDropsNothing), then shuts down, closing the idle
// keep-alive connections. ctx bounds the wait.
func (s *Server) HandOver(ctx context.Context) error {
	s.mu.Lock()
	s.handing = true
	lns := s.listeners
	s.listeners = nil
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close() // the other process's copy of the socket stays open
	}
	// Every connection Serve took is tracked once Serve has returned.
	served := make(chan struct{})
	go func() { s.serving.Wait(); close(served) }() // ends when the loops see their closed listeners
	select {
	case <-served:
	case <-ctx.Done():
		return s.http.Shutdown(ctx)
	}
	s.mu.Lock()
	var idle chan struct{}
	if len(s.busy) > 0 {
		idle = make(chan struct{})
		s.idle = idle
	}
	s.mu.Unlock()
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
		}
	}
	return s.http.Shutdown(ctx)
}

// cappedListener holds the server to its MaxConns: an accepted
// connection past it makes room by closing the held connection that
// waits longest without a request in progress (accepted with none sent
// yet, or idle between requests), as nginx closes keep-alive
// connections when it runs short; with every one busy, the new one is
// closed. Each connection costs the gateway an open file, and any local
// user may open them.
type cappedListener struct {
	net.Listener
	s *Server
}

func (l cappedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.s.admit(c) {
			return c, nil
		}
	}
}

// admit records c as held, closing another to make room when at the
// limit; it reports false (c closed) when none could be.
func (s *Server) admit(c net.Conn) bool {
	now := time.Now()
	s.mu.Lock()
	var evict net.Conn
	if len(s.open) >= s.maxConns {
		var oldest time.Time
		for oc, r := range s.open {
			if (r.state == http.StateNew || r.state == http.StateIdle) && (evict == nil || r.since.Before(oldest)) {
				evict, oldest = oc, r.since
			}
		}
		if evict != nil {
			delete(s.open, evict) // closing it makes room now, whenever its StateClosed comes
		}
	}
	admitted := len(s.open) < s.maxConns
	if admitted {
		s.open[c] = &connRec{state: http.StateNew, since: now}
	}
	s.mu.Unlock()
	if evict != nil {
		evict.Close()
	}
	if !admitted {
		c.Close()
	}
	if evict == nil && admitted {
		return true
	}
	s.evictLog.Do(1, func(n int64) {
		s.log.Warn("admin: connection limit reached; connections without a request in progress closed to make room (logged once in 10 s)",
			"limit", s.maxConns, "closed_since_last_line", n, "last_from", c.RemoteAddr().String())
	})
	return admitted
}

// openConns is how many connections are held.
func (s *Server) openConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.open)
}

// connState keeps the held connections' states (admit), and the set of
// those that are not idle, for HandOver.
func (s *Server) connState(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.open[c]; ok {
		switch st {
		case http.StateClosed, http.StateHijacked:
			delete(s.open, c)
		default:
			r.state, r.since = st, time.Now()
		}
	}
	switch st {
	case http.StateNew, http.StateActive:
		s.busy[c] = true
	default:
		delete(s.busy, c)
		if len(s.busy) == 0 && s.idle != nil {
			close(s.idle)
			s.idle = nil
		}
	}
}

// Close stops at once.
func (s *Server) Close() error { return s.http.Close() }

// HTTPError is an error with the status it should be answered with.
type HTTPError struct {
	Status int
	Err    error
}

func (e *HTTPError) Error() string { return e.Err.Error() }
func (e *HTTPError) Unwrap() error { return e.Err }

// Errorf wraps err with an HTTP status.
func Error(status int, err error) error { return &HTTPError{Status: status, Err: err} }

// WriteJSON writes v as JSON: compact, as programs read it, or indented
// when the request asks with ?pretty, as Consul's and Elasticsearch's
// APIs do (curl users; the CLI indents what it prints itself). Indenting
// costs about six times the encoding: the answer to a push to 15,000
// devices takes 13-14 ms of CPU and 13 MB of garbage indented, 2.3 ms
// compact, while the push is being written to those agents
// (docs/BENCHMARKS.md).
func WriteJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	if pretty(r) {
		enc.SetIndent("", "  ")
	}
	enc.Encode(v)
}

// pretty reports whether r asks for indented JSON: ?pretty, or
// ?pretty=VALUE with a value strconv.ParseBool takes as true.
func pretty(r *http.Request) bool {
	if r.URL.RawQuery == "" {
		return false
	}
	vs, ok := r.URL.Query()["pretty"]
	if !ok {
		return false
	}
	on, err := strconv.ParseBool(vs[0])
	return vs[0] == "" || (err == nil && on)
}
