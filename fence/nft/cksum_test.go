package nft

import (
	"encoding/binary"
	"encoding/hex"
	"testing"
)

// TestFixChecksum: a logged copy of a locally sent UDP/TCP packet with
// only the pseudo-header sum (CHECKSUM_PARTIAL) gets a valid checksum,
// IPv4 and IPv6; a valid one stays as it is.
func TestFixChecksum(t *testing.T) {
	for _, h := range []string{
		// IPv4 UDP to 10.1.0.10:9999, "bridged4-0", partial checksum 0x1443.
		"450000266b48400040116f5f0a0100140a01000a8813270f001214436272696467656434" + "2d30",
		// IPv6 UDP fd00:1::20 -> fd00:1::10:9999, "bridged6-0", partial checksum 0xfa56.
		"6004a38600121140fd000001000000000000000000000020fd00000100000000000000000000001087dd270f0012fa56627269646765643" + "62d30",
	} {
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		fixChecksum(b)
		if !validL4(b) {
			t.Errorf("checksum still wrong: %x", b)
		}
		before := append([]byte(nil), b...)
		fixChecksum(b)
		if string(before) != string(b) {
			t.Errorf("a valid checksum changed: %x -> %x", before, b)
		}
	}
}

// validL4 verifies the UDP/TCP checksum of an IPv4 or IPv6 packet.
func validL4(b []byte) bool {
	var pseudo, l4 []byte
	if b[0]>>4 == 4 {
		ihl := int(b[0]&0xf) * 4
		l4 = b[ihl:binary.BigEndian.Uint16(b[2:4])]
		pseudo = append(append([]byte{}, b[12:20]...), 0, b[9], byte(len(l4)>>8), byte(len(l4)))
	} else {
		l4 = b[40 : 40+int(binary.BigEndian.Uint16(b[4:6]))]
		pseudo = append(append([]byte{}, b[8:40]...), 0, 0, byte(len(l4)>>8), byte(len(l4)), 0, 0, 0, b[6])
	}
	return onesSum(onesSum(0, pseudo), l4) == 0xffff
}
