package lab

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// PathCounts are a flow's packets that a host forwarded, split by the
// way they took: through one of the secure devices (in or out), or not.
type PathCounts struct {
	ViaSecure, Other uint64
}

// Secure reports whether the flow was seen and only ever took a secure
// device: judged by the packets' real path, not by any policy.
func (c PathCounts) Secure() bool { return c.ViaSecure > 0 && c.Other == 0 }

// PathWatch counts one TCP flow's packets (both directions) at a host's
// forward hook with nftables counters, split by device.
type PathWatch struct {
	ns, table string
}

// WatchPath starts counting, in ns, the packets of the TCP flow between
// a and b that the host forwards, and whether each entered or left
// through one of secure.
func WatchPath(ns string, a, b netip.AddrPort, secure []string) (*PathWatch, error) {
	fam := "ip"
	if a.Addr().Is6() {
		fam = "ip6"
	}
	var matches [2]string
	for i, d := range [][2]netip.AddrPort{{a, b}, {b, a}} {
		matches[i] = fmt.Sprintf("%s saddr %s tcp sport %d %s daddr %s tcp dport %d", fam, d[0].Addr(), d[0].Port(), fam, d[1].Addr(), d[1].Port())
	}
	return watchPath(ns, matches, secure)
}

// WatchEcho is WatchPath for the ICMP (ICMPv6) echo requests and
// replies between a and b: a ping's real path through the host.
func WatchEcho(ns string, a, b netip.Addr, secure []string) (*PathWatch, error) {
	fam, l4 := "ip", "icmp type { echo-request, echo-reply }"
	if a.Is6() {
		fam, l4 = "ip6", "icmpv6 type { echo-request, echo-reply }"
	}
	var matches [2]string
	for i, d := range [][2]netip.Addr{{a, b}, {b, a}} {
		matches[i] = fmt.Sprintf("%s saddr %s %s daddr %s %s", fam, d[0], fam, d[1], l4)
	}
	return watchPath(ns, matches, secure)
}

// watchPath counts, per direction's match, the forwarded packets that
// entered or left through one of secure, and the others.
func watchPath(ns string, matches [2]string, secure []string) (*PathWatch, error) {
	if len(secure) == 0 {
		return nil, fmt.Errorf("lab: WatchPath: no secure device")
	}
	devs := `"` + strings.Join(secure, `", "`) + `"`
	w := &PathWatch{ns: ns, table: "lab_path_" + NewPrefix()}
	var rules []string
	for _, m := range matches {
		rules = append(rules,
			fmt.Sprintf("add rule inet %s path %s iifname { %s } counter accept", w.table, m, devs),
			fmt.Sprintf("add rule inet %s path %s oifname { %s } counter accept", w.table, m, devs),
			fmt.Sprintf("add rule inet %s path %s counter", w.table, m))
	}
	script := fmt.Sprintf("add table inet %s; add chain inet %s path { type filter hook forward priority -400; policy accept; }; %s",
		w.table, w.table, strings.Join(rules, "; "))
	if _, err := Exec(ns, "nft", script); err != nil {
		return nil, err
	}
	return w, nil
}

var counterRE = regexp.MustCompile(`counter packets (\d+) bytes`)

// Counts reads the counters.
func (w *PathWatch) Counts() (PathCounts, error) {
	out, err := Exec(w.ns, "nft", "list", "table", "inet", w.table)
	if err != nil {
		return PathCounts{}, err
	}
	ms := counterRE.FindAllSubmatch(out, -1)
	if len(ms) != 6 {
		return PathCounts{}, fmt.Errorf("lab: %d counters in %s, want 6:\n%s", len(ms), w.table, out)
	}
	var c PathCounts
	for i, m := range ms {
		n, _ := strconv.ParseUint(string(m[1]), 10, 64)
		if i%3 == 2 {
			c.Other += n
		} else {
			c.ViaSecure += n
		}
	}
	return c, nil
}

// Close removes the counters.
func (w *PathWatch) Close() error {
	_, err := Exec(w.ns, "nft", "delete", "table", "inet", w.table)
	return err
}
