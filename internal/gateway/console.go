package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/dpgate/dpgate/deviceid"
	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/internal/console"
	"github.com/dpgate/dpgate/link"
	"github.com/dpgate/dpgate/proxy"
	"github.com/dpgate/dpgate/tlsconf"
)

// The web console (docs/operations.md, "The web console"): the pages of
// package console, filled from this node's parts. Every page and action
// needs a session (sign-in with the admin token); every POST its CSRF
// token.

// certWarnDays: the overview warns when the gateway's certificate expires
// sooner.
const certWarnDays = 30

// maxConsoleDevices bounds the devices table of one page.
const maxConsoleDevices = 1000

type consoleUI struct {
	g        *Gateway
	sessions *console.Sessions
	mux      *http.ServeMux
	secure   bool // served over TLS: the cookie is Secure

	mu    sync.Mutex
	flash map[string]string // session id -> the message the next page shows
}

// mountConsole serves the console on the admin listener.
func (g *Gateway) mountConsole(token string) {
	ui := &consoleUI{g: g, sessions: &console.Sessions{Token: token}, mux: http.NewServeMux(), flash: map[string]string{},
		secure: config.Enabled(g.cfg.Admin.Listen) && !config.IsLoopback(g.cfg.Admin.Listen)}
	m := ui.mux
	m.Handle("GET /ui/static/", console.Static())
	m.HandleFunc("GET /ui/login", ui.loginPage)
	m.HandleFunc("POST /ui/login", ui.login)
	m.HandleFunc("POST /ui/logout", ui.signedIn(ui.logout))
	m.HandleFunc("GET /{$}", ui.signedIn(ui.overview))
	m.HandleFunc("GET /ui/certificates", ui.signedIn(ui.certificates))
	m.HandleFunc("GET /ui/certificates/gateway.pem", ui.signedIn(ui.gatewayPEM))
	m.HandleFunc("POST /ui/certificates/gateway/generate", ui.signedIn(ui.gatewayGenerate))
	m.HandleFunc("POST /ui/certificates/gateway/upload", ui.signedIn(ui.gatewayUpload))
	m.HandleFunc("POST /ui/certificates/delete", ui.signedIn(ui.deleteCerts))
	m.HandleFunc("POST /ui/certificates/agent", ui.signedIn(ui.agentCert))
	m.HandleFunc("POST /ui/certificates/upload", ui.signedIn(ui.uploadCert))
	m.HandleFunc("POST /ui/certificates/validate", ui.signedIn(ui.validate))
	m.HandleFunc("GET /ui/devices", ui.signedIn(ui.devices))
	m.HandleFunc("POST /ui/devices/push", ui.signedIn(ui.deviceAction(toDevice, ui.devicePush)))
	m.HandleFunc("POST /ui/devices/wake", ui.signedIn(ui.deviceAction(toDevice, ui.deviceWake)))
	m.HandleFunc("POST /ui/devices/disconnect", ui.signedIn(ui.deviceAction(toDevice, ui.deviceDisconnect)))
	m.HandleFunc("POST /ui/devices/delete", ui.signedIn(ui.deviceAction(toDevices, ui.deviceDelete)))
	m.HandleFunc("GET /ui/uplinks", ui.signedIn(ui.uplinks))
	m.HandleFunc("POST /ui/cluster/forget", ui.signedIn(ui.forgetNode))
	m.HandleFunc("/ui/", ui.signedIn(func(w http.ResponseWriter, r *http.Request, _ console.Session) {
		http.NotFound(w, r)
	}))
	g.admin.MountConsole(ui)
}

func (ui *consoleUI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, admin.MaxBody)
	ui.mux.ServeHTTP(w, r)
}

// signedIn runs h for a request with a session (and, for a POST, its CSRF
// token); without one the browser is sent to the sign-in page, never
// given data.
func (ui *consoleUI) signedIn(h func(http.ResponseWriter, *http.Request, console.Session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ss, ok := ui.sessions.Get(r)
		switch {
		case !ok && r.Header.Get("X-Fragment") != "":
			http.Error(w, "sign in again", http.StatusUnauthorized) // the page's script reloads
			return
		case !ok:
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost && !console.CheckCSRF(r, ss) {
			http.Error(w, "console: missing or wrong CSRF token; reload the page", http.StatusForbidden)
			return
		}
		h(w, r, ss)
	}
}

func (ui *consoleUI) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := ui.sessions.Get(r); ok {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	console.Login(w, http.StatusOK, "")
}

func (ui *consoleUI) login(w http.ResponseWriter, r *http.Request) {
	ss, ok := ui.sessions.SignIn(r.PostFormValue("token"))
	if !ok {
		ui.g.authFailed("console", r.RemoteAddr)
		console.Login(w, http.StatusUnauthorized, "That is not the admin token.")
		return
	}
	ui.g.log.Info("console: signed in", "remote", r.RemoteAddr)
	console.SetCookie(w, ss, ui.secure || r.TLS != nil)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (ui *consoleUI) logout(w http.ResponseWriter, r *http.Request, _ console.Session) {
	ui.sessions.SignOut(r)
	console.ClearCookie(w, ui.secure || r.TLS != nil)
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

// render writes a page, or its live fragment for ?fragment=live.
func (ui *consoleUI) render(w http.ResponseWriter, r *http.Request, ss console.Session, name, title string, data any) {
	ui.mu.Lock()
	flash := ui.flash[ss.ID]
	delete(ui.flash, ss.ID)
	ui.mu.Unlock()
	p := console.Page{Title: title, Active: name, Node: ui.g.cfg.Node.Name, CSRF: ss.CSRF, Data: data}
	if strings.HasPrefix(flash, "!") {
		p.Error = flash[1:]
	} else {
		p.Flash = flash
	}
	console.Render(w, http.StatusOK, name, p, r.URL.Query().Get("fragment") == "live")
}

// done sends the browser back to page with a message (an error when err
// is set).
func (ui *consoleUI) done(w http.ResponseWriter, r *http.Request, ss console.Session, page, msg string, err error) {
	if err != nil {
		msg = "!" + err.Error()
	}
	ui.mu.Lock()
	ui.flash[ss.ID] = msg
	ui.mu.Unlock()
	http.Redirect(w, r, page, http.StatusSeeOther)
}

type overviewData struct {
	CSRF     string // the failed nodes' Forget forms, in the live fragment too
	Status   Status
	CertDays int
	CertWarn bool
	Queued   int // pushes queued here
	QueuedTo int // for this many devices
}

func (ui *consoleUI) overview(w http.ResponseWriter, r *http.Request, ss console.Session) {
	st := ui.g.status()
	d := overviewData{CSRF: ss.CSRF, Status: st, CertDays: daysLeft(st.CertExpiry)}
	d.CertWarn = d.CertDays < certWarnDays
	if ui.g.push != nil {
		d.Queued, d.QueuedTo = ui.g.push.QueueDepth()
	}
	ui.render(w, r, ss, "overview", "Overview", d)
}

func daysLeft(t time.Time) int { return int(time.Until(t).Hours() / 24) }

type certsData struct {
	Pin, Subject string
	NotAfter     time.Time
	CertDays     int
	CertWarn     bool
	Certs        []tlsconf.Entry
	Validate     bool
}

func (ui *consoleUI) certificates(w http.ResponseWriter, r *http.Request, ss console.Session) {
	leaf := ui.g.id.Certificate().Leaf
	d := certsData{Pin: tlsconf.Pin(leaf), Subject: leaf.Subject.String(), NotAfter: leaf.NotAfter, CertDays: daysLeft(leaf.NotAfter),
		Certs: ui.g.allow.List(tlsconf.Filter{}), Validate: ui.g.validatesAgentCerts()}
	d.CertWarn = d.CertDays < certWarnDays
	ui.render(w, r, ss, "certificates", "Certificates", d)
}

func (ui *consoleUI) gatewayPEM(w http.ResponseWriter, r *http.Request, _ console.Session) {
	c := ui.g.id.Certificate()
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", ui.g.cfg.Node.Name+".pem"))
	for _, der := range c.Certificate[:1] { // the certificate agents pin, not the chain
		pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
}

// gatewayGenerate replaces the gateway's certificate by a new one with a
// new key.
func (ui *consoleUI) gatewayGenerate(w http.ResponseWriter, r *http.Request, ss console.Session) {
	c, err := tlsconf.Issue(ui.g.certTemplate(), nil)
	if err == nil {
		err = ui.replaceIdentity(c)
	}
	ui.done(w, r, ss, "/ui/certificates", ui.repinMessage(), err)
}

// gatewayUpload replaces the gateway's certificate by an independently
// prepared one: PEM with certificate and key (the key in the same file or
// its own), RSA keys of 2048 bits or more, valid now.
func (ui *consoleUI) gatewayUpload(w http.ResponseWriter, r *http.Request, ss console.Session) {
	read := func(field string) []byte {
		f, _, err := r.FormFile(field)
		if err != nil {
			return nil
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		return b
	}
	certPEM, keyPEM := read("cert"), read("key")
	if keyPEM == nil {
		keyPEM = certPEM
	}
	c, err := tlsconf.ParseKeyPair(certPEM, keyPEM)
	if err == nil {
		err = ui.replaceIdentity(c)
	}
	if err != nil {
		err = fmt.Errorf("the certificate was not changed: %w", err)
	}
	ui.done(w, r, ss, "/ui/certificates", ui.repinMessage(), err)
}

// replaceIdentity puts c in use, logging the old and new pins.
func (ui *consoleUI) replaceIdentity(c tls.Certificate) error {
	old := ui.g.id.Pin()
	if err := ui.g.id.Replace(c); err != nil {
		return err
	}
	ui.g.log.Warn("console: gateway certificate replaced; agents pinning the old pin must be re-pinned", "old_pin", old, "pin", ui.g.id.Pin())
	return nil
}

func (ui *consoleUI) repinMessage() string {
	return "This gateway now presents a new certificate, pin " + ui.g.id.Pin() +
		". Every agent and node that pinned the old one must be given the new certificate (download it above) or they will refuse to connect."
}

func (ui *consoleUI) deleteCerts(w http.ResponseWriter, r *http.Request, ss console.Session) {
	fps := r.PostForm["fp"]
	if len(fps) == 0 {
		ui.done(w, r, ss, "/ui/certificates", "", errors.New("select the certificates to delete first"))
		return
	}
	removed, err := ui.g.allow.Remove(fps...)
	if err == nil {
		ui.g.log.Info("console: agent certificates deleted", "count", len(removed))
	}
	ui.done(w, r, ss, "/ui/certificates", fmt.Sprintf("Deleted %d certificate(s); agents presenting them are refused from now on.", len(removed)), err)
}

func (ui *consoleUI) agentCert(w http.ResponseWriter, r *http.Request, ss console.Session) {
	cn := strings.TrimSpace(r.PostFormValue("cn"))
	if err := deviceid.Check(cn); err != nil {
		ui.done(w, r, ss, "/ui/certificates", "", fmt.Errorf("device id: %w (the agent sends it as its id)", err))
		return
	}
	leaf, pfx, err := IssueAgentCert(ui.g.cfg, cn, tlsconf.Template{}, r.PostFormValue("password"))
	if err == nil {
		_, err = ui.g.allow.Add(leaf)
	}
	if err != nil {
		ui.done(w, r, ss, "/ui/certificates", "", err)
		return
	}
	ui.g.log.Info("console: agent certificate issued", "device", cn, "fingerprint", tlsconf.Fingerprint(leaf))
	w.Header().Set("Content-Type", "application/x-pkcs12")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", cn+".pfx"))
	w.Write(pfx)
}

func (ui *consoleUI) uploadCert(w http.ResponseWriter, r *http.Request, ss console.Session) {
	f, _, err := r.FormFile("file")
	if err != nil {
		ui.done(w, r, ss, "/ui/certificates", "", errors.New("choose a PEM or PKCS#12 file"))
		return
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		ui.done(w, r, ss, "/ui/certificates", "", err)
		return
	}
	certs, err := tlsconf.ParseCertificatesPEM(data)
	if err != nil { // not PEM: a PKCS#12 container
		var c tls.Certificate
		if c, err = tlsconf.ParsePFX(data, r.PostFormValue("password")); err == nil {
			var leaf *x509.Certificate
			if leaf, err = x509.ParseCertificate(c.Certificate[0]); err == nil {
				certs = append(certs, leaf)
			}
		}
	}
	if err == nil {
		var added []tlsconf.Entry
		if added, err = ui.g.allow.Add(certs...); err == nil {
			ui.done(w, r, ss, "/ui/certificates", fmt.Sprintf("Allowed %d certificate(s).", len(added)), nil)
			return
		}
	}
	ui.done(w, r, ss, "/ui/certificates", "", fmt.Errorf("the file is neither a PEM certificate nor a PKCS#12 container this password opens: %w", err))
}

// validateMsg is the cluster message that switches the validation of
// agent certificates on every node.
type validateMsg struct {
	Validate *bool `json:"validate_agent_certs"`
}

func (ui *consoleUI) validate(w http.ResponseWriter, r *http.Request, ss console.Session) {
	if ui.g.proxy == nil {
		ui.done(w, r, ss, "/ui/certificates", "", errors.New("the proxy is off (no upstream configured): there are no agent connections to validate"))
		return
	}
	on := r.PostFormValue("on") == "true"
	ui.g.setValidateAgentCerts(on)
	if c := ui.g.cluster; c != nil { // every node switches
		b, _ := json.Marshal(validateMsg{Validate: &on})
		c.Broadcast(b)
	}
	state := map[bool]string{true: "on: agents must present a certificate from the list", false: "off"}[on]
	ui.done(w, r, ss, "/ui/certificates", "Validation of agent certificates is "+state+" (until the next restart, which reads proxy.validate_agent_certs).", nil)
}

// setValidateAgentCerts switches the proxy's validation of agent
// certificates live.
func (g *Gateway) setValidateAgentCerts(on bool) {
	if g.proxy == nil {
		return
	}
	if on {
		g.proxy.SetAllowList(g.allow)
	} else {
		g.proxy.SetAllowList(nil)
	}
	g.log.Info("validation of agent certificates switched", "on", on)
}

func (g *Gateway) validatesAgentCerts() bool { return g.proxy != nil && g.proxy.ValidatesAgentCerts() }

type deviceRow struct {
	DeviceEntry
	RTT, Loss string
	Here      bool // connected to this node: it may be disconnected here
}

type devicesData struct {
	CSRF       string // the rows' action forms, in the live fragment too
	Query      string
	Cluster    bool // a Node column
	Devices    []deviceRow
	More       int      // matching devices beyond the table's bound
	NotReached []string // nodes that did not answer
}

func (ui *consoleUI) devices(w http.ResponseWriter, r *http.Request, ss console.Session) {
	d := devicesData{CSRF: ss.CSRF, Query: strings.TrimSpace(r.URL.Query().Get("q"))}
	if ui.g.push != nil {
		l := ui.g.deviceList(r.Context())
		d.Cluster, d.NotReached = ui.g.router != nil, l.NotReached
		for _, dev := range l.Devices {
			if d.Query != "" && !strings.Contains(strings.ToLower(dev.ID), strings.ToLower(d.Query)) {
				continue
			}
			if len(d.Devices) == maxConsoleDevices {
				d.More++
				continue
			}
			row := deviceRow{DeviceEntry: dev, Here: dev.Connected && (dev.Node == "" || dev.Node == ui.g.cfg.Node.Name)}
			if p := dev.Path; p != nil {
				row.RTT = p.RTT.Round(100 * time.Microsecond).String()
				if p.Sent > 0 {
					row.Loss = fmt.Sprintf("%.1f %%", 100*p.LossRatio())
				}
			}
			d.Devices = append(d.Devices, row)
		}
	}
	ui.render(w, r, ss, "devices", "Devices", d)
}

// deviceAction is a devices-page action on the device in the form: it
// runs act (with the push server on) and sends the browser back to the
// device with act's message or error.
func (ui *consoleUI) deviceAction(back func(id string) string, act func(ctx context.Context, id string) (string, error)) func(http.ResponseWriter, *http.Request, console.Session) {
	return func(w http.ResponseWriter, r *http.Request, ss console.Session) {
		id := r.PostFormValue("id")
		if ui.g.push == nil {
			ui.done(w, r, ss, back(id), "", errors.New("the push server is off"))
			return
		}
		msg, err := act(r.Context(), id)
		ui.done(w, r, ss, back(id), msg, err)
	}
}

// forgetNode is the Overview's Forget of a failed node, as dpgate members
// forget does.
func (ui *consoleUI) forgetNode(w http.ResponseWriter, r *http.Request, ss console.Session) {
	node := r.PostFormValue("node")
	err := ui.g.forgetNode(node, "console")
	ui.done(w, r, ss, "/", fmt.Sprintf("Forgot %s on every node.", node), err)
}

func toDevice(id string) string { return "/ui/devices?q=" + url.QueryEscape(id) }
func toDevices(string) string   { return "/ui/devices" }

func (ui *consoleUI) devicePush(ctx context.Context, id string) (string, error) {
	payload := "dpgate console test push " + time.Now().UTC().Format(time.RFC3339)
	replies, err := ui.g.accept(ctx, []string{id}, []byte(payload), time.Hour)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("Test push %s queued for %s (%q; kept for an hour).", replies[0].ID, id, payload), nil
}

func (ui *consoleUI) deviceWake(_ context.Context, id string) (string, error) {
	res := ui.g.wake.Wake(id, "console") // on with the push server
	switch {
	case res.Limited:
		return "", errors.New("wake-ups of this device are over their rate limit; try again later")
	case res.Unknown:
		return "", fmt.Errorf("%s has no known address to wake it at", id)
	}
	return fmt.Sprintf("Wake-up sent to %s (%d way(s)).", id, len(res.Attempts)), nil
}

func (ui *consoleUI) deviceDisconnect(_ context.Context, id string) (string, error) {
	if !ui.g.push.Disconnect(id) {
		return "", fmt.Errorf("%s is not connected to this node", id)
	}
	return fmt.Sprintf("Disconnected %s; it reconnects after its backoff.", id), nil
}

func (ui *consoleUI) deviceDelete(ctx context.Context, id string) (string, error) {
	rm, err := ui.g.removeDevice(ctx, id, "console")
	if err != nil {
		return "", err
	}
	msg := fmt.Sprintf("Removed %s and its queued pushes.", id)
	if len(rm.Nodes) > 0 {
		msg = fmt.Sprintf("Removed %s and its queued pushes on %s.", id, strings.Join(rm.Nodes, ", "))
	}
	if len(rm.NotReached) > 0 {
		msg += fmt.Sprintf(" Not reached: %s; remove it there again once it is back.", strings.Join(rm.NotReached, ", "))
	}
	return msg, nil
}

type uplinkRow struct {
	proxy.UpstreamStatus
	Link *linkRow
}

type linkRow struct {
	Verdict           link.State
	LossOut, LossBack float64 // percent
	RTT, Jitter       time.Duration
}

type uplinksData struct {
	LossLimit  float64 // percent
	DelayLimit time.Duration
	Upstreams  []uplinkRow
	Charts     []consoleChart
}

type consoleChart struct {
	Title string
	SVG   template.HTML // from chart: numbers only
}

func (ui *consoleUI) uplinks(w http.ResponseWriter, r *http.Request, ss console.Session) {
	d := uplinksData{LossLimit: 100 * float64(ui.g.cfg.Link.Limits.Loss), DelayLimit: ui.g.cfg.Link.Limits.Delay.D()}
	if ui.g.proxy != nil {
		links := map[string]link.Status{}
		for _, l := range ui.g.linkStatus() {
			links[l.Name] = l
		}
		for _, u := range ui.g.proxy.Status().Upstreams {
			row := uplinkRow{UpstreamStatus: u}
			if l, ok := links[u.Address]; ok {
				row.Link = &linkRow{Verdict: l.Verdict, LossOut: 100 * l.Stats.LossOut, LossBack: 100 * l.Stats.LossBack,
					RTT: l.Stats.RTTP50.Round(10 * time.Microsecond), Jitter: l.Stats.Jitter.Round(10 * time.Microsecond)}
				d.Charts = append(d.Charts, ui.linkCharts(u.Address, d.LossLimit, d.DelayLimit)...)
			}
			d.Upstreams = append(d.Upstreams, row)
		}
	}
	ui.render(w, r, ss, "uplinks", "Uplinks", d)
}

// linkCharts are an uplink's loss and RTT over the last hour against the
// limits.
func (ui *consoleUI) linkCharts(name string, lossLimit float64, delayLimit time.Duration) []consoleChart {
	ps := ui.g.linkHist.get(name)
	at := make([]time.Time, len(ps))
	loss, rtt := make([]float64, len(ps)), make([]float64, len(ps))
	for i, p := range ps {
		at[i], loss[i], rtt[i] = p.At, p.Loss, float64(p.RTT)/float64(time.Millisecond)
	}
	now := time.Now()
	return []consoleChart{
		{Title: name + ": loss, %", SVG: chart(now, at, loss, lossLimit, " %")},
		{Title: name + ": RTT, ms", SVG: chart(now, at, rtt, float64(delayLimit)/float64(time.Millisecond), " ms")},
	}
}
