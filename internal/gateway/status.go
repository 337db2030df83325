package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/proxy"
	"github.com/dpgate/dpgate/tlsconf"
)

// Status is the reply of GET /v1/status.
type Status struct {
	Node       string    `json:"node"`
	Version    string    `json:"version"`
	Started    time.Time `json:"started"`
	Uptime     string    `json:"uptime"`
	Pin        string    `json:"pin"`
	CertExpiry time.Time `json:"cert_not_after"`
	AgentCerts int       `json:"agent_certs"`
	// Store counts damage met since start: records that failed their
	// checksum (kept aside, never used) and calls that hit damaged pages.
	Store store.Stats `json:"store"`
	// Process figures, for load tests and capacity planning: resident
	// memory (VmRSS), goroutines, open files.
	RSSBytes   int64 `json:"rss_bytes"`
	Goroutines int   `json:"goroutines"`
	OpenFiles  int   `json:"open_files"`
	// OpenFilesLimit is RLIMIT_NOFILE (0: none known); when it cannot
	// hold the configured connection limits they are lowered
	// (push.max_connections here, proxy.max_connections under proxy).
	OpenFilesLimit int `json:"open_files_limit,omitempty"`
	// Proxy is null while no upstream is configured.
	Proxy *proxy.Status `json:"proxy"`
	// Push is null while the push server is off.
	Push *PushStatus `json:"push"`
	// Cluster lists the live nodes; null without cluster.bind.
	Cluster []ClusterMember `json:"cluster"`
	// ClusterFailed lists the nodes declared dead that have not come back
	// or left since (kept a day): they may hold devices and pushes the
	// live nodes do not know of.
	ClusterFailed []FailedMember `json:"cluster_failed,omitempty"`
	// ClusterConflicts are node names claimed from two addresses for over
	// a minute (cluster.Conflict): node names must be unique.
	ClusterConflicts []NameConflict `json:"cluster_conflicts,omitempty"`
	// Links are the measured uplinks (proxy.upstreams[].probe).
	Links []link.Status `json:"links"`
	// PID is this process's id; it changes with an upgrade.
	PID int `json:"pid"`
	// Upgrade is the last upgrade this process tried; null: none.
	Upgrade *UpgradeStatus `json:"upgrade,omitempty"`
}

// PushStatus is the push server's part of /v1/status.
type PushStatus struct {
	Sessions int `json:"sessions"`
	// MaxConnections is the session limit in force: push.max_connections,
	// or lower when the open-files limit cannot hold it.
	MaxConnections int `json:"max_connections"`
	Devices        int `json:"known_devices"`
	// Queued pushes waiting here, and for how many devices.
	Queued   int    `json:"queued_pushes"`
	QueuedTo int    `json:"queued_devices"`
	Expired  uint64 `json:"expired"`
}

func (g *Gateway) status() Status {
	leaf := g.id.Certificate().Leaf
	var ps *proxy.Status
	if g.proxy != nil {
		s := g.proxy.Status()
		ps = &s
	}
	var us *PushStatus
	if g.push != nil {
		us = &PushStatus{Sessions: g.push.Sessions(), MaxConnections: g.push.MaxConnections(), Devices: len(g.push.KnownDevices()), Expired: g.push.Expired()}
		us.Queued, us.QueuedTo = g.push.QueueDepth()
	}
	return Status{
		Cluster:          g.clusterStatus(),
		ClusterFailed:    g.clusterFailed(),
		ClusterConflicts: g.clusterConflicts(),
		Links:            g.linkStatus(),
		RSSBytes:         processRSS(),
		Goroutines:       runtime.NumGoroutine(),
		OpenFiles:        openFiles(),
		OpenFilesLimit:   g.fileLimit(),
		Push:             us,
		Node:             g.cfg.Node.Name,
		Version:          Version().Version,
		Started:          g.started.UTC(),
		Uptime:           time.Since(g.started).Round(time.Second).String(),
		Pin:              tlsconf.Pin(leaf),
		CertExpiry:       leaf.NotAfter.UTC(),
		AgentCerts:       g.allow.Len(),
		Store:            g.db.Stats(),
		Proxy:            ps,
		PID:              pid,
		Upgrade:          g.upgrade.Load(),
	}
}

func (g *Gateway) routes() {
	a := g.admin
	// /healthz is kept as it was (503 while every upstream is ejected);
	// probes should use /livez (restart when it fails) and /readyz (send
	// traffic when it passes).
	a.HandleJSON("GET /healthz", func(*http.Request) (int, any, error) {
		if g.proxy != nil && !g.proxy.Ready() {
			return http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": "no healthy upstream"}, nil
		}
		return http.StatusOK, map[string]string{"status": "ok"}, nil
	})
	a.HandleJSON("GET /livez", func(*http.Request) (int, any, error) {
		return http.StatusOK, map[string]string{"status": "alive"}, nil
	})
	a.HandleJSON("GET /readyz", func(*http.Request) (int, any, error) {
		if reasons := g.notReady(); len(reasons) > 0 {
			return http.StatusServiceUnavailable, map[string]any{"status": "not ready", "reasons": reasons}, nil
		}
		return http.StatusOK, map[string]string{"status": "ready"}, nil
	})
	a.Handle("GET /metrics", g.tel.Handler())
	a.HandleJSON("GET /v1/metrics", func(r *http.Request) (int, any, error) {
		v, err := g.tel.Snapshot()
		return http.StatusOK, v, err
	})
	a.HandleJSON("GET /v1/status", func(*http.Request) (int, any, error) {
		return http.StatusOK, g.status(), nil
	})
	a.HandleJSON("DELETE /v1/members/{node}", func(r *http.Request) (int, any, error) {
		node := r.PathValue("node")
		if err := g.forgetNode(node, "api"); err != nil {
			return 0, nil, err
		}
		return http.StatusOK, map[string]string{"forgotten": node}, nil
	})
	a.HandleJSON("POST /v1/reload", func(*http.Request) (int, any, error) {
		res, err := g.reload()
		if err != nil {
			return 0, nil, admin.Error(http.StatusUnprocessableEntity, err)
		}
		return http.StatusOK, struct {
			Status
			Reload ReloadResult `json:"reload"`
		}{g.status(), res}, nil
	})
	a.HandleJSON("POST /v1/upgrade", func(*http.Request) (int, any, error) {
		if g.startUpgrade == nil {
			return 0, nil, admin.Error(http.StatusNotImplemented, errors.New("this process cannot upgrade itself (dpgate serve does, on Linux and other Unix systems)"))
		}
		if err := g.startUpgrade(); err != nil {
			return 0, nil, admin.Error(http.StatusConflict, err)
		}
		return http.StatusAccepted, map[string]any{"status": "upgrading", "pid": pid}, nil
	})
	a.HandleJSON("GET /v1/store/check", func(*http.Request) (int, any, error) {
		return http.StatusOK, g.db.Inspect(), nil
	})
	a.MountCerts(g.allow)
}

// BuildInfo says which build this is.
type BuildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go"`
}

// Set by the linker: -ldflags "-X github.com/dpgate/dpgate/internal/gateway.version=v1.2.3".
var version, commit string

// Version returns the build's version, commit and Go version.
func Version() BuildInfo {
	b := BuildInfo{Version: version, Commit: commit}
	if info, ok := debug.ReadBuildInfo(); ok {
		b.GoVersion = info.GoVersion
		if b.Version == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			b.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && b.Commit == "" {
				b.Commit = s.Value
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

// processRSS is this process's resident memory (VmRSS), 0 if unknown.
func processRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// openFiles counts this process's open file descriptors, -1 if unknown.
func openFiles() int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(es)
}

// notReady says why this node should not be sent traffic now; none when
// it can serve every part it runs.
func (g *Gateway) notReady() []string {
	var out []string
	switch {
	case g.handedOver.Load():
		out = append(out, "handed over to a new process (upgrade)")
	case g.draining.Load():
		out = append(out, "shutting down: draining")
	}
	if g.started.IsZero() {
		out = append(out, "starting")
	}
	if g.push != nil && g.pushAddr == "" {
		out = append(out, "push server configured but given no listener")
	}
	if g.proxy != nil && !g.proxy.Ready() {
		out = append(out, "proxy: no healthy upstream (every one ejected by its health check)")
	}
	return out
}

// Live checks within ctx that the node still works inside: a read
// transaction on the store and the locks of the allow-list, the push
// server's sessions and the cluster's view all answer. The systemd
// watchdog is fed only while it passes, so a node stuck on a lock is
// restarted.
func (g *Gateway) Live(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { // ends when the checks do; a stuck one leaks until then
		err := g.db.View(func(*bolt.Tx) error { return nil })
		g.allow.Len()
		if g.push != nil {
			g.push.Sessions()
		}
		if g.cluster != nil {
			g.cluster.Members()
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("gateway: not answering: %w", ctx.Err())
	}
}
