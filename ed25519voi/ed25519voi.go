// Package ed25519voi verifies the Ed25519 signatures of telemetry envelopes
// with github.com/oasisprotocol/curve25519-voi, alone or many at once. At
// single-reading rates the signature check is most of the server's work:
// crypto/ed25519 takes 50 µs a check on the benchmark machine, a verifier
// of this package 26 µs (the key expanded once, see NewVerifier), and a
// Batch of 64 about 14 µs a signature (docs/benchmarks.md).
//
// # What it accepts
//
// Signatures are checked as RFC 8032 §5.1.7 and FIPS 186-5 define it,
// with the cofactored group equation [8][S]B = [8]R + [8][k]A'
// (curve25519-voi's VerifyOptionsFIPS_186_5 preset): S must be below the
// group order, A and R canonical encodings of curve points; small-order A
// and R are allowed. Batch verification can only check the cofactored
// equation, so single checks use it too, and a message is accepted or
// refused the same whether its signature was checked alone or in a batch.
//
// crypto/ed25519 checks the cofactorless equation [S]B = R + [k]A', which
// RFC 8032 allows as well. The two agree on every signature of a key's
// owner made by the RFC's signing algorithm; they differ only on
// signatures built with a small-order component in R or A, which only the
// holder of the private key can make, and on non-canonical encodings of A,
// which crypto/ed25519 accepts. The tests check both: agreement with the
// standard library on valid and damaged signatures, and the
// "Taming the many EdDSAs" edge cases against the FIPS 186-5 rules.
//
// Other algorithms are left to go-cose.
package ed25519voi

import (
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/oasisprotocol/curve25519-voi/curve"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"github.com/veraison/go-cose"
)

// rfc8032 is curve25519-voi's preset for RFC 8032 / FIPS 186-5 with the
// cofactored equation, the one batch verification checks.
var rfc8032 = &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5}

// CheckPublicKey returns an error unless pub is an Ed25519 public key
// such as key generation makes: 32 bytes, the canonical encoding of a
// point of the curve, in the prime-order subgroup. The verifiers of this
// package refuse every signature under a key that is not canonical or not
// a point. Under a key of small order anybody can make a signature that
// verifies (S = 0 and R the identity, for any message). A key with a
// small-order component is no key generation's output, and whether its
// holder's signatures verify depends on the verifier's equation
// (cofactored here, cofactorless in crypto/ed25519 and so in TLS). The CA
// certifies none of these (pki.KeyType).
func CheckPublicKey(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("Ed25519 public key of %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	var c curve.CompressedEdwardsY
	copy(c[:], pub)
	if !c.IsCanonicalVartime() {
		return errors.New("Ed25519 public key not canonically encoded")
	}
	var p curve.EdwardsPoint
	if _, err := p.SetCompressedY(&c); err != nil {
		return errors.New("Ed25519 public key not a point of the curve")
	}
	if p.IsSmallOrder() {
		return errors.New("Ed25519 public key of small order")
	}
	if !p.IsTorsionFree() {
		return errors.New("Ed25519 public key with a small-order component")
	}
	return nil
}

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
	// nothing.
	v.expanded, _ = voi.NewExpandedPublicKey(v.pub)
	return v, nil
}

// verifier is an Ed25519 public key as a cose.Verifier.
type verifier struct {
	pub      voi.PublicKey
	expanded *voi.ExpandedPublicKey // nil if pub is not a point

	// failed is set once a signature failed to verify with this key: its
	// checks are no longer batched (see Batchable).
	failed atomic.Bool
}

// Algorithm implements cose.Verifier.
func (v *verifier) Algorithm() cose.Algorithm { return cose.AlgorithmEdDSA }

// Verify implements cose.Verifier.
func (v *verifier) Verify(content, sig []byte) error {
	var ok bool
	if v.expanded != nil {
		ok = voi.VerifyExpandedWithOptions(v.expanded, content, sig, rfc8032)
	} else {
		ok = voi.VerifyWithOptions(v.pub, content, sig, rfc8032)
	}
	if !ok {
		v.failed.Store(true)
		return cose.ErrVerification
	}
	return nil
}

// A Batch checks the signatures of many messages together: about half the
// work of checking them one by one when they are all valid. It accepts and
// refuses exactly what the verifiers' Verify would. A Batch is not safe
// for concurrent use; reuse it after Verify.
type Batch struct {
	bv *voi.BatchVerifier
	vs []*verifier // of each check, to mark the keys of bad signatures

	// The first check's content and signature are held back until a
	// second comes: a lone check is made alone, as curve25519-voi's batch
	// of one costs 40% more than a single check.
	firstContent, firstSig []byte
}

// NewBatch returns an empty Batch.
func NewBatch() *Batch { return &Batch{bv: voi.NewBatchVerifier()} }

// Add adds the check of sig over content with v, and reports whether it
// did: only verifiers of this package's NewVerifier for a valid key can
// be checked in a batch; check the others alone.
func (b *Batch) Add(v cose.Verifier, content, sig []byte) bool {
	if !Batchable(v) {
		return false
	}
	ev := v.(*verifier)
	switch len(b.vs) {
	case 0:
		b.firstContent, b.firstSig = content, sig
	case 1:
		b.bv.AddExpandedWithOptions(b.vs[0].expanded, b.firstContent, b.firstSig, rfc8032)
		fallthrough
	default:
		b.bv.AddExpandedWithOptions(ev.expanded, content, sig, rfc8032)
	}
	b.vs = append(b.vs, ev)
	return true
}

// Batchable reports whether Batch.Add takes checks with v: a verifier of
// this package's NewVerifier for a valid key, with which no signature has
// failed yet. A batch with a bad signature costs the whole batch's work
// and then a check of each; so a key that sent one (a broken or hostile
// device) has its signatures checked alone from then on, and cannot make
// the checks of the others' signatures dearer.
func Batchable(v cose.Verifier) bool {
	ev, ok := v.(*verifier)
	return ok && ev.expanded != nil && !ev.failed.Load()
}

// Len returns the number of checks added since the last Verify.
func (b *Batch) Len() int { return len(b.vs) }

// Verify checks everything added, in one multi-scalar multiplication if
// all are valid, one by one to find the bad ones if not, and returns
// whether each is valid, in the order added. The batch is then empty.
func (b *Batch) Verify() []bool {
	var valid []bool
	switch len(b.vs) {
	case 0:
		return nil
	case 1:
		valid = []bool{b.vs[0].Verify(b.firstContent, b.firstSig) == nil}
	default:
		_, valid = b.bv.Verify(nil) // nil: randomness from crypto/rand
		for i, ok := range valid {
			if !ok {
				b.vs[i].failed.Store(true)
			}
		}
	}
	b.bv.Reset()
	b.firstContent, b.firstSig = nil, nil
	clear(b.vs)
	b.vs = b.vs[:0]
	return valid
}
