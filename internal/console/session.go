// Package console is the operator's web console on the admin listener:
// sign-in with the admin token, server-side sessions in a cookie, CSRF
// tokens on every state-changing request, and the pages the gateway
// renders (internal/gateway/console.go) from the templates embedded here.
//
// A request without a valid session gets the sign-in page, never data.
// The session cookie is HttpOnly, SameSite=Strict, Secure when the
// console is served over TLS, and expires (Sessions.TTL); every POST must
// carry the session's CSRF token (a form field or the X-CSRF-Token
// header), compared in constant time.
package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// CookieName is the session cookie.
const CookieName = "dpgate_session"

// CSRFField is the form field (and CSRFHeader the header) carrying the
// session's CSRF token.
const (
	CSRFField  = "csrf"
	CSRFHeader = "X-CSRF-Token"
)

// DefaultTTL is how long a session lasts without a new sign-in.
const DefaultTTL = 8 * time.Hour

// maxSessions bounds the sessions kept; beyond it the oldest goes.
const maxSessions = 1000

// Session is one signed-in browser.
type Session struct {
	ID      string
	CSRF    string
	Expires time.Time
}

// Sessions keeps the signed-in browsers in memory (a restart signs
// everyone out).
type Sessions struct {
	Token string        // the admin token a sign-in must present
	TTL   time.Duration // default DefaultTTL
	Now   func() time.Time

	mu   sync.Mutex
	byID map[string]Session
}

func (s *Sessions) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// SignIn checks the token and starts a session; ok is false for a wrong
// (or, with no admin token set, any) token.
func (s *Sessions) SignIn(token string) (Session, bool) {
	if s.Token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(s.Token)) != 1 {
		return Session{}, false
	}
	ttl := s.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	ss := Session{ID: random(), CSRF: random(), Expires: s.now().Add(ttl)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID == nil {
		s.byID = map[string]Session{}
	}
	now := s.now()
	for id, old := range s.byID { // expired ones first
		if now.After(old.Expires) {
			delete(s.byID, id)
		}
	}
	for len(s.byID) >= maxSessions { // then the one expiring first
		var oldest string
		for id, old := range s.byID {
			if oldest == "" || old.Expires.Before(s.byID[oldest].Expires) {
				oldest = id
			}
		}
		delete(s.byID, oldest)
	}
	s.byID[ss.ID] = ss
	return ss, true
}

// Get returns the request's session, if its cookie names one that has not
// expired.
func (s *Sessions) Get(r *http.Request) (Session, bool) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return Session{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.byID[c.Value]
	if !ok {
		return Session{}, false
	}
	if s.now().After(ss.Expires) {
		delete(s.byID, c.Value)
		return Session{}, false
	}
	return ss, true
}

// SignOut ends the request's session.
func (s *Sessions) SignOut(r *http.Request) {
	if c, err := r.Cookie(CookieName); err == nil {
		s.mu.Lock()
		delete(s.byID, c.Value)
		s.mu.Unlock()
	}
}

// CheckCSRF reports whether a state-changing request carries the session's
// CSRF token.
func CheckCSRF(r *http.Request, ss Session) bool {
	got := r.Header.Get(CSRFHeader)
	if got == "" {
		got = r.PostFormValue(CSRFField)
	}
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(ss.CSRF)) == 1
}

// SetCookie sets the session cookie on w; secure marks it for HTTPS only.
func SetCookie(w http.ResponseWriter, ss Session, secure bool) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: ss.ID, Path: "/", Expires: ss.Expires,
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
}

// ClearCookie removes the session cookie.
func ClearCookie(w http.ResponseWriter, secure bool) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
}

func random() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
