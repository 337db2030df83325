package config

import (
	"encoding/xml"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestMain(m *testing.M) {
	// Fixed environment defaults so golden files do not depend on the host.
	hostname = func() (string, error) { return "testhost", nil }
	dataDirDefault = func() string { return "/var/lib/dpgate" }
	os.Exit(m.Run())
}

// TestGoldenGood loads every testdata/good/*.yaml and compares the
// effective configuration (defaults filled in) with its .golden file.
func TestGoldenGood(t *testing.T) {
	files, _ := filepath.Glob("testdata/good/*.yaml")
	if len(files) == 0 {
		t.Fatal("no golden inputs found")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			got, err := yaml.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			// Paths are made absolute against the file's directory; keep the
			// golden files independent of where the checkout lives.
			abs, _ := filepath.Abs("testdata/good")
			got = []byte(strings.ReplaceAll(string(got), abs, "$DIR"))
			compareGolden(t, strings.TrimSuffix(f, ".yaml")+".golden", got)
		})
	}
}

// TestGoldenBad checks that every testdata/bad/*.yaml is refused with the
// message in its .err file, which names the key and line.
func TestGoldenBad(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.yaml")
	if len(files) < 10 {
		t.Fatalf("found %d bad inputs, want at least 10", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := Load(f)
			if err == nil {
				t.Fatal("Load accepted a bad file")
			}
			if !IsConfigError(err) {
				t.Errorf("error %T is not a *config.Error: %v", err, err)
			}
			compareGolden(t, strings.TrimSuffix(f, ".yaml")+".err", []byte(err.Error()+"\n"))
		})
	}
}

func compareGolden(t *testing.T, file string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("output differs from %s\n--- got ---\n%s\n--- want ---\n%s", file, got, want)
	}
}

func TestErrorsNameKeyAndLine(t *testing.T) {
	tests := []struct {
		name, in string
		key      string
		line     int
	}{
		{"unknown top", "node:\n  name: a\nbogus: 1\n", "bogus", 3},
		{"unknown nested in list", "proxy:\n  upstreams:\n    - address: a:1\n    - address: b:1\n      foo: 1\n", "proxy.upstreams[1].foo", 5},
		{"type in list", "wake:\n  wol_ports: [7, x]\n", "wake.wol_ports[1]", 2},
		{"validation uses line", "\n\nproxy:\n  balance: nope\n", "proxy.balance", 4},
		{"pin in list", "proxy:\n  upstreams:\n    - address: a:1\n      pins:\n        - sha256//short\n", "proxy.upstreams[0].pins[0]", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			e, ok := err.(*Error)
			if !ok {
				t.Fatalf("got %v (%T), want *Error", err, err)
			}
			if e.Key != tt.key || e.Line != tt.line {
				t.Errorf("got key %q line %d, want key %q line %d (%v)", e.Key, e.Line, tt.key, tt.line, e)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"admin.listen", c.Admin.Listen, "127.0.0.1:13290"},
		{"push.listen", c.Push.Listen, ":13295"},
		{"proxy.listen", c.Proxy.Listen, ":443"},
		{"proxy.connection_timeout", c.Proxy.ConnectionTimeout.D(), 10 * time.Second},
		{"push.queue_ttl", c.Push.QueueTTL.D(), 24 * time.Hour},
		{"link.limits.loss", c.Link.Limits.Loss, Percent(0.10)},
		{"link.limits.delay", c.Link.Limits.Delay.D(), 100 * time.Millisecond},
		{"wake.listen", c.Wake.Listen, ":15010"},
		{"wake.agent_port", c.Wake.AgentPort, 15000},
		{"wake.shutdown_listen", c.Wake.ShutdownListen, ":13000"},
		{"push.quic", *c.Push.QUIC, true},
		{"proxy enabled", c.ProxyEnabled(), false},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestUnits(t *testing.T) {
	rates := map[string]Rate{"1Gbit": 1e9, "250Mbit": 250e6, "64kbit": 64e3, "off": 0, "1.5gbit": 1.5e9}
	for in, want := range rates {
		var r Rate
		if err := r.UnmarshalText([]byte(in)); err != nil || r != want {
			t.Errorf("Rate(%q) = %d, %v; want %d", in, r, err, want)
		}
		out, _ := r.MarshalText()
		var back Rate
		if err := back.UnmarshalText(out); err != nil || back != r {
			t.Errorf("Rate %d round-trips through %q to %d, %v", r, out, back, err)
		}
	}
	sizes := map[string]Size{"4KiB": 4096, "1MiB": 1 << 20, "512": 512, "64KB": 64000}
	for in, want := range sizes {
		var z Size
		if err := z.UnmarshalText([]byte(in)); err != nil || z != want {
			t.Errorf("Size(%q) = %d, %v; want %d", in, z, err, want)
		}
	}
	pcts := map[string]Percent{"10%": 0.10, "2.5": 0.025, "0%": 0, "100%": 1}
	for in, want := range pcts {
		var p Percent
		if err := p.UnmarshalText([]byte(in)); err != nil || p != want {
			t.Errorf("Percent(%q) = %v, %v; want %v", in, p, err, want)
		}
	}
	for _, bad := range []string{"-1%", "101%", "ten"} {
		var p Percent
		if err := p.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("Percent(%q) accepted, want an error", bad)
		}
	}
}

func TestRelativePathsFollowTheFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "dpgate.yaml")
	os.WriteFile(f, []byte("node:\n  data_dir: state\ntls:\n  cert: gw.pem\n"), 0o644)
	c, err := Load(f)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "state"); c.Node.DataDir != want {
		t.Errorf("data_dir = %s, want %s", c.Node.DataDir, want)
	}
	if want := filepath.Join(dir, "gw.pem"); c.TLS.Cert != want {
		t.Errorf("tls.cert = %s, want %s", c.TLS.Cert, want)
	}
}

// TestExampleConfigs keeps configs/*.yaml loadable, and checks that the
// annotated example mentions every key the loader knows.
func TestExampleConfigs(t *testing.T) {
	for _, f := range []string{"../../configs/dpgate.yaml", "../../configs/minimal.yaml"} {
		if _, err := Load(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	data, err := os.ReadFile("../../configs/dpgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Load("testdata/good/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for key := range c.lines {
		leaf := key[strings.LastIndex(key, ".")+1:]
		leaf, _, _ = strings.Cut(leaf, "[")
		if !strings.Contains(string(data), leaf+":") {
			t.Errorf("configs/dpgate.yaml does not document %s", key)
		}
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*.yaml")
	for _, file := range files {
		data, _ := os.ReadFile(file)
		f.Add(data)
	}
	f.Add([]byte("a: &x [*x]"))
	f.Add([]byte("proxy:\n  upstreams: [{address: 'a:1', pins: [~]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if !IsConfigError(err) {
				t.Fatalf("error is not a *config.Error: %v", err)
			}
			return
		}
		// Whatever is accepted must be complete and valid.
		if c.Push.QUIC == nil || c.Node.Name == "" || c.Proxy.ConnectionTimeout == 0 {
			t.Fatalf("accepted config lacks defaults: %+v", c)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config fails Validate: %v", err)
		}
	})
}

// TestCredentialsDirectory: file names may point into systemd's
// credentials directory (LoadCredential=).
func TestCredentialsDirectory(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/dpgate.service")
	f := filepath.Join(t.TempDir(), "dpgate.yaml")
	os.WriteFile(f, []byte("admin:\n  token_file: ${CREDENTIALS_DIRECTORY}/admin.token\ncluster:\n  bind: 127.0.0.1:7946\n  secret_key_file: $CREDENTIALS_DIRECTORY/gossip.key\n"), 0o644)
	cfg, err := Load(f)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Admin.TokenFile != "/run/credentials/dpgate.service/admin.token" || cfg.Cluster.SecretKeyFile != "/run/credentials/dpgate.service/gossip.key" {
		t.Errorf("token_file %q, secret_key_file %q", cfg.Admin.TokenFile, cfg.Cluster.SecretKeyFile)
	}
}

// TestLaunchdPlist: configs/dpgate-agent.plist is a well-formed property
// list whose program runs "dpgate agent" (launchd ignores a file that
// does not parse; nothing here can check it with plutil).
func TestLaunchdPlist(t *testing.T) {
	b, err := os.ReadFile("../../configs/dpgate-agent.plist")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Dict struct {
			Keys   []string `xml:"key"`
			Arrays []struct {
				Strings []string `xml:"string"`
			} `xml:"array"`
		} `xml:"dict"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("dpgate-agent.plist: %v", err)
	}
	if len(doc.Dict.Arrays) != 1 || len(doc.Dict.Arrays[0].Strings) < 2 || doc.Dict.Arrays[0].Strings[1] != "agent" ||
		!slices.Contains(doc.Dict.Keys, "Label") || !slices.Contains(doc.Dict.Keys, "KeepAlive") {
		t.Errorf("dpgate-agent.plist: keys %v, program %v; want Label, KeepAlive and dpgate agent", doc.Dict.Keys, doc.Dict.Arrays)
	}
}

// TestNamesAtTheirLimits: a node name and a DNS label may be 63
// characters, not 64; a label may not begin or end with a hyphen.
func TestNamesAtTheirLimits(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{strings.Repeat("n", 63), true},
		{"a" + strings.Repeat("-", 61) + "z", true},
		{strings.Repeat("n", 64), false},
		{"-node", false},
		{"node/1", false},
	} {
		cfg := Default()
		cfg.Node.Name = c.name
		if err := cfg.Validate(); (err == nil) != c.ok {
			t.Errorf("node.name of %d characters %q: Validate() = %v, want ok %v", len(c.name), c.name, err, c.ok)
		}
	}
	for _, c := range []struct {
		domain string
		ok     bool
	}{
		{strings.Repeat("l", 63) + ".internal", true},
		{"_svc.a-b.internal.", true},
		{strings.Repeat("l", 64) + ".internal", false},
		{"a-.internal", false},
		{"-a.internal", false},
		{"a..internal", false},
	} {
		if err := checkDomain(c.domain); (err == nil) != c.ok {
			t.Errorf("domain %q: checkDomain = %v, want ok %v", c.domain, err, c.ok)
		}
	}
}
