package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestJSONCompactUnlessPretty: answers are compact JSON, indented when
// the request asks with ?pretty, and the same value either way. Errors
// (here the missing token) follow the same rule.
func TestJSONCompactUnlessPretty(t *testing.T) {
	s := New(Config{Token: "t"})
	s.HandleJSON("GET /v1/thing", func(*http.Request) (int, any, error) {
		return http.StatusOK, map[string]any{"name": "a", "items": []int{1, 2}}, nil
	})
	get := func(target, token string) (status int, body string) {
		req := httptest.NewRequest("GET", target, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	for _, tc := range []struct {
		target, token string
		status        int
		indented      bool
	}{
		{"/v1/thing", "t", 200, false},
		{"/v1/thing?pretty", "t", 200, true},
		{"/v1/thing?pretty=1", "t", 200, true},
		{"/v1/thing?x=1&pretty=true", "t", 200, true},
		{"/v1/thing?pretty=false", "t", 200, false},
		{"/v1/thing?pretty=no", "t", 200, false}, // not a boolean: not asked for
		{"/v1/thing", "", 401, false},
		{"/v1/thing?pretty", "", 401, true},
	} {
		t.Run(tc.target+fmt.Sprintf(" token=%q", tc.token), func(t *testing.T) {
			status, body := get(tc.target, tc.token)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			if !json.Valid([]byte(body)) {
				t.Fatalf("not JSON: %q", body)
			}
			lines := strings.Count(body, "\n")
			if tc.indented && lines < 3 {
				t.Errorf("%d lines, want it indented: %q", lines, body)
			}
			if !tc.indented && lines != 1 {
				t.Errorf("%d lines, want one compact line: %q", lines, body)
			}
		})
	}
}

// TestBodyOverTheLimitSaysIt: a body over MaxBody is refused with 413
// and an error naming the limit and what to do. Seen: a push to 80,000
// listed devices (1.3 MB) answered only "http: request body too large".
func TestBodyOverTheLimitSaysIt(t *testing.T) {
	s := New(Config{Token: "t"})
	s.HandleJSON("POST /v1/thing", func(r *http.Request) (int, any, error) {
		var v any
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
			return 0, nil, Error(http.StatusBadRequest, err)
		}
		return http.StatusOK, v, nil
	})
	req := httptest.NewRequest("POST", "/v1/thing", strings.NewReader(`"`+strings.Repeat("x", MaxBody)+`"`))
	req.Header.Set("Authorization", "Bearer t")
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge || !strings.Contains(rec.Body.String(), "1024 KiB") || !strings.Contains(rec.Body.String(), "split") {
		t.Errorf("a body over the limit: %d %s, want 413 naming the limit (1024 KiB) and to split it", rec.Code, rec.Body.String())
	}
}
