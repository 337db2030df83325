package wire

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestParseTokenKeys(t *testing.T) {
	k1, k2 := strings.Repeat("a", 16), strings.Repeat("b", 32)
	keys, err := ParseTokenKeys([]byte("# the first signs\n" + base64.StdEncoding.EncodeToString([]byte(k1)) + "\n\n" + base64.StdEncoding.EncodeToString([]byte(k2)) + "\n"))
	if err != nil || len(keys) != 2 || string(keys[0]) != k1 || string(keys[1]) != k2 {
		t.Fatalf("keys %q, %v", keys, err)
	}
	for in, want := range map[string]string{"": "holds no key", "# only a comment\n": "holds no key", "c2hvcnQ=\n": "line 1", "ok\n!!!\n": "line 1"} {
		if _, err := ParseTokenKeys([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %q", in, err, want)
		}
	}
}
