package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/dpgate/dpgate/tlsconf"
)

// CertList is the reply of GET /v1/certs.
type CertList struct {
	Count int             `json:"count"`
	Certs []tlsconf.Entry `json:"certs"`
}

// CertChange is the reply of POST and DELETE on /v1/certs.
type CertChange struct {
	Added   []tlsconf.Entry `json:"added,omitempty"`
	Removed []tlsconf.Entry `json:"removed,omitempty"`
}

// MountCerts serves the agent certificate allow-list:
//
//	GET    /v1/certs[?fingerprint=..&serial=..]  list, filtered by substring
//	POST   /v1/certs                             add: a PEM body, or JSON {"pem": "..."}
//	DELETE /v1/certs/{fingerprint}               delete one
func (s *Server) MountCerts(allow *tlsconf.AllowList) {
	s.HandleJSON("GET /v1/certs", func(r *http.Request) (int, any, error) {
		q := r.URL.Query()
		certs := allow.List(tlsconf.Filter{Fingerprint: q.Get("fingerprint"), Serial: q.Get("serial")})
		return http.StatusOK, CertList{Count: len(certs), Certs: certs}, nil
	})
	s.HandleJSON("POST /v1/certs", func(r *http.Request) (int, any, error) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return 0, nil, Error(http.StatusBadRequest, err)
		}
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			var req struct {
				PEM string `json:"pem"`
			}
			if err := json.Unmarshal(body, &req); err != nil {
				return 0, nil, Error(http.StatusBadRequest, errors.New("body is not JSON {\"pem\": \"...\"}: "+err.Error()))
			}
			body = []byte(req.PEM)
		}
		certs, err := tlsconf.ParseCertificatesPEM(body)
		if err != nil {
			return 0, nil, Error(http.StatusBadRequest, err)
		}
		added, err := allow.Add(certs...)
		if err != nil {
			return 0, nil, err
		}
		s.log.Info("agent certificates added", "count", len(added))
		return http.StatusCreated, CertChange{Added: added}, nil
	})
	s.HandleJSON("DELETE /v1/certs/{fingerprint}", func(r *http.Request) (int, any, error) {
		removed, err := allow.Remove(r.PathValue("fingerprint"))
		if errors.Is(err, tlsconf.ErrNotInList) {
			return 0, nil, Error(http.StatusNotFound, err)
		} else if err != nil {
			return 0, nil, err
		}
		for _, e := range removed {
			s.log.Info("agent certificate removed", "fingerprint", e.Fingerprint, "subject", e.Subject)
		}
		return http.StatusOK, CertChange{Removed: removed}, nil
	})
}
