package console

import (
	"bytes"
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"sync"
)

//go:embed web
var web embed.FS

// Static serves the console's CSS and script (under /ui/static/).
func Static() http.Handler {
	sub, _ := fs.Sub(web, "web")
	return http.StripPrefix("/ui/static/", http.FileServer(http.FS(onlyStatic{sub})))
}

// onlyStatic serves the .css and .js files, not the templates.
type onlyStatic struct{ fs.FS }

func (o onlyStatic) Open(name string) (fs.File, error) {
	if !strings.HasSuffix(name, ".css") && !strings.HasSuffix(name, ".js") {
		return nil, fs.ErrNotExist
	}
	return o.FS.Open(name)
}

// pages returns the console's pages, each its template with the layout,
// parsed at the first page served: every dpgate command paid 1.2 ms at
// start to parse them when it was an init.
var pages = sync.OnceValue(func() map[string]*template.Template {
	base := template.Must(template.New("").ParseFS(web, "web/layout.html"))
	pages := map[string]*template.Template{"login": base}
	for _, name := range []string{"overview", "certificates", "devices", "uplinks"} {
		pages[name] = template.Must(template.Must(base.Clone()).ParseFS(web, "web/"+name+".html"))
	}
	return pages
})

// Page is what the layout shows around a page's data.
type Page struct {
	Title  string
	Active string // the page's name, marked in the navigation
	Node   string
	CSRF   string
	Flash  string // a success message
	Error  string // a failure message
	Data   any    // the page's own
}

// Render writes a page with its layout, or only its live fragment (the
// figures that update without a reload) when fragment is set.
func Render(w http.ResponseWriter, status int, name string, p Page, fragment bool) {
	t := pages()[name]
	var buf bytes.Buffer
	var err error
	switch {
	case name == "login":
		err = t.ExecuteTemplate(&buf, "login", p)
	case fragment:
		err = t.ExecuteTemplate(&buf, "live", p.Data)
	default:
		err = t.ExecuteTemplate(&buf, "layout", p)
	}
	if err != nil {
		http.Error(w, "console: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// Login writes the sign-in page (status 200, or 401 after a wrong token).
func Login(w http.ResponseWriter, status int, msg string) {
	Render(w, status, "login", Page{Title: "Sign in", Error: msg}, false)
}
