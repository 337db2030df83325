package testutil

import (
	"crypto/aes"
	"crypto/cipher"
	"io"
)

// Pseudorandom is an endless deterministic stream of pseudo-random bytes
// for byte-exact transfer tests: an AES-CTR keystream, made by assembly
// that the race detector checks once a buffer, where math/rand's ChaCha8
// is Go code checked at every 8-byte store (1.2 s of CPU a GiB more
// under -race).
func Pseudorandom() io.Reader {
	block, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		panic(err) // a 16-byte key is always valid
	}
	return cipher.StreamReader{S: cipher.NewCTR(block, make([]byte, aes.BlockSize)), R: zeros{}}
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
