package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Device tokens (push.auth: token) are "v1.<device b64>.<expiry unix>.<mac b64>"
// with mac = HMAC-SHA256(key, "v1." + device b64 + "." + expiry), base64url
// without padding. The keys are the site's (push.token_key_file, the same
// file on every node of a cluster, or data_dir/push-token.key): the first
// signs, every one verifies, so a new key can be added before the old one
// is retired.

// ErrToken is wrapped by every token verification failure.
var ErrToken = errors.New("push: invalid device token")

// IssueToken signs a token for device valid until expiry.
func IssueToken(key []byte, device string, expiry time.Time) string {
	body := "v1." + base64.RawURLEncoding.EncodeToString([]byte(device)) + "." + strconv.FormatInt(expiry.Unix(), 10)
	return body + "." + base64.RawURLEncoding.EncodeToString(tokenMAC(key, body))
}

// VerifyToken checks a token against any of keys and returns its device id.
func VerifyToken(keys [][]byte, token string, now time.Time) (string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 4 || parts[0] != "v1" {
		return "", fmt.Errorf("%w: not v1.<device>.<expiry>.<mac>", ErrToken)
	}
	mac, err := base64.RawURLEncoding.DecodeString(parts[3])
	if err != nil || !slices.ContainsFunc(keys, func(k []byte) bool { return hmac.Equal(mac, tokenMAC(k, strings.Join(parts[:3], "."))) }) {
		return "", fmt.Errorf("%w: bad signature (signed with a key this gateway does not have)", ErrToken)
	}
	exp, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return "", fmt.Errorf("%w: bad expiry", ErrToken)
	}
	if now.Unix() >= exp {
		return "", fmt.Errorf("%w: expired on %s", ErrToken, time.Unix(exp, 0).UTC().Format(time.DateOnly))
	}
	dev, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || CheckDeviceID(string(dev)) != nil {
		return "", fmt.Errorf("%w: bad device id", ErrToken)
	}
	return string(dev), nil
}

func tokenMAC(key []byte, body string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(body))
	return h.Sum(nil)
}

// ParseTokenKeys reads a token key file (push.token_key_file): one base64
// key of 16 bytes or more per line, the first signs, every one verifies;
// blank lines and lines starting with # are skipped. An error names the
// line.
func ParseTokenKeys(data []byte) ([][]byte, error) {
	var keys [][]byte
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(k) < 16 {
			return nil, fmt.Errorf("line %d: not base64 of a key of 16 bytes or more", i+1)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("holds no key")
	}
	return keys, nil
}
