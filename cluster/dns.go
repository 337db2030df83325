package cluster

import (
	"net"
	"strconv"
	"strings"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dpgate/dpgate/internal/series"
)

// DNS answers for the push service under a domain (cluster.dns.domain):
//
//	<domain>                    SOA     the zone's apex
//	push.<domain>               A/AAAA  push addresses, least loaded first, each once
//	_dpgate-push._tcp.<domain>  SRV     one per node, weight by spare capacity
//	<node>.node.<domain>        A/AAAA  one node
//
// TTLs are 5 seconds: the answer follows the load. Names outside the
// domain are refused; names in it that exist without records of the type
// asked (the apex, _tcp.<domain>, node.<domain>, push.<domain> for SRV)
// get NOERROR with the SOA, so a resolver never caches the zone as gone;
// other names get NXDOMAIN with the SOA. UDP answers fit 512 bytes, or
// the client's EDNS buffer capped at 1,232 (the DNS flag day size):
// what does not fit is left out with TC set, and the client retries over
// TCP. That bounds what a spoofed query can make us send; an ANY query
// over UDP gets no records at all, only TC (RFC 8482).
type DNS struct {
	c      *Cluster
	domain string
	TTL    uint32

	responses *prometheus.CounterVec
	truncated prometheus.Counter
}

// MaxUDPSize caps a UDP answer whatever EDNS buffer the client offers.
const MaxUDPSize = 1232

// NewDNS serves the cluster's view; it does not listen. Its series go to
// the cluster's registry.
func NewDNS(c *Cluster, domain string) *DNS {
	s := series.On(c.cfg.Registerer)
	return &DNS{c: c, domain: dns.Fqdn(strings.ToLower(domain)), TTL: 5,
		responses: s.CounterVec("dpgate_dns_responses_total",
			"DNS answers by transport and response code: REFUSED for a name outside cluster.dns.domain, NXDOMAIN for an unknown name in it, FORMERR and NOTIMP for malformed queries and other opcodes.",
			[]string{"proto", "rcode"}, []string{"udp", "tcp"}, []string{"NOERROR", "NXDOMAIN", "REFUSED", "FORMERR", "NOTIMP", "BADVERS"}),
		truncated: s.Counter("dpgate_dns_truncated_total",
			"UDP answers cut to fit 512 bytes or the client's EDNS buffer (TC set: the client asks again over TCP)."),
	}
}

// ServeUDP answers on pc until it is closed.
func (d *DNS) ServeUDP(pc net.PacketConn) error {
	return (&dns.Server{PacketConn: pc, Handler: d, MsgAcceptFunc: d.accept("udp")}).ActivateAndServe()
}

// ServeTCP answers on ln until it is closed.
func (d *DNS) ServeTCP(ln net.Listener) error {
	return (&dns.Server{Listener: ln, Handler: d, MsgAcceptFunc: d.accept("tcp")}).ActivateAndServe()
}

// accept is miekg/dns's check of a query's header, counting the queries
// it answers itself (FORMERR, NOTIMP) before they reach ServeDNS.
func (d *DNS) accept(proto string) dns.MsgAcceptFunc {
	return func(h dns.Header) dns.MsgAcceptAction {
		action := dns.DefaultMsgAcceptFunc(h)
		switch action {
		case dns.MsgReject:
			d.responses.WithLabelValues(proto, "FORMERR").Inc()
		case dns.MsgRejectNotImplemented:
			d.responses.WithLabelValues(proto, "NOTIMP").Inc()
		}
		return action
	}
}

// ServeDNS implements dns.Handler.
func (d *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	var resp *dns.Msg
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		// RFC 6891 section 6.1.3: a version we do not speak is answered
		// BADVERS, with our OPT (version 0), so the client may retry.
		resp = new(dns.Msg).SetRcode(req, dns.RcodeBadVers)
	} else {
		resp = d.answer(req)
	}
	size, proto := dns.MaxMsgSize, "tcp"
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size, proto = dns.MinMsgSize, "udp"
		if opt := req.IsEdns0(); opt != nil {
			size = min(max(int(opt.UDPSize()), dns.MinMsgSize), MaxUDPSize)
		}
		if len(req.Question) == 1 && req.Question[0].Qtype == dns.TypeANY && resp.Rcode == dns.RcodeSuccess {
			// RFC 8482: no full answer to ANY over UDP, the query type of
			// reflection attacks (a few bytes in, every record out). TC
			// sends a real resolver to TCP, which a spoofed source cannot.
			resp.Answer, resp.Ns, resp.Extra = nil, nil, nil
			resp.Truncated = true
		}
	}
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(uint16(min(size, MaxUDPSize)), false) // RFC 6891: answer EDNS with EDNS
	}
	resp.Truncate(size)
	if resp.Truncated {
		d.truncated.Inc()
	}
	d.responses.WithLabelValues(proto, dns.RcodeToString[resp.Rcode]).Inc()
	w.WriteMsg(resp)
}

// answer is the reply to req, before it is fitted to the transport.
func (d *DNS) answer(req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Compress = true
	if len(req.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		return resp
	}
	resp.Authoritative = true
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(d.domain, name) {
		resp.Rcode = dns.RcodeRefused
		resp.Authoritative = false
		return resp
	}
	members := d.c.pushable() // least loaded first
	exists := false
	switch {
	case name == d.domain:
		exists = true
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			resp.Answer = append(resp.Answer, d.soa())
		}
	case name == "_tcp."+d.domain, name == "node."+d.domain:
		exists = true // empty non-terminals: names below them have records
	case name == "push."+d.domain:
		exists = true
		// Nodes on one host share its address: each address once (RFC
		// 2181 section 5), at the place of its least loaded node.
		seen := map[string]bool{}
		for _, m := range members {
			for _, rr := range d.addr(name, q.Qtype, m) {
				if a := rr.String(); !seen[a] {
					seen[a] = true
					resp.Answer = append(resp.Answer, rr)
				}
			}
		}
	case name == "_dpgate-push._tcp."+d.domain:
		exists = true
		if q.Qtype == dns.TypeSRV || q.Qtype == dns.TypeANY {
			for _, m := range members {
				_, port, _ := net.SplitHostPort(m.Meta.Push)
				p, _ := strconv.Atoi(port)
				target := dns.Fqdn(m.Name + ".node." + d.domain)
				resp.Answer = append(resp.Answer, &dns.SRV{
					Hdr:      dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: d.TTL},
					Priority: 10,
					Weight:   uint16(min(65535, max(1, m.Meta.Spare()))),
					Port:     uint16(p),
					Target:   target,
				})
				resp.Extra = append(resp.Extra, d.addr(target, dns.TypeA, m)...)
				resp.Extra = append(resp.Extra, d.addr(target, dns.TypeAAAA, m)...)
			}
		}
	case strings.HasSuffix(name, ".node."+d.domain):
		node := strings.TrimSuffix(name, ".node."+d.domain)
		for _, m := range members {
			if strings.EqualFold(m.Name, node) {
				exists = true
				resp.Answer = append(resp.Answer, d.addr(name, q.Qtype, m)...)
			}
		}
	}
	if !exists {
		resp.Rcode = dns.RcodeNameError
	}
	if len(resp.Answer) == 0 { // NXDOMAIN or NODATA: the SOA, for negative caching (RFC 2308)
		resp.Ns = append(resp.Ns, d.soa())
	}
	return resp
}

// addr is the A or AAAA record of a member's push address, if it has one
// of that family.
func (d *DNS) addr(name string, qtype uint16, m Member) []dns.RR {
	host, _, err := net.SplitHostPort(m.Meta.Push)
	if err != nil {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil
	}
	hdr := dns.RR_Header{Name: name, Class: dns.ClassINET, Ttl: d.TTL}
	if v4 := ip.To4(); v4 != nil && (qtype == dns.TypeA || qtype == dns.TypeANY) {
		hdr.Rrtype = dns.TypeA
		return []dns.RR{&dns.A{Hdr: hdr, A: v4}}
	}
	if ip.To4() == nil && (qtype == dns.TypeAAAA || qtype == dns.TypeANY) {
		hdr.Rrtype = dns.TypeAAAA
		return []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: ip}}
	}
	return nil
}

func (d *DNS) soa() dns.RR {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: d.domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: d.TTL},
		Ns:  "ns." + d.domain, Mbox: "hostmaster." + d.domain,
		Serial: 1, Refresh: 60, Retry: 10, Expire: 600, Minttl: d.TTL,
	}
}
