// Package ed25519voi verifies the Ed25519 signatures of telemetry envelopes
// with github.com/oasisprotocol/curve25519-voi, which takes about two thirds
// of the time of crypto/ed25519 on amd64 (opening a signed single reading:
// 42–47 µs against 67 µs on the benchmark machine; see docs/benchmarks.md).
// At single-reading rates the signature check is most of the server's work.
//
// It accepts exactly the signatures crypto/ed25519 accepts: curve25519-voi's
// VerifyOptionsStdLib preset (cofactorless, RFC 8032 §5.1.7 with the
// standard library's choices on small-order and non-canonical points), and
// the tests check that against the standard library itself on the
// "Taming the many EdDSAs" edge cases and on corrupted signatures.
//
// Other algorithms are left to go-cose.
package ed25519voi

import (
	"crypto"
	"crypto/ed25519"
	"fmt"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"github.com/veraison/go-cose"
)

// stdlib is curve25519-voi's preset that accepts what crypto/ed25519 does.
var stdlib = &voi.Options{Verify: voi.VerifyOptionsStdLib}

// NewVerifier returns a verifier of signatures made with alg by the key of
// pub: curve25519-voi's for EdDSA with an Ed25519 key, go-cose's
// (cose.NewVerifier) for anything else. It fits envelope.Opener.
//
// An Ed25519 verifier holds the key expanded (decompressed, with its table
// of multiples; about 1.5 KiB), which saves about a sixth of each check:
// make one per key and keep it, as envelope.Key does for a connection.
func NewVerifier(alg cose.Algorithm, pub crypto.PublicKey) (cose.Verifier, error) {
	k, ok := pub.(ed25519.PublicKey)
	if alg != cose.AlgorithmEdDSA || !ok {
		return cose.NewVerifier(alg, pub)
	}
	if len(k) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("ed25519voi: public key of %d bytes, want %d", len(k), ed25519.PublicKeySize)
	}
	v := &verifier{pub: voi.PublicKey(k)}
	// A key that is not a point expands to an error; it then verifies
	// nothing, as crypto/ed25519 would.
	v.expanded, _ = voi.NewExpandedPublicKey(v.pub)
	return v, nil
}

// verifier is an Ed25519 public key as a cose.Verifier.
type verifier struct {
	pub      voi.PublicKey
	expanded *voi.ExpandedPublicKey // nil if pub is not a point
}

// Algorithm implements cose.Verifier.
func (v *verifier) Algorithm() cose.Algorithm { return cose.AlgorithmEdDSA }

// Verify implements cose.Verifier.
func (v *verifier) Verify(content, sig []byte) error {
	var ok bool
	if v.expanded != nil {
		ok = voi.VerifyExpandedWithOptions(v.expanded, content, sig, stdlib)
	} else {
		ok = voi.VerifyWithOptions(v.pub, content, sig, stdlib)
	}
	if !ok {
		return cose.ErrVerification
	}
	return nil
}
