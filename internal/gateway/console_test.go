package gateway

import (
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/dpgate/dpgate/tlsconf"
)

// consolePages are the console's GET routes that show data.
var consolePages = []string{"/", "/?fragment=live", "/ui/certificates", "/ui/certificates?fragment=live", "/ui/certificates/gateway.pem",
	"/ui/devices", "/ui/devices?fragment=live", "/ui/uplinks", "/ui/uplinks?fragment=live", "/ui/nothing-here"}

// consoleActions are its state-changing routes.
var consoleActions = []string{"/ui/logout", "/ui/certificates/delete", "/ui/certificates/agent", "/ui/certificates/upload",
	"/ui/certificates/validate", "/ui/devices/push", "/ui/devices/wake", "/ui/devices/delete"}

// TestConsoleNeedsSession: without a session every console route answers
// the sign-in page (401), never data; a wrong token does not sign in; a
// signed-in POST without the CSRF token is refused (403).
func TestConsoleNeedsSession(t *testing.T) {
	g, _, _ := newTestGateway(t, "")
	base := "http://" + g.adminAddr
	pin := g.Identity().Pin()
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	anon := &http.Client{CheckRedirect: noRedirect}
	get := func(c *http.Client, method, path string, form url.Values) (int, string) {
		t.Helper()
		var resp *http.Response
		var err error
		if method == "GET" {
			resp, err = c.Get(base + path)
		} else {
			resp, err = c.PostForm(base+path, form)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, html.UnescapeString(string(b))
	}
	for _, p := range consolePages {
		code, body := get(anon, "GET", p, nil)
		if code != http.StatusSeeOther || strings.Contains(body, pin) || strings.Contains(body, "BEGIN CERTIFICATE") {
			t.Errorf("GET %s without a session: %d, want a redirect to the sign-in page (303) and no data", p, code)
		}
	}
	for _, p := range consoleActions {
		if code, _ := get(anon, "POST", p, url.Values{"cn": {"pc-x"}}); code != http.StatusSeeOther {
			t.Errorf("POST %s without a session: %d, want a redirect to the sign-in page (303)", p, code)
		}
	}
	if code, body := get(anon, "GET", "/ui/login", nil); code != http.StatusOK || !strings.Contains(body, "Admin token") {
		t.Errorf("the sign-in page: %d", code)
	}
	if code, body := get(anon, "POST", "/ui/login", url.Values{"token": {"wrong"}}); code != http.StatusUnauthorized || !strings.Contains(body, "not the admin token") {
		t.Errorf("sign-in with a wrong token: %d", code)
	}
	if n := g.allow.Len(); n != 0 {
		t.Fatalf("%d certificates allowed after unauthenticated POSTs", n)
	}

	jar, _ := cookiejar.New(nil)
	user := &http.Client{Jar: jar, CheckRedirect: noRedirect}
	token, err := tlsconf.ReadSecretFile(first(g.cfg.AdminTokenFile()))
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := get(user, "POST", "/ui/login", url.Values{"token": {token}}); code != http.StatusSeeOther {
		t.Fatalf("sign-in: %d, want 303", code)
	}
	code, body := get(user, "GET", "/ui/certificates", nil)
	if code != http.StatusOK || !strings.Contains(body, pin) {
		t.Fatalf("certificates page signed in: %d", code)
	}
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if csrf == nil {
		t.Fatal("no CSRF token on the page")
	}
	for _, p := range consoleActions {
		if code, _ := get(user, "POST", p, url.Values{"cn": {"pc-x"}, "csrf": {"not-it"}}); code != http.StatusForbidden {
			t.Errorf("POST %s with a wrong CSRF token: %d, want 403", p, code)
		}
	}
	if code, _ := get(user, "POST", "/ui/certificates/agent", url.Values{"cn": {"pc-x"}, "csrf": {csrf[1]}}); code != http.StatusOK || g.allow.Len() != 1 {
		t.Errorf("generating an agent certificate with the CSRF token: %d, %d allowed", code, g.allow.Len())
	}
	if code, _ := get(user, "POST", "/ui/logout", url.Values{"csrf": {csrf[1]}}); code != http.StatusSeeOther {
		t.Errorf("sign-out: %d", code)
	}
	if code, _ := get(user, "GET", "/ui/certificates", nil); code != http.StatusSeeOther {
		t.Errorf("after sign-out: %d, want a redirect to the sign-in page", code)
	}
}
