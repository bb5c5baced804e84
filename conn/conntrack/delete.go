package conntrack

import (
	"errors"
	"fmt"

	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nlsock"
)

// ctnetlink attribute and message numbers (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig  = 1
	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaIPv6Src    = 3
	ctaIPv6Dst    = 4
	ctaProtoNum   = 1
	ctaProtoSrc   = 2
	ctaProtoDst   = 3
	ctaID         = 12
	ctaZone       = 18
	ctMsgDelete   = 2
)

// deleteFlows removes the flows' entries, many requests per sendmsg. Each
// request names the original tuple and the entry id, so an entry that was
// replaced meanwhile is left alone. It returns how many were already gone.
func deleteFlows(ns netns.NsHandle, flows []ct.Flow) (int, error) {
	reqs := make([]nlsock.Request, len(flows))
	for i := range flows {
		body, err := deleteBody(&flows[i])
		if err != nil {
			return 0, err
		}
		reqs[i] = nlsock.Request{Type: uint16(netfilter.NFSubsysCTNetlink)<<8 | ctMsgDelete, Body: body}
	}
	errnos, err := nlsock.PipelineAt(ns, unix.NETLINK_NETFILTER, reqs)
	if err != nil {
		return 0, fmt.Errorf("conntrack: delete entries: %w", err)
	}
	gone := 0
	var errs []error
	for i, e := range errnos {
		switch e {
		case 0:
		case unix.ENOENT:
			gone++
		default:
			errs = append(errs, fmt.Errorf("conntrack: delete entry %d: %w", flows[i].ID, e))
		}
	}
	return gone, errors.Join(errs...)
}

// deleteBody is nfgenmsg + CTA_TUPLE_ORIG + CTA_ID (+ CTA_ZONE).
func deleteBody(f *ct.Flow) ([]byte, error) {
	o := f.TupleOrig
	fam := byte(unix.AF_INET)
	ips := []netfilter.Attribute{
		{Type: ctaIPv4Src, Data: o.IP.SourceAddress.AsSlice()},
		{Type: ctaIPv4Dst, Data: o.IP.DestinationAddress.AsSlice()},
	}
	if o.IP.SourceAddress.Is6() {
		fam = unix.AF_INET6
		ips[0].Type, ips[1].Type = ctaIPv6Src, ctaIPv6Dst
	}
	attrs := []netfilter.Attribute{
		{Type: ctaTupleOrig, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaTupleIP, Nested: true, Children: ips},
			{Type: ctaTupleProto, Nested: true, Children: []netfilter.Attribute{
				{Type: ctaProtoNum, Data: []byte{o.Proto.Protocol}},
				{Type: ctaProtoSrc, Data: netfilter.Uint16Bytes(o.Proto.SourcePort)},
				{Type: ctaProtoDst, Data: netfilter.Uint16Bytes(o.Proto.DestinationPort)},
			}},
		}},
		{Type: ctaID, Data: netfilter.Uint32Bytes(f.ID)},
	}
	if f.Zone != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaZone, Data: netfilter.Uint16Bytes(f.Zone)})
	}
	b, err := netfilter.MarshalAttributes(attrs)
	if err != nil {
		return nil, fmt.Errorf("conntrack: marshal delete of entry %d: %w", f.ID, err)
	}
	// nfgenmsg: family, version 0, res_id 0.
	return append([]byte{fam, 0, 0, 0}, b...), nil
}
