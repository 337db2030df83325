package store

import (
	"encoding/binary"
	"errors"
	"hash/crc32"

	bolt "go.etcd.io/bbolt"
)

// Every value dpgate writes carries a checksum: bbolt checks its own pages
// (meta pages have a checksum, Check walks the tree) but not the bytes of
// a value, so a flipped byte inside a record would be read back as data
// and, for the push queue, delivered altered.
//
// Sealed form: value | CRC-32C (Castagnoli) of key and value, 4 bytes
// big-endian. The key is in the sum so that a damaged key, or a value
// found under another key, fails too.

// ErrChecksum marks a record whose checksum does not match.
var ErrChecksum = errors.New("store: record fails its checksum")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const sumLen = 4

func sum(key, value []byte) uint32 {
	return crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, value)
}

// Seal returns value with its checksum appended, for storing under key.
func Seal(key, value []byte) []byte {
	out := make([]byte, 0, len(value)+sumLen)
	out = append(out, value...)
	return binary.BigEndian.AppendUint32(out, sum(key, value))
}

// anySealed reports whether any value in tx (outside the meta bucket)
// carries its checksum. A store without its meta bucket was taken for
// one from before checksums and its records sealed; when the bucket was
// lost to damage instead (a flipped byte in its name), its records were
// sealed twice and their readers saw four bytes of garbage after every
// value (the chaos test's bitflip, 2 runs in 300). An unsealed value
// matching its checksum by chance is one in 2^32.
func anySealed(tx *bolt.Tx) bool {
	found := false
	var unreadable []string
	walkTx(tx, func(path []string, k, v []byte) {
		if !found && path[0] != metaBucket {
			_, err := Unseal(k, v)
			found = err == nil
		}
	}, &unreadable)
	return found
}

// Unseal verifies a sealed value read under key and returns the value
// without its checksum (a subslice of sealed: copy it to keep it past the
// transaction), or ErrChecksum.
func Unseal(key, sealed []byte) ([]byte, error) {
	if len(sealed) < sumLen {
		return nil, ErrChecksum
	}
	n := len(sealed) - sumLen
	if binary.BigEndian.Uint32(sealed[n:]) != sum(key, sealed[:n]) {
		return nil, ErrChecksum
	}
	return sealed[:n], nil
}
