package pylon

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"strings"
)

// idEncoding is lower-case base32 without padding: safe in URLs, file names
// and MQTT topics.
var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// IDLen is the length of identifiers made by NewID.
const IDLen = 16

// NewID returns a random identifier of IDLen characters from [a-z2-7]
// (80 random bits).
func NewID() string {
	var b [10]byte
	rand.Read(b[:]) // never fails, see crypto/rand
	return idEncoding.EncodeToString(b[:])
}

// ValidID reports whether s has the form of an identifier made by NewID.
func ValidID(s string) bool {
	if len(s) != IDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// Secret prefixes name what a bearer secret is for, so that a leaked one is
// recognisable (and greppable by secret scanners).
const (
	APITokenPrefix        = "pyl_at_"
	EnrollmentTokenPrefix = "pyl_et_"
	SessionPrefix         = "pyl_s_"
)

// NewSecret returns a new bearer secret of the form prefix+id+"_"+random,
// its id (see NewID) and the SHA-256 hash under which it is stored. The
// random part has 256 bits, so a plain hash is enough to store it safely.
func NewSecret(prefix string) (secret, id string, hash []byte) {
	var b [32]byte
	rand.Read(b[:])
	id = NewID()
	secret = prefix + id + "_" + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, id, HashSecret(secret)
}

// ParseSecret splits a secret made by NewSecret with the given prefix into
// its id and hash. It returns EUNAUTHORIZED for anything else, without
// saying why.
func ParseSecret(prefix, secret string) (id string, hash []byte, err error) {
	rest, ok := strings.CutPrefix(secret, prefix)
	if !ok || len(rest) != IDLen+1+43 || rest[IDLen] != '_' || !ValidID(rest[:IDLen]) {
		return "", nil, Errorf(EUNAUTHORIZED, "invalid credentials")
	}
	return rest[:IDLen], HashSecret(secret), nil
}

// HashSecret returns the SHA-256 hash of a secret.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}
