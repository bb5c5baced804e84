package ipsec

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"

	"github.com/sealift/sealift/tunnel"
)

// An End's SA keys are never made in one place and sent to the other:
// each end makes an X25519 key pair (crypto/ecdh), the ends exchange the
// public keys (tunnel.Public), and each computes the same shared secret
// and derives from it, with HKDF-SHA256, per direction the
// rfc4106(gcm(aes)) key (32 bytes), its 4-byte salt and the SPI:
//
//	secret: X25519(own private key, other end's public key)
//	salt:   the Secure end's public key || the Remote end's public key
//	info:   deriveLabel 0x00 link ID 0x00 direction ("secure->remote" or
//	        "remote->secure")
//	output: 40 bytes = key (32) || salt (4) || SPI (4)
//
// The link ID and the direction in info keep two links, or a link's two
// directions, from sharing a key even with the same key pairs; the
// public keys in salt bind the keys to this exchange. The SPI's top two
// bits are fixed: 01 for secure->remote, 11 for remote->secure, so the
// SPIs are never in the reserved range 0-255, the two directions' SPIs
// always differ, and an end's out policy tells its role (spiRole).
const deriveLabel = "sealift/ipsec/xfrm-end/v1"

// keyLen is the length of an X25519 key.
const keyLen = 32

// dirName names direction d in HKDF's info and in messages.
func dirName(d int) string {
	if d == secureToRemote {
		return "secure->remote"
	}
	return "remote->secure"
}

// spiDirBits are the fixed top bits of a derived SPI of direction d.
func spiDirBits(d int) uint32 {
	if d == secureToRemote {
		return 0x40000000
	}
	return 0xc0000000
}

// spiRole returns the role of the end whose out policy names spi, if
// spi has the form of a derived SPI (or the placeholder of an end not
// yet connected, spiDirBits of its direction).
func spiRole(spi uint32) (tunnel.Role, bool) {
	switch spi & 0xc0000000 {
	case spiDirBits(secureToRemote):
		return tunnel.SecureRole, true
	case spiDirBits(remoteToSecure):
		return tunnel.RemoteRole, true
	}
	return "", false
}

// deriveSA derives direction d's key material and SPI from the shared
// secret of the link id whose ends' public keys are securePub and
// remotePub. The caller wipes the returned key when it is installed.
func deriveSA(shared, securePub, remotePub []byte, id string, d int) (dirKeys, uint32, error) {
	salt := make([]byte, 0, len(securePub)+len(remotePub))
	salt = append(append(salt, securePub...), remotePub...)
	out, err := hkdf.Key(sha256.New, shared, salt, deriveLabel+"\x00"+id+"\x00"+dirName(d), 32+4+4)
	if err != nil {
		return dirKeys{}, 0, fmt.Errorf("ipsec: derive the %s key: %w", dirName(d), err)
	}
	spi := binary.BigEndian.Uint32(out[36:])&0x3fffffff | spiDirBits(d)
	clear(out[36:])
	return dirKeys{aead: out[:36:36]}, spi, nil
}

// deriveLink derives both directions' keys and SPIs at the end holding
// priv in role, with the other end's public key peer.
func deriveLink(priv *ecdh.PrivateKey, peer *ecdh.PublicKey, role tunnel.Role, id string) (keySet, [2]uint32, error) {
	var ks keySet
	var spis [2]uint32
	shared, err := priv.ECDH(peer)
	if err != nil {
		// X25519 refuses a low-order peer key (an all-zero secret).
		return ks, spis, fmt.Errorf("%w: Public.Key: no X25519 secret with this key: %v", tunnel.ErrInvalid, err)
	}
	defer clear(shared)
	securePub, remotePub := priv.PublicKey().Bytes(), peer.Bytes()
	if role == tunnel.RemoteRole {
		securePub, remotePub = remotePub, securePub
	}
	for d := range ks {
		if ks[d], spis[d], err = deriveSA(shared, securePub, remotePub, id, d); err != nil {
			ks.wipe()
			return ks, spis, err
		}
	}
	return ks, spis, nil
}

// wipe zeroes the key material.
func (ks *keySet) wipe() {
	for d := range ks {
		clear(ks[d].aead)
		clear(ks[d].crypt)
		clear(ks[d].auth)
	}
}

// parsePublicKey decodes an X25519 public key in base64 (tunnel.Public.Key).
func parsePublicKey(s string) (*ecdh.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: Public.Key %q is not base64: %v", tunnel.ErrInvalid, s, err)
	}
	if len(b) != keyLen {
		return nil, fmt.Errorf("%w: Public.Key %q holds %d bytes, an X25519 key %d", tunnel.ErrInvalid, s, len(b), keyLen)
	}
	k, err := ecdh.X25519().NewPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: Public.Key %q: %v", tunnel.ErrInvalid, s, err)
	}
	return k, nil
}
