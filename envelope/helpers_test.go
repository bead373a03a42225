package envelope_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"math"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/senml"
	"github.com/veraison/go-cose"
)

// edKey is the fixed Ed25519 key of the test vectors: seed 00 01 ... 1f.
var edKey = func() ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	return ed25519.NewKeyFromSeed(seed)
}()

func newP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newP384(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func f64(v float64) *float64 { return &v }

// single is the SenML CBOR pack [{n:"temp",u:"Cel",v:22.5}].
func single(t testing.TB) []byte {
	t.Helper()
	b, err := senml.EncodeCBOR([]senml.Record{{Name: "temp", Unit: "Cel", Value: f64(22.5)}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pack50 is a 50-record SenML CBOR pack: bn, bt and bu once, then a value
// and a time offset per record; the temperature varies slowly and is
// rounded to step (1/16 °C for a common 12-bit sensor).
func pack50(t testing.TB, step float64) []byte {
	t.Helper()
	recs := make([]senml.Record, 50)
	for i := range recs {
		temp := 21 + 1.5*math.Sin(float64(i)/15) + 0.2*math.Sin(float64(i)*1.7)
		temp = math.Round(temp/step) * step
		recs[i] = senml.Record{Value: f64(temp), Time: float64(i-49) * 10}
	}
	recs[0].BaseName = "room1/temp"
	recs[0].BaseTime = 1717243200
	recs[0].BaseUnit = "Cel"
	b, err := senml.EncodeCBOR(recs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// spec describes a COSE_Sign1 built by craft, independently of the
// package under test (with fxamacker/cbor and go-cose).
type spec struct {
	protected    map[any]any // encoded deterministically
	rawProtected []byte      // used instead of protected if set
	unprotected  []byte      // raw CBOR; an empty map if nil
	payload      []byte
	signer       crypto.Signer
	alg          cose.Algorithm // algorithm to sign with; from the key if 0
	tagged       bool
}

var detEnc = func() cbor.EncMode {
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	return em
}()

// hdr returns the usual protected header.
func hdr(alg cose.Algorithm, seq uint64, extra ...any) map[any]any {
	m := map[any]any{int64(1): int64(alg), int64(envelope.HeaderSeq): seq}
	for i := 0; i+1 < len(extra); i += 2 {
		if extra[i+1] == nil {
			delete(m, extra[i])
			continue
		}
		m[extra[i]] = extra[i+1]
	}
	return m
}

func craft(t testing.TB, s spec) []byte {
	t.Helper()
	prot := s.rawProtected
	if prot == nil {
		var err error
		if prot, err = detEnc.Marshal(s.protected); err != nil {
			t.Fatal(err)
		}
	}
	alg := s.alg
	if alg == 0 {
		var err error
		if alg, err = envelope.AlgorithmFor(s.signer.Public()); err != nil {
			t.Fatal(err)
		}
	}
	tbs, err := detEnc.Marshal([]any{"Signature1", prot, []byte{}, s.payload})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := cose.NewSigner(alg, s.signer)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := signer.Sign(rand.Reader, tbs)
	if err != nil {
		t.Fatal(err)
	}
	unprot := s.unprotected
	if unprot == nil {
		unprot = []byte{0xa0}
	}
	msg, err := detEnc.Marshal([]any{prot, cbor.RawMessage(unprot), s.payload, sig})
	if err != nil {
		t.Fatal(err)
	}
	if s.tagged {
		msg = append([]byte{0xd2}, msg...)
	}
	return msg
}

func mustSeal(t testing.TB, k crypto.Signer, seq uint64, pack []byte, o envelope.SealOptions) []byte {
	t.Helper()
	m, err := envelope.Seal(k, seq, pack, o)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return m
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}
