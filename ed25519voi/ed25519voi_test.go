package ed25519voi_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/oasisprotocol/curve25519-voi/curve"
	"github.com/pylonhq/pylon/ed25519voi"
	"github.com/pylonhq/pylon/envelope"
	"github.com/veraison/go-cose"
)

// mustVerifier returns the verifier of pub.
func mustVerifier(t *testing.T, pub ed25519.PublicKey) cose.Verifier {
	t.Helper()
	v, err := ed25519voi.NewVerifier(cose.AlgorithmEdDSA, pub)
	if err != nil {
		t.Fatal(err)
	}
	if v.Algorithm() != cose.AlgorithmEdDSA {
		t.Fatalf("got algorithm %v, want EdDSA", v.Algorithm())
	}
	return v
}

// agree checks that the verifier and crypto/ed25519 give the same answer,
// and returns it.
func agree(t *testing.T, what string, pub ed25519.PublicKey, msg, sig []byte) bool {
	t.Helper()
	want := ed25519.Verify(pub, msg, sig)
	err := mustVerifier(t, pub).Verify(msg, sig)
	if got := err == nil; got != want {
		t.Errorf("%s: curve25519-voi says %v (%v), crypto/ed25519 says %v", what, got, err, want)
	}
	if err != nil && !errors.Is(err, cose.ErrVerification) {
		t.Errorf("%s: got error %v, want cose.ErrVerification", what, err)
	}
	return want
}

// speccheckCase is one of the edge cases of "Taming the many EdDSAs".
type speccheckCase struct {
	msg, pub, sig []byte
}

// speccheckCases reads the 12 edge cases of "Taming the many EdDSAs"
// (Chalkias, Garillot, Nikolaenko; small-order and mixed-order points,
// cofactored equations, non-canonical encodings), from
// github.com/novifinancial/ed25519-speccheck scripts/cases.json.
func speccheckCases(t *testing.T) []speccheckCase {
	b, err := os.ReadFile("testdata/speccheck_cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var raw []struct {
		Message   string `json:"message"`
		PublicKey string `json:"pub_key"`
		Signature string `json:"signature"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw) != 12 {
		t.Fatalf("got %d cases, want 12", len(raw))
	}
	cases := make([]speccheckCase, len(raw))
	for i, c := range raw {
		cases[i].msg, _ = hex.DecodeString(c.Message)
		cases[i].pub, _ = hex.DecodeString(c.PublicKey)
		cases[i].sig, _ = hex.DecodeString(c.Signature)
		if len(cases[i].pub) != ed25519.PublicKeySize || len(cases[i].sig) != ed25519.SignatureSize {
			t.Fatalf("case %d: bad lengths", i)
		}
	}
	return cases
}

// speccheckWant is what RFC 8032 with the cofactored equation (FIPS
// 186-5) says of each case, from the paper's table: 0–3 small- or
// mixed-order A and R that pass both equations, 4–5 mixed-order ones that
// pass only the cofactored one: valid. 6–7 S not below the group order,
// 8–9 non-canonical R, 10–11 non-canonical A: invalid.
var speccheckWant = []bool{true, true, true, true, true, true, false, false, false, false, false, false}

// speccheckStdlibDiffers are the cases crypto/ed25519 decides otherwise:
// it checks the cofactorless equation (4, 5) and accepts a non-canonical A
// (11).
var speccheckStdlibDiffers = map[int]bool{4: true, 5: true, 11: true}

// TestVerify_Speccheck checks each edge case alone and all of them in one
// batch against what RFC 8032 / FIPS 186-5 say, and that crypto/ed25519
// differs from that exactly where documented.
func TestVerify_Speccheck(t *testing.T) {
	cases := speccheckCases(t)
	batch := ed25519voi.NewBatch()
	var batched []int
	for i, c := range cases {
		v := mustVerifier(t, c.pub)
		err := v.Verify(c.msg, c.sig)
		if got := err == nil; got != speccheckWant[i] {
			t.Errorf("case %d: verifier says %v (%v), want %v", i, got, err, speccheckWant[i])
		}
		if err != nil && !errors.Is(err, cose.ErrVerification) {
			t.Errorf("case %d: got error %v, want cose.ErrVerification", i, err)
		}
		if std := ed25519.Verify(c.pub, c.msg, c.sig); (std != speccheckWant[i]) != speccheckStdlibDiffers[i] {
			t.Errorf("case %d: crypto/ed25519 says %v; documented as differing: %v", i, std, speccheckStdlibDiffers[i])
		}
		// A fresh verifier: one whose check failed is no longer batched.
		if batch.Add(mustVerifier(t, c.pub), c.msg, c.sig) {
			batched = append(batched, i)
		}
	}
	if len(batched) < len(cases)-2 {
		t.Fatalf("only cases %v could be batched", batched)
	}
	for j, ok := range batch.Verify() {
		if i := batched[j]; ok != speccheckWant[i] {
			t.Errorf("case %d in a batch: got %v, want %v", i, ok, speccheckWant[i])
		}
	}
}

// TestBatch checks batches of valid signatures, and that a bad one among
// them is found and the others still pass.
func TestBatch(t *testing.T) {
	type check struct {
		v        cose.Verifier
		pub      ed25519.PublicKey
		msg, sig []byte
	}
	var checks []check
	for i := range 40 {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		msg := fmt.Appendf(nil, "message %d", i)
		checks = append(checks, check{mustVerifier(t, pub), pub, msg, ed25519.Sign(priv, msg)})
	}
	b := ed25519voi.NewBatch()
	for bad := -1; bad < len(checks); bad += 13 {
		if bad-13 >= 0 {
			// The previous round's bad key is no longer batched; give
			// it a fresh verifier.
			prev := &checks[bad-13]
			if ed25519voi.Batchable(prev.v) || b.Add(prev.v, prev.msg, prev.sig) {
				t.Fatalf("the verifier of a bad signature is still batched")
			}
			prev.v = mustVerifier(t, prev.pub)
		}
		for i, c := range checks {
			sig := c.sig
			if i == bad {
				sig = append([]byte(nil), sig...)
				sig[5] ^= 1
			}
			if !b.Add(c.v, c.msg, sig) {
				t.Fatal("an Ed25519 verifier could not be batched")
			}
		}
		if b.Len() != len(checks) {
			t.Fatalf("Len: got %d, want %d", b.Len(), len(checks))
		}
		valid := b.Verify()
		if len(valid) != len(checks) || b.Len() != 0 {
			t.Fatalf("got %d results, %d left in the batch; want %d, 0", len(valid), b.Len(), len(checks))
		}
		for i, ok := range valid {
			if ok != (i != bad) {
				t.Errorf("bad=%d: signature %d: got %v", bad, i, ok)
			}
		}
	}
	// A batch of one is checked alone.
	for _, damage := range []bool{false, true} {
		c := checks[1]
		sig := append([]byte(nil), c.sig...)
		if damage {
			sig[40] ^= 1
		}
		b.Add(c.v, c.msg, sig)
		if valid := b.Verify(); len(valid) != 1 || valid[0] == damage {
			t.Errorf("batch of one, damaged %v: got %v", damage, valid)
		}
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	v, err := ed25519voi.NewVerifier(cose.AlgorithmES256, &k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if b.Add(v, []byte("m"), []byte("s")) || b.Len() != 0 || b.Verify() != nil {
		t.Error("an ES256 verifier was added to the batch")
	}
}

// TestVerify_Corrupted checks valid signatures and every kind of damage.
func TestVerify_Corrupted(t *testing.T) {
	for i := range 50 {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 1+i*7)
		rand.Read(msg)
		sig := ed25519.Sign(priv, msg)
		if !agree(t, "valid", pub, msg, sig) {
			t.Fatal("a valid signature does not verify")
		}
		flip := func(b []byte, bit int) []byte {
			c := append([]byte(nil), b...)
			c[bit/8] ^= 1 << (bit % 8)
			return c
		}
		if agree(t, "signature bit", pub, msg, flip(sig, i*10%512)) {
			t.Fatal("a damaged signature verifies")
		}
		if agree(t, "message bit", pub, flip(msg, i%(len(msg)*8)), sig) {
			t.Fatal("a damaged message verifies")
		}
		other, _, _ := ed25519.GenerateKey(rand.Reader)
		if agree(t, "another key", other, msg, sig) {
			t.Fatal("another key verifies")
		}
		// S + L: the same signature with a non-canonical S.
		nc := append([]byte(nil), sig...)
		addL(nc[32:])
		agree(t, "S+L", pub, msg, nc)
		for _, n := range []int{0, 63, 65} {
			short := make([]byte, n)
			copy(short, sig)
			if agree(t, "length", pub, msg, short) {
				t.Fatalf("a signature of %d bytes verifies", n)
			}
		}
	}
}

// addL adds the group order L to the little-endian scalar s, ignoring a
// carry out of its 256 bits.
func addL(s []byte) {
	l := []byte{0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}
	carry := 0
	for i := range s {
		v := int(s[i]) + int(l[i]) + carry
		s[i], carry = byte(v), v>>8
	}
}

func TestNewVerifier_OtherAlgorithms(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ed25519voi.NewVerifier(cose.AlgorithmES256, &k.PublicKey)
	if err != nil || v.Algorithm() != cose.AlgorithmES256 {
		t.Fatalf("ES256: got %v, %v", v, err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := ed25519voi.NewVerifier(cose.AlgorithmES256, pub); err == nil {
		t.Fatal("ES256 with an Ed25519 key: no error")
	}
	if _, err := ed25519voi.NewVerifier(cose.AlgorithmEdDSA, pub[:31]); err == nil {
		t.Fatal("a 31-byte key: no error")
	}
}

func TestCheckPublicKey(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := ed25519voi.CheckPublicKey(pub); err != nil {
		t.Fatalf("a generated key: %v", err)
	}

	// pub plus a point of order 8.
	var c curve.CompressedEdwardsY
	copy(c[:], pub)
	var a curve.EdwardsPoint
	if _, err := a.SetCompressedY(&c); err != nil {
		t.Fatal(err)
	}
	var mixed curve.EdwardsPoint
	mixed.Add(&a, curve.EIGHT_TORSION[1])
	var mc curve.CompressedEdwardsY
	mc.SetEdwardsPoint(&mixed)

	hexKey := func(s string) ed25519.PublicKey {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		pub  ed25519.PublicKey
		want string
	}{
		{"31 bytes", pub[:31], "Ed25519 public key of 31 bytes, want 32"},
		{"y = p + 1, the identity not reduced", hexKey("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), "Ed25519 public key not canonically encoded"},
		{"y = 2, no x", hexKey("0200000000000000000000000000000000000000000000000000000000000000"), "Ed25519 public key not a point of the curve"},
		{"the identity", hexKey("0100000000000000000000000000000000000000000000000000000000000000"), "Ed25519 public key of small order"},
		{"a point of order 8", ed25519.PublicKey(compress(curve.EIGHT_TORSION[1])), "Ed25519 public key of small order"},
		{"a generated key plus a point of order 8", ed25519.PublicKey(mc[:]), "Ed25519 public key with a small-order component"},
	} {
		err := ed25519voi.CheckPublicKey(tc.pub)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

// compress returns p's encoding.
func compress(p *curve.EdwardsPoint) []byte {
	var c curve.CompressedEdwardsY
	c.SetEdwardsPoint(p)
	return c[:]
}

func BenchmarkVerify(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 100)
	sig := ed25519.Sign(priv, msg)
	v, _ := ed25519voi.NewVerifier(cose.AlgorithmEdDSA, pub)
	b.Run("curve25519-voi", func(b *testing.B) {
		for b.Loop() {
			if err := v.Verify(msg, sig); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, n := range []int{1, 2, 4, 8, 64} {
		b.Run(fmt.Sprintf("batch-of-%d", n), func(b *testing.B) {
			batch := ed25519voi.NewBatch()
			for b.Loop() {
				for range n {
					batch.Add(v, msg, sig)
				}
				for _, ok := range batch.Verify() {
					if !ok {
						b.Fatal("does not verify")
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*b.N), "ns/signature")
		})
	}
	b.Run("crypto-ed25519", func(b *testing.B) {
		for b.Loop() {
			if !ed25519.Verify(pub, msg, sig) {
				b.Fatal("does not verify")
			}
		}
	})
}

// BenchmarkOpen opens a signed single reading (the SenML of docs/protocol.md's
// first test vector) as the ingest path does, and as envelope.Open does.
func BenchmarkOpen(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pack, _ := hex.DecodeString("81a3006474656d70016343656c02f94d64") // [{0:"temp",1:"Cel",2:21.5625}]
	msg, err := envelope.Seal(priv, 1, pack, envelope.SealOptions{})
	if err != nil {
		b.Fatal(err)
	}
	pub := priv.Public()
	for name, open := range map[string]func([]byte, crypto.PublicKey) (*envelope.Message, error){
		"curve25519-voi": envelope.Opener{NewVerifier: ed25519voi.NewVerifier}.Open,
		"go-cose":        envelope.Open,
	} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := open(msg, pub); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
