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
