package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/sealift/sealift/routing/gobgp"
)

// config is what the flags say.
type config struct {
	listen                    string
	metricsListen             string // "": no metrics
	caFile, certFile, keyFile string
	netns                     string
	hypervisor                string // none, qemu, libvirt
	qemuDir, qemuTLS          string
	qemuMigAddr               string
	libvirtURI                string
	fence                     string // none, nft, linkstate
	conn                      string // none, conntrack, sockdiag
	routing                   string // none, netlinkroute, gobgp
	bgp                       bgpConfig
	link                      string // none, wireguard
	stateDir                  string
	version                   bool
}

// usageError is a bad flag or value (exit status 2).
type usageError string

func (e usageError) Error() string { return string(e) }

func usagef(format string, args ...any) error { return usageError(fmt.Sprintf(format, args...)) }

const usageHeader = `Usage: sealift-agent -listen ADDR -ca FILE -cert FILE -key FILE [flags]

sealift-agent serves this host's sealift backends to the controller over
gRPC with mutual TLS 1.3 only: it presents -cert (an agent certificate)
and accepts only clients whose certificate carries the controller role
and is signed by -ca. There is no plaintext mode.

On start it lists what a previous run left in the kernel (fences, and
redirect routes with -routing netlinkroute) and serves it as it is.
SIGINT or SIGTERM stop it gracefully (calls in flight finish). Logs are
JSON lines on stderr.

-link wireguard serves this host's WireGuard link ends (keys made here,
only public keys leave; the controller pairs two hosts' ends); -link ipsec
its XFRM ends (an X25519 key pair per end; each host derives the SA keys
itself, which never leave it; the kernel needs ESP); -link wireguard,ipsec
both. Ends are recorded under -state-dir (never a key): a restarted agent
lists them and removes what they installed on Close (a wireguard-go device
dies with the agent).

-metrics-listen serves Prometheus metrics at /metrics over plain HTTP:
call latency by method, fences, link ends, each active end's byte counters
and last handshake, and the Go runtime's. They hold no key or secret, but
they describe this host: bind a management address.

Flags:
`

// parseFlags parses args. Errors: flag.ErrHelp for -help, a usageError
// naming the flag and the value, or the flag package's own error (which
// it has printed to out, with the usage).
func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("sealift-agent", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHeader)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.listen, "listen", "", "`ADDR` (HOST:PORT) the agent listens on for the controller (required)")
	fs.StringVar(&c.metricsListen, "metrics-listen", "", "`ADDR` (HOST:PORT) to serve Prometheus metrics on, at /metrics, over plain HTTP (\"\": off; no secrets, but bind a management address)")
	fs.StringVar(&c.caFile, "ca", "", "PEM `FILE` of the CA that signs controller certificates (required)")
	fs.StringVar(&c.certFile, "cert", "", "PEM `FILE` of the agent's certificate (role agent; required)")
	fs.StringVar(&c.keyFile, "key", "", "PEM `FILE` of the agent certificate's private key (required)")
	fs.StringVar(&c.netns, "netns", "", "`NAME` of the network namespace the backends act in, as ip netns names it (\"\": the agent's own)")
	fs.StringVar(&c.hypervisor, "hypervisor", "none", "hypervisor `BACKEND`: none, qemu or libvirt")
	fs.StringVar(&c.qemuDir, "qemu-dir", "", "`DIR` for QEMU's sockets, logs and serial files (-hypervisor qemu; default <state-dir>/qemu)")
	fs.StringVar(&c.qemuTLS, "qemu-tls", "", "`DIR` of the X.509 credentials that make migration streams TLS, laid out as package migtls says (-hypervisor qemu; \"\": plain TCP)")
	fs.StringVar(&c.qemuMigAddr, "qemu-migration-addr", "", "`ADDR` this host receives migration streams on (-hypervisor qemu; \"\": the first IPv4 address of the interface holding the default route)")
	fs.StringVar(&c.libvirtURI, "libvirt-uri", "", "`URI` of the libvirt daemon, e.g. qemu:///system (required with -hypervisor libvirt; -netns does not apply to it)")
	fs.StringVar(&c.fence, "fence", "nft", "fence `BACKEND`: none, nft or linkstate")
	fs.StringVar(&c.conn, "conn", "conntrack", "connection auditor `BACKEND`: none, conntrack or sockdiag")
	fs.StringVar(&c.routing, "routing", "none", "routing `BACKEND`: none, netlinkroute (the kernel's routing table in -netns) or gobgp (a BGP speaker in this process, -bgp-*)")
	fs.StringVar(&c.bgp.as, "bgp-as", "", "`ASN` of the agent's BGP speaker (-routing gobgp)")
	fs.StringVar(&c.bgp.routerID, "bgp-router-id", "", "IPv4 `ADDR`: the speaker's router ID (-routing gobgp)")
	fs.StringVar(&c.bgp.listen, "bgp-listen", "", "comma-separated `ADDRS` the speaker accepts sessions on (\"\": every address)")
	fs.StringVar(&c.bgp.neighbors, "bgp-neighbors", "", "comma-separated `ADDR=ASN` of the speaker's peers; the speaker dials them from -netns (it runs in this process: start the agent inside the namespace, or they are passive)")
	fs.IntVar(&c.bgp.fibMetric, "bgp-fib-metric", 0, "install the speaker's best paths in the kernel's table with this `METRIC` (0: do not; a core without zebra)")
	fs.StringVar(&c.link, "link", "none", "link ends `BACKENDS`: none, wireguard (kernel device where the kernel has one, else wireguard-go in this process), ipsec (XFRM; the kernel needs ESP), or wireguard,ipsec")
	fs.StringVar(&c.stateDir, "state-dir", "/var/lib/sealift-agent", "state `DIR` (created 0700 if missing; the qemu backend's default home)")
	fs.BoolVar(&c.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, usagef("unexpected argument %q (flags only)", fs.Arg(0))
	}
	if c.version {
		return c, nil
	}
	return c, c.check()
}

// check validates the values (not the files: serve reads them).
func (c config) check() error {
	for _, r := range []struct{ flag, val string }{
		{"listen", c.listen}, {"ca", c.caFile}, {"cert", c.certFile}, {"key", c.keyFile},
	} {
		if r.val == "" {
			return usagef("-%s is required (mutual TLS only: -listen, -ca, -cert and -key)", r.flag)
		}
	}
	if err := checkListen("listen", c.listen); err != nil {
		return err
	}
	if c.metricsListen != "" {
		if err := checkListen("metrics-listen", c.metricsListen); err != nil {
			return err
		}
		if c.metricsListen == c.listen {
			return usagef("-metrics-listen %q: the same address as -listen (metrics are plain HTTP, the agent mutual TLS)", c.metricsListen)
		}
	}
	for _, ch := range []struct {
		flag, val string
		want      []string
	}{
		{"hypervisor", c.hypervisor, []string{"none", "qemu", "libvirt"}},
		{"fence", c.fence, []string{"none", "nft", "linkstate"}},
		{"conn", c.conn, []string{"none", "conntrack", "sockdiag"}},
		{"routing", c.routing, []string{"none", "netlinkroute", "gobgp"}},
		{"link", c.link, []string{"none", "wireguard", "ipsec", "wireguard,ipsec", "ipsec,wireguard"}},
	} {
		if err := oneOf(ch.flag, ch.val, ch.want...); err != nil {
			return err
		}
	}
	if c.hypervisor != "qemu" && c.qemuDir != "" {
		return usagef("-qemu-dir %q: only with -hypervisor qemu", c.qemuDir)
	}
	if c.hypervisor != "qemu" && c.qemuTLS != "" {
		return usagef("-qemu-tls %q: only with -hypervisor qemu", c.qemuTLS)
	}
	if c.qemuMigAddr != "" {
		if c.hypervisor != "qemu" {
			return usagef("-qemu-migration-addr %q: only with -hypervisor qemu", c.qemuMigAddr)
		}
		if _, err := netip.ParseAddr(c.qemuMigAddr); err != nil {
			return usagef("-qemu-migration-addr %q: not an IP address", c.qemuMigAddr)
		}
	}
	if err := c.checkBGP(); err != nil {
		return err
	}
	if c.hypervisor != "libvirt" && c.libvirtURI != "" {
		return usagef("-libvirt-uri %q: only with -hypervisor libvirt", c.libvirtURI)
	}
	if c.hypervisor == "libvirt" && c.libvirtURI == "" {
		return usagef("-libvirt-uri is required with -hypervisor libvirt")
	}
	if c.hypervisor == "libvirt" && !libvirtBuilt {
		return usagef("-hypervisor %q: this binary was built without libvirt (cgo disabled or tag nolibvirt)", c.hypervisor)
	}
	if c.stateDir == "" {
		return usagef("-state-dir is empty")
	}
	return nil
}

// checkListen wants HOST:PORT (HOST may be empty: every address) for
// the flag -name.
func checkListen(name, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return usagef("-%s %q: want HOST:PORT", name, addr)
	}
	return nil
}

// oneOf checks that val is one of want, e.g. `-fence "nftx": want none,
// nft or linkstate`.
func oneOf(flag, val string, want ...string) error {
	for _, w := range want {
		if val == w {
			return nil
		}
	}
	list := strings.Join(want[:len(want)-1], ", ") + " or " + want[len(want)-1]
	return usagef("-%s %q: want %s", flag, val, list)
}

// bgpConfig is -routing gobgp's speaker, as the flags say.
type bgpConfig struct {
	as, routerID, listen, neighbors string
	fibMetric                       int
}

// speaker parses the -bgp-* flags (each error names its flag and value).
func (b bgpConfig) speaker() (gobgp.Speaker, error) {
	var sp gobgp.Speaker
	as, err := strconv.ParseUint(b.as, 10, 32)
	if err != nil || as == 0 {
		return sp, usagef("-bgp-as %q: want an AS number (1-4294967295)", b.as)
	}
	sp.AS = uint32(as)
	if sp.RouterID, err = netip.ParseAddr(b.routerID); err != nil || !sp.RouterID.Is4() {
		return sp, usagef("-bgp-router-id %q: want an IPv4 address", b.routerID)
	}
	for _, f := range splitList(b.listen) {
		a, err := netip.ParseAddr(f)
		if err != nil {
			return sp, usagef("-bgp-listen %q: %q is not an IP address", b.listen, f)
		}
		sp.ListenAddrs = append(sp.ListenAddrs, a)
	}
	for _, f := range splitList(b.neighbors) {
		addr, asn, ok := strings.Cut(f, "=")
		a, err := netip.ParseAddr(addr)
		n, nerr := strconv.ParseUint(asn, 10, 32)
		if !ok || err != nil || nerr != nil || n == 0 {
			return sp, usagef("-bgp-neighbors %q: %q: want ADDR=ASN", b.neighbors, f)
		}
		sp.Neighbors = append(sp.Neighbors, gobgp.Neighbor{Address: a, AS: uint32(n)})
	}
	if err := sp.Validate(); err != nil {
		return sp, usagef("-bgp-*: %v", err)
	}
	return sp, nil
}

// checkBGP: the -bgp-* flags go with -routing gobgp, which needs them.
func (c config) checkBGP() error {
	if c.routing != "gobgp" {
		for _, f := range []struct{ flag, val string }{{"bgp-as", c.bgp.as}, {"bgp-router-id", c.bgp.routerID},
			{"bgp-listen", c.bgp.listen}, {"bgp-neighbors", c.bgp.neighbors}} {
			if f.val != "" {
				return usagef("-%s %q: only with -routing gobgp", f.flag, f.val)
			}
		}
		if c.bgp.fibMetric != 0 {
			return usagef("-bgp-fib-metric %d: only with -routing gobgp", c.bgp.fibMetric)
		}
		return nil
	}
	if c.bgp.fibMetric < 0 {
		return usagef("-bgp-fib-metric %d: want 0 (off) or a route metric", c.bgp.fibMetric)
	}
	_, err := c.bgp.speaker()
	return err
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
