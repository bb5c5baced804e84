package nft

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables/userdata"

	"github.com/sealift/sealift/fence"
)

// A fence is remembered in the ruleset itself: the first rules of the
// VM's bridge "-fwd" chain carry the Spec as JSON, cut into pieces that
// fit nftables' 255-byte comments ("sealift-fence 0/2 {...").
const (
	tagPrefix = "sealift-fence "
	jumpTag   = "sealift-jump "
	chunkLen  = 200
)

// record is the Spec as stored in the ruleset.
type record struct {
	VM         string         `json:"vm"`
	Port       string         `json:"port"`
	MAC        string         `json:"mac,omitempty"`
	Addrs      []netip.Addr   `json:"addrs,omitempty"`
	AllowVia   []string       `json:"via,omitempty"`
	AllowMarks []uint32       `json:"marks,omitempty"`
	Peers      []netip.Prefix `json:"peers,omitempty"`
	AllowIPsec bool           `json:"ipsec,omitempty"`
	Hold       uint16         `json:"hold,omitempty"` // the log group (Spec.Hold)
	Since      int64          `json:"since"`          // unix nanoseconds
}

func recordOf(s fence.Spec, since time.Time, group uint16) record {
	return record{VM: s.VM, Port: s.Port, MAC: s.MAC, Addrs: s.Addrs, AllowVia: s.AllowVia,
		AllowMarks: s.AllowMarks, Peers: s.Peers, AllowIPsec: s.AllowIPsec, Hold: group, Since: since.UnixNano()}
}

func (r record) fence() fence.Fence {
	return fence.Fence{
		Spec: fence.Spec{VM: r.VM, Port: r.Port, MAC: r.MAC, Addrs: r.Addrs,
			AllowVia: r.AllowVia, AllowMarks: r.AllowMarks, Peers: r.Peers, AllowIPsec: r.AllowIPsec, Hold: r.Hold != 0},
		Backend: "nft",
		Since:   time.Unix(0, r.Since),
	}
}

// chainID derives the VM's chain name stem: VM names are free-form, chain
// names should be short and plain.
func chainID(vm string) string {
	h := sha256.Sum256([]byte(vm))
	return "vm-" + hex.EncodeToString(h[:8])
}

// tagComments cuts the record into comments.
func tagComments(r record) ([][]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	n := (len(b) + chunkLen - 1) / chunkLen
	out := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		part := b[i*chunkLen : min(len(b), (i+1)*chunkLen)]
		c := fmt.Sprintf("%s%d/%d %s", tagPrefix, i, n, part)
		out = append(out, userdata.AppendString(nil, userdata.TypeComment, c))
	}
	return out, nil
}

// comment returns the rule's nft comment ("" if none). It does not trust
// the TLV lengths (userdata.Get does).
func comment(ud []byte) string {
	for len(ud) >= 2 {
		typ, n := userdata.Type(ud[0]), int(ud[1])
		if len(ud) < 2+n {
			return ""
		}
		if typ == userdata.TypeComment {
			return strings.TrimSuffix(string(ud[2:2+n]), "\x00")
		}
		ud = ud[2+n:]
	}
	return ""
}

// parseTags joins the tag comments of one chain back into a record.
func parseTags(comments []string) (record, bool, error) {
	type piece struct {
		i    int
		data string
	}
	var pieces []piece
	total := -1
	for _, c := range comments {
		rest, ok := strings.CutPrefix(c, tagPrefix)
		if !ok {
			continue
		}
		pos, data, ok := strings.Cut(rest, " ")
		is, ns, ok2 := strings.Cut(pos, "/")
		if !ok || !ok2 {
			return record{}, true, fmt.Errorf("bad fence tag %q", c)
		}
		i, err1 := strconv.Atoi(is)
		n, err2 := strconv.Atoi(ns)
		if err1 != nil || err2 != nil || (total >= 0 && n != total) {
			return record{}, true, fmt.Errorf("bad fence tag %q", c)
		}
		total = n
		pieces = append(pieces, piece{i, data})
	}
	if total < 0 {
		return record{}, false, nil
	}
	if len(pieces) != total {
		return record{}, true, fmt.Errorf("fence tag has %d of %d pieces", len(pieces), total)
	}
	sort.Slice(pieces, func(a, b int) bool { return pieces[a].i < pieces[b].i })
	var sb strings.Builder
	for k, p := range pieces {
		if p.i != k {
			return record{}, true, fmt.Errorf("fence tag piece %d missing", k)
		}
		sb.WriteString(p.data)
	}
	var r record
	if err := json.Unmarshal([]byte(sb.String()), &r); err != nil {
		return record{}, true, fmt.Errorf("fence tag: %w", err)
	}
	return r, true, nil
}
