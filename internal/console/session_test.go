package console

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestSignInAndExpiry(t *testing.T) {
	now := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	s := &Sessions{Token: "right", TTL: time.Hour, Now: func() time.Time { return now }}
	if _, ok := s.SignIn("wrong"); ok {
		t.Fatal("a wrong token signed in")
	}
	if _, ok := (&Sessions{}).SignIn(""); ok {
		t.Fatal("an empty admin token let an empty token sign in")
	}
	ss, ok := s.SignIn("right")
	if !ok || ss.ID == "" || ss.CSRF == "" || ss.ID == ss.CSRF {
		t.Fatalf("sign-in: %+v %v", ss, ok)
	}
	rec := httptest.NewRecorder()
	SetCookie(rec, ss, true)
	c := rec.Result().Cookies()[0]
	if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode || !c.Expires.Equal(now.Add(time.Hour).Truncate(time.Second)) {
		t.Errorf("cookie %+v: want HttpOnly, Secure, SameSite=Strict, expiring with the session", c)
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.AddCookie(c)
	if got, ok := s.Get(r); !ok || got.ID != ss.ID {
		t.Fatalf("the session's own cookie: %v", ok)
	}
	now = now.Add(time.Hour + time.Second)
	if _, ok := s.Get(r); ok {
		t.Error("a session past its TTL is still valid")
	}
	ss, _ = s.SignIn("right")
	r = httptest.NewRequest("GET", "/", nil)
	r.AddCookie(&http.Cookie{Name: CookieName, Value: ss.ID})
	s.SignOut(r)
	if _, ok := s.Get(r); ok {
		t.Error("a signed-out session is still valid")
	}
	r = httptest.NewRequest("GET", "/", nil)
	r.AddCookie(&http.Cookie{Name: CookieName, Value: "made-up"})
	if _, ok := s.Get(r); ok {
		t.Error("a made-up cookie is a session")
	}
}

func TestCSRF(t *testing.T) {
	ss := Session{ID: "id", CSRF: "the-token"}
	post := func(form url.Values, header string) *http.Request {
		r := httptest.NewRequest("POST", "/ui/x", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if header != "" {
			r.Header.Set(CSRFHeader, header)
		}
		return r
	}
	for _, tc := range []struct {
		name   string
		r      *http.Request
		wantOK bool
	}{
		{"form field", post(url.Values{CSRFField: {"the-token"}}, ""), true},
		{"header", post(nil, "the-token"), true},
		{"none", post(nil, ""), false},
		{"wrong", post(url.Values{CSRFField: {"the-tokem"}}, ""), false},
		{"the session id instead", post(url.Values{CSRFField: {"id"}}, ""), false},
	} {
		if got := CheckCSRF(tc.r, ss); got != tc.wantOK {
			t.Errorf("%s: CheckCSRF = %v, want %v", tc.name, got, tc.wantOK)
		}
	}
}

func TestSessionsBounded(t *testing.T) {
	s := &Sessions{Token: "t"}
	for range maxSessions + 50 {
		s.SignIn("t")
	}
	if n := len(s.byID); n > maxSessions {
		t.Errorf("%d sessions kept, want at most %d", n, maxSessions)
	}
}

func TestLoginPage(t *testing.T) {
	rec := httptest.NewRecorder()
	Login(rec, http.StatusUnauthorized, "That is not the admin token.")
	body := rec.Body.String()
	if rec.Code != http.StatusUnauthorized || !strings.Contains(body, `type="password"`) || !strings.Contains(body, "That is not the admin token.") {
		t.Errorf("login page: %d\n%s", rec.Code, body)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options"} {
		if rec.Header().Get(h) == "" {
			t.Errorf("login page without %s", h)
		}
	}
}
