package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dpgate/dpgate/internal/admin"
	"github.com/dpgate/dpgate/internal/config"
	"github.com/dpgate/dpgate/internal/gateway"
	"github.com/dpgate/dpgate/internal/store"
	"github.com/dpgate/dpgate/push/wire"
	"github.com/dpgate/dpgate/tlsconf"
)

const certAbout = `
Manages certificates:

  gen        generate a certificate and key (one PEM file, or two)
  pin        print a certificate's SPKI pin (sha256//<base64>)
  agent-gen  issue an agent certificate as PKCS#12 and allow it
  list       list the agent certificate allow-list
  add        add agent certificates (PEM) to the allow-list
  rm         remove agent certificates from the allow-list

list, add, rm and agent-gen work through the running gateway's admin API,
or directly on the data directory when no gateway runs.`

func runCert(args []string, stdout, stderr io.Writer) error {
	return runSubcommand("cert", certAbout, map[string]func([]string, io.Writer, io.Writer) error{
		"gen": certGen, "pin": certPin, "agent-gen": certAgentGen,
		"list": certList, "add": certAdd, "rm": certRm,
	}, args, stdout, stderr)
}

func certGen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("cert gen", "--cn NAME (--out FILE.pem | --cert-out FILE --key-out FILE)", `
Generates a private key and a self-signed certificate. --out writes one PEM
file with the certificate and then the key (mode 0600), the form central
servers expect; --cert-out and --key-out write two files. The pin is
printed on standard output. Central servers that require keys of 2048 bits
or more take --key rsa-2048 or larger; ecdsa-p256 is the default for the
gateway's own certificate, as it is cheapest per handshake.`, stdout)
	cn := fs.String("cn", "", "certificate common name (required)")
	keyType := fs.String("key", tlsconf.KeyTypes[0], "key type: "+strings.Join(tlsconf.KeyTypes, ", "))
	days := fs.Int("days", 825, "days of validity")
	out := fs.String("out", "", "one PEM `FILE` for certificate and key")
	certOut := fs.String("cert-out", "", "certificate PEM `FILE`")
	keyOut := fs.String("key-out", "", "private key PEM `FILE` (mode 0600)")
	var dnsNames, ips stringList
	fs.Var(&dnsNames, "dns", "DNS subject alternative `NAME` (repeatable)")
	fs.Var(&ips, "ip", "IP subject alternative `ADDRESS` (repeatable)")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	switch {
	case *cn == "":
		return usagef("cert gen: --cn is required")
	case !slices.Contains(tlsconf.KeyTypes, *keyType):
		return usagef("cert gen: --key %q is not one of %s", *keyType, strings.Join(tlsconf.KeyTypes, ", "))
	case *days < 1:
		return usagef("cert gen: --days must be at least 1")
	case *out == "" && (*certOut == "" || *keyOut == ""):
		return usagef("cert gen: give --out, or both --cert-out and --key-out")
	case *out != "" && (*certOut != "" || *keyOut != ""):
		return usagef("cert gen: --out excludes --cert-out and --key-out")
	}
	t := tlsconf.Template{CommonName: *cn, DNSNames: dnsNames, Days: *days, KeyType: *keyType}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return usagef("cert gen: --ip %q is not an IP address", s)
		}
		t.IPs = append(t.IPs, ip)
	}
	certFile, keyFile := *out, *keyOut
	if certFile == "" {
		certFile = *certOut
	}
	if !*force {
		for _, f := range []string{certFile, keyFile} {
			if _, err := os.Stat(f); f != "" && err == nil {
				return fmt.Errorf("%s exists (use --force to overwrite)", f)
			}
		}
	}
	c, err := tlsconf.Issue(t, nil)
	if err != nil {
		return err
	}
	if err := tlsconf.WriteKeyPair(c, certFile, keyFile); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s\n", strings.Join(slices.DeleteFunc([]string{certFile, keyFile}, func(s string) bool { return s == "" }), " and "))
	fmt.Fprintln(stdout, tlsconf.Pin(c.Leaf))
	return nil
}

func certPin(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("cert pin", "FILE", `
Prints the SPKI SHA-256 pin of the first certificate in FILE (PEM, or
PKCS#12 with --password-file), in the form sha256//<base64> that agents,
upstream pins and curl --pinnedpubkey take.`, stdout)
	pwFile := fs.String("password-file", "", "password `FILE` for a PKCS#12 file")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("cert pin takes one FILE")
	}
	data, err := os.ReadFile(pos[0])
	if err != nil {
		return err
	}
	certs, perr := tlsconf.ParseCertificatesPEM(data)
	if perr != nil {
		pw, err := tlsconf.ReadSecretFile(*pwFile)
		if err != nil {
			return err
		}
		c, err := tlsconf.ParsePFX(data, pw)
		if err != nil {
			return fmt.Errorf("%s: neither PEM (%v) nor PKCS#12 (%v)", pos[0], perr, err)
		}
		certs = []*x509.Certificate{c.Leaf}
	}
	fmt.Fprintln(stdout, tlsconf.Pin(certs[0]))
	return nil
}

// certFlags are the flags of the commands that reach the allow-list.
type certFlags struct {
	cfgFile *string
	jsonOut *bool
}

func addCertFlags(fsName, args, about string, stdout io.Writer) (*flag.FlagSet, *certFlags) {
	fs := newFlags(fsName, args, about, stdout)
	cf := &certFlags{
		cfgFile: fs.String("c", "", "configuration `FILE`, for the admin API address, token and data_dir (default: built-in defaults)"),
		jsonOut: fs.Bool("json", false, "print JSON"),
	}
	return fs, cf
}

// allowBackend reaches the allow-list: through the admin API when a gateway
// answers, else offline in the data directory.
type allowBackend struct {
	api     *admin.Client
	dataDir string
	source  string // what do read or changed, for the operator
}

func newAllowBackend(cf *certFlags) (*allowBackend, *config.Config, error) {
	api, cfg, err := adminClient(*cf.cfgFile)
	if err != nil {
		return nil, nil, err
	}
	b := &allowBackend{dataDir: cfg.Node.DataDir}
	if config.Enabled(cfg.Admin.Listen) {
		b.api = api
	}
	return b, cfg, nil
}

// do runs online through the API, or offline on the store when the API is
// unreachable.
func (b *allowBackend) do(online func(*admin.Client) error, offline func(*tlsconf.AllowList) error) error {
	if b.api != nil {
		err := online(b.api)
		if !errors.Is(err, admin.ErrUnreachable) {
			b.source = "the running gateway at " + b.api.Base()
			return err
		}
	}
	b.source = "the data directory " + b.dataDir + " offline (no gateway answered)"
	db, err := store.Open(b.dataDir, store.Options{})
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("the gateway's admin API did not answer and its data directory is locked by a running process: %w", err)
		}
		return err
	}
	defer db.Close()
	allow, err := tlsconf.NewAllowList(db)
	if err != nil {
		return err
	}
	return offline(allow)
}

func certList(args []string, stdout, stderr io.Writer) error {
	fsx, cf := addCertFlags("cert list", "[--fingerprint TEXT] [--serial TEXT] [--json]", `
Lists the agent certificate allow-list, optionally filtered by a part of
the fingerprint or of the serial number (case-insensitive).`, stdout)
	fp := fsx.String("fingerprint", "", "show certificates whose fingerprint contains `TEXT`")
	serial := fsx.String("serial", "", "show certificates whose serial number contains `TEXT`")
	if err := parseNoArgs(fsx, args); err != nil {
		return err
	}
	b, _, err := newAllowBackend(cf)
	if err != nil {
		return err
	}
	var entries []tlsconf.Entry
	err = b.do(func(c *admin.Client) error {
		q := "?fingerprint=" + url.QueryEscape(*fp) + "&serial=" + url.QueryEscape(*serial)
		var reply admin.CertList
		err := c.Do(context.Background(), "GET", "/v1/certs"+q, nil, &reply)
		entries = reply.Certs
		return err
	}, func(a *tlsconf.AllowList) error {
		entries = a.List(tlsconf.Filter{Fingerprint: *fp, Serial: *serial})
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "read from %s\n", b.source)
	if *cf.jsonOut {
		return printJSON(stdout, admin.CertList{Count: len(entries), Certs: entries})
	}
	printEntries(stdout, entries)
	return nil
}

func printEntries(w io.Writer, entries []tlsconf.Entry) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FINGERPRINT (SHA-256)\tSERIAL\tSUBJECT\tNOT AFTER")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Fingerprint, e.Serial, e.Subject, e.NotAfter.Format(time.DateOnly))
	}
	tw.Flush()
}

func certAdd(args []string, stdout, stderr io.Writer) error {
	fsx, cf := addCertFlags("cert add", "FILE.pem...", `
Adds every certificate in the PEM files to the agent certificate allow-list.`, stdout)
	pos, err := parse(fsx, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("cert add needs at least one PEM file")
	}
	var pemData []byte
	var certs []*x509.Certificate
	for _, f := range pos {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		cs, err := tlsconf.ParseCertificatesPEM(data)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		certs = append(certs, cs...)
		pemData = append(pemData, data...)
	}
	b, _, err := newAllowBackend(cf)
	if err != nil {
		return err
	}
	added, err := addCerts(b, pemData, certs)
	if err != nil {
		return err
	}
	if *cf.jsonOut {
		return printJSON(stdout, admin.CertChange{Added: added})
	}
	printEntries(stdout, added)
	return nil
}

func addCerts(b *allowBackend, pemData []byte, certs []*x509.Certificate) ([]tlsconf.Entry, error) {
	var added []tlsconf.Entry
	err := b.do(func(c *admin.Client) error {
		var reply admin.CertChange
		err := c.Do(context.Background(), "POST", "/v1/certs", pemData, &reply)
		added = reply.Added
		return err
	}, func(a *tlsconf.AllowList) error {
		var err error
		added, err = a.Add(certs...)
		return err
	})
	return added, err
}

func certRm(args []string, stdout, stderr io.Writer) error {
	fsx, cf := addCertFlags("cert rm", "FINGERPRINT...", `
Removes certificates from the agent certificate allow-list by SHA-256
fingerprint (hex, with or without colons). Agents using them are refused
from their next handshake on.`, stdout)
	pos, err := parse(fsx, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("cert rm needs at least one fingerprint")
	}
	for _, fp := range pos {
		if h := tlsconf.NormalizeFingerprint(fp); len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
			return usagef("cert rm: %q is not a SHA-256 fingerprint: 64 hex digits, as dpgate cert list prints them", fp)
		}
	}
	b, _, err := newAllowBackend(cf)
	if err != nil {
		return err
	}
	var removed []tlsconf.Entry
	err = b.do(func(c *admin.Client) error {
		var errs []error
		for _, fp := range pos {
			var reply admin.CertChange
			if err := c.Do(context.Background(), "DELETE", "/v1/certs/"+url.PathEscape(tlsconf.NormalizeFingerprint(fp)), nil, &reply); err != nil {
				if errors.Is(err, admin.ErrUnreachable) {
					return err
				}
				errs = append(errs, fmt.Errorf("%s: %w", fp, err))
			}
			removed = append(removed, reply.Removed...)
		}
		return errors.Join(errs...)
	}, func(a *tlsconf.AllowList) error {
		var err error
		removed, err = a.Remove(pos...)
		return err
	})
	if *cf.jsonOut {
		printJSON(stdout, admin.CertChange{Removed: removed})
	} else {
		for _, e := range removed {
			fmt.Fprintf(stdout, "removed %s %s\n", e.Fingerprint, e.Subject)
		}
	}
	return err
}

func certAgentGen(args []string, stdout, stderr io.Writer) error {
	fsx, cf := addCertFlags("cert agent-gen", "--cn DEVICE --out FILE.pfx [--password-file FILE]", `
Issues a client certificate for an agent, signed by the gateway's agent CA
(data_dir/agent-ca.pem, created on first use), writes certificate, key and
CA as PKCS#12 (AES-256, PBKDF2, SHA-256 MAC; mode 0600), and adds the
certificate to the allow-list. The device id is the common name.`, stdout)
	cn := fsx.String("cn", "", "device id, the certificate's common name (required)")
	out := fsx.String("out", "", "PKCS#12 output `FILE` (required)")
	pwFile := fsx.String("password-file", "", "`FILE` holding the PKCS#12 password (default: no password)")
	days := fsx.Int("days", 825, "days of validity")
	keyType := fsx.String("key", tlsconf.KeyTypes[0], "key type: "+strings.Join(tlsconf.KeyTypes, ", "))
	if err := parseNoArgs(fsx, args); err != nil {
		return err
	}
	switch {
	case *cn == "" || *out == "":
		return usagef("cert agent-gen: --cn and --out are required")
	case wire.CheckDeviceID(*cn) != nil:
		return usagef("cert agent-gen: --cn: %v (the agent sends it as its device id; docs/PROTOCOL.md)", wire.CheckDeviceID(*cn))
	case !slices.Contains(tlsconf.KeyTypes, *keyType):
		return usagef("cert agent-gen: --key %q is not one of %s", *keyType, strings.Join(tlsconf.KeyTypes, ", "))
	case *days < 1:
		return usagef("cert agent-gen: --days must be at least 1")
	}
	password, err := tlsconf.ReadSecretFile(*pwFile)
	if err != nil {
		return err
	}
	b, cfg, err := newAllowBackend(cf)
	if err != nil {
		return err
	}
	leaf, pfx, err := gateway.IssueAgentCert(cfg, *cn, tlsconf.Template{Days: *days, KeyType: *keyType}, password)
	if err != nil {
		return err
	}
	if err := tlsconf.WriteFileAtomic(*out, pfx, 0o600); err != nil {
		return err
	}
	added, err := addCerts(b, tlsconf.CertPEM(tls.Certificate{Certificate: [][]byte{leaf.Raw}}), []*x509.Certificate{leaf})
	if err != nil {
		return fmt.Errorf("wrote %s but could not add it to the allow-list: %w", *out, err)
	}
	fmt.Fprintf(stderr, "wrote %s\n", *out)
	if *cf.jsonOut {
		return printJSON(stdout, admin.CertChange{Added: added})
	}
	printEntries(stdout, added)
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
