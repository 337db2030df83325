package gateway

import (
	"cmp"

	"github.com/dpgate/dpgate/proxy"
	"github.com/dpgate/dpgate/push"
)

// reservedFiles are the open files kept for all but agent connections:
// the store and its journals, the listeners, the admin API's connections
// (at most admin.DefaultMaxConns, 128), the cluster's connections,
// upstream dials and health checks, the agents being told the push
// server is full (at most 64).
const reservedFiles = 256

// connLimits are push.max_connections and proxy.max_connections as this
// process can hold them.
type connLimits struct {
	push, proxy int
	// files is the open-files limit (RLIMIT_NOFILE), need what the
	// configured limits take; lowered says the two above are below the
	// configured ones.
	files, need int
	lowered     bool
}

// connectionLimits fits the configured connection limits (0: the
// package's default; a part that is off counts nothing) into files open
// files: a push session over TCP holds one, a relay two (the agent's and
// the upstream's), and reservedFiles stay for the rest. When they do not
// fit, both are lowered in proportion. Without this a process reaching
// its open-files limit could accept nothing more, and neither could its
// admin API, so an operator could not even ask it what was wrong; the
// store and the cluster could open nothing either. files 0 is unknown (no
// such limit on this platform): nothing is lowered.
func connectionLimits(files, pushMax, proxyMax int, pushOn, proxyOn bool) connLimits {
	l := connLimits{files: files}
	if pushOn {
		l.push = cmp.Or(pushMax, push.DefaultMaxConnections)
	}
	if proxyOn {
		l.proxy = cmp.Or(proxyMax, proxy.DefaultMaxConnections)
	}
	l.need = l.push + 2*l.proxy + reservedFiles
	if files <= 0 || l.need <= files {
		return l
	}
	avail, want := int64(max(files-reservedFiles, 0)), int64(l.push+2*l.proxy)
	l.lowered = true
	if pushOn {
		l.push = max(int(int64(l.push)*avail/want), 1)
	}
	if proxyOn {
		l.proxy = max(int(int64(l.proxy)*avail/want), 1)
	}
	return l
}

// fitConnectionLimits fits the connection limits of the configuration
// (at start, or the next one in a reload), warning when they are lowered.
func (g *Gateway) fitConnectionLimits(pushMax, proxyMax int, proxyOn bool) connLimits {
	l := connectionLimits(g.fileLimit(), pushMax, proxyMax, g.pushEnabled(), proxyOn)
	if l.lowered {
		attrs := []any{"open_files_limit", l.files, "needed", l.need, "reserved", reservedFiles}
		if l.push > 0 {
			attrs = append(attrs, "push.max_connections", l.push)
		}
		if l.proxy > 0 {
			attrs = append(attrs, "proxy.max_connections", l.proxy)
		}
		g.log.Warn("open files: the limit cannot hold the configured connections; lowered for this process so that the admin API, the store and the cluster always have files (raise LimitNOFILE, or ulimit -n, to what is needed)", attrs...)
	}
	return l
}

// fileLimit is Options.FileLimit or the process's open-files limit.
func (g *Gateway) fileLimit() int {
	return cmp.Or(g.fileLimitOpt, openFilesLimit())
}
