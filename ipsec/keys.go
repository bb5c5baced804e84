package ipsec

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/fnv"

	"github.com/vishvananda/netlink"
)

// Algorithm is the ESP transform of a link.
type Algorithm int

const (
	// AESGCM is AEAD rfc4106(gcm(aes)): AES-256 plus a 32-bit salt, 128-bit ICV.
	AESGCM Algorithm = iota
	// AESCBCHMACSHA256 is cbc(aes) (AES-256) with hmac(sha256) truncated to 128 bits.
	AESCBCHMACSHA256
)

// String names the algorithm as the kernel does.
func (a Algorithm) String() string {
	switch a {
	case AESGCM:
		return "rfc4106(gcm(aes)) icv 128"
	case AESCBCHMACSHA256:
		return "cbc(aes) + hmac(sha256) trunc 128"
	}
	return fmt.Sprintf("algorithm(%d)", int(a))
}

// dirKeys is the key material of one direction.
type dirKeys struct {
	aead, crypt, auth []byte
}

// keySet holds both directions' keys (index: secureToRemote, remoteToSecure).
type keySet [2]dirKeys

const (
	secureToRemote = 0
	remoteToSecure = 1
)

// newKeys draws fresh keys for both directions from crypto/rand.
func newKeys(a Algorithm) (keySet, error) {
	var ks keySet
	for d := range ks {
		switch a {
		case AESGCM:
			ks[d].aead = make([]byte, 32+4)
			if _, err := rand.Read(ks[d].aead); err != nil {
				return ks, fmt.Errorf("ipsec: keys: %w", err)
			}
		case AESCBCHMACSHA256:
			ks[d].crypt, ks[d].auth = make([]byte, 32), make([]byte, 32)
			if _, err := rand.Read(ks[d].crypt); err != nil {
				return ks, fmt.Errorf("ipsec: keys: %w", err)
			}
			if _, err := rand.Read(ks[d].auth); err != nil {
				return ks, fmt.Errorf("ipsec: keys: %w", err)
			}
		default:
			return ks, fmt.Errorf("%w: algorithm %d", errInvalid, int(a))
		}
	}
	return ks, nil
}

// apply puts the algorithm and keys of k into st.
func (a Algorithm) apply(st *netlink.XfrmState, k dirKeys) {
	switch a {
	case AESGCM:
		st.Aead = &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: k.aead, ICVLen: 128}
	case AESCBCHMACSHA256:
		st.Crypt = &netlink.XfrmStateAlgo{Name: "cbc(aes)", Key: k.crypt}
		st.Auth = &netlink.XfrmStateAlgo{Name: "hmac(sha256)", Key: k.auth, TruncateLen: 128}
	}
}

// newSPI draws a random SPI outside the reserved range 0-255.
func newSPI() (uint32, error) {
	var b [4]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("ipsec: spi: %w", err)
		}
		if v := binary.BigEndian.Uint32(b[:]); v > 0xff {
			return v, nil
		}
	}
}

// reqidTag marks sealift's reqids: the top byte of every reqid it uses.
const reqidTag = 0x5e

// ReqID is the XFRM reqid of link id: 0x5e in the top byte and a 24-bit
// FNV-1a hash of the ID below. It tags the link's SAs and every policy
// template, which is how Close finds exactly this link's objects. Prepare
// refuses an ID whose reqid is already in use at either end.
func ReqID(id string) uint32 {
	h := fnv.New32a()
	h.Write([]byte("sealift/ipsec/" + id))
	return reqidTag<<24 | h.Sum32()&0xffffff
}

// isOurs reports whether reqid carries sealift's tag.
func isOurs(reqid int) bool { return uint32(reqid)>>24 == reqidTag }
