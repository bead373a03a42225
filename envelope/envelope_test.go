package envelope_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strings"
	"testing"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/veraison/go-cose"
)

func TestSealOpenRoundTrip(t *testing.T) {
	keys := map[string]crypto.Signer{"p256": newP256(t), "p384": newP384(t), "ed25519": edKey}
	packs := map[string][]byte{"single": single(t), "pack50": pack50(t, 1.0/16), "empty": {}}
	for kname, k := range keys {
		for pname, pack := range packs {
			for _, o := range []envelope.SealOptions{
				{},
				{Tagged: true},
				{ContentType: envelope.ContentTypeSenMLJSON},
				{Encoding: envelope.EncodingDeflate},
				{Encoding: envelope.EncodingDeflate, Level: 1},
				{Encoding: envelope.EncodingZstd},
				{Encoding: envelope.EncodingZstd, Level: 19, Tagged: true},
			} {
				name := kname + "/" + pname + "/" + o.Encoding
				t.Run(name, func(t *testing.T) {
					msg := mustSeal(t, k, 42, pack, o)
					got, err := envelope.Open(msg, k.Public())
					if err != nil {
						t.Fatalf("Open: %v", err)
					}
					wantCT := o.ContentType
					if wantCT == 0 {
						wantCT = envelope.ContentTypeSenMLCBOR
					}
					if got.Seq != 42 || got.ContentType != wantCT || got.Encoding != o.Encoding || !bytes.Equal(got.Payload, pack) {
						t.Errorf("got %+v, want seq 42, content type %d, encoding %q, payload %x", got, wantCT, o.Encoding, pack)
					}
					if o.Tagged != (msg[0] == 0xd2) {
						t.Errorf("got first byte %#x with Tagged %v", msg[0], o.Tagged)
					}
				})
			}
		}
	}
}

// TestOpenDoesNotAlias checks that the payload is a copy, so that the
// caller may reuse the MQTT buffer.
func TestOpenDoesNotAlias(t *testing.T) {
	msg := mustSeal(t, edKey, 1, single(t), envelope.SealOptions{})
	got, err := envelope.Open(msg, edKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(got.Payload)
	for i := range msg {
		msg[i] = 0
	}
	if !bytes.Equal(got.Payload, want) {
		t.Errorf("payload changed with the input buffer")
	}
}

func TestSizes(t *testing.T) {
	p256 := newP256(t)
	msg := mustSeal(t, p256, 123456, single(t), envelope.SealOptions{})
	t.Logf("single reading, P-256, seq 123456: %d bytes", len(msg))
	if len(msg) > 100 {
		t.Errorf("single reading: got %d bytes, want at most 100", len(msg))
	}
	pack := pack50(t, 1.0/16)
	msg = mustSeal(t, p256, 123456, pack, envelope.SealOptions{Encoding: envelope.EncodingZstd})
	t.Logf("50 records (1/16 °C), P-256, zstd: %d bytes (pack %d bytes)", len(msg), len(pack))
	if len(msg) > 600 {
		t.Errorf("50 records zstd: got %d bytes, want at most 600", len(msg))
	}
	// For information: other encodings and a finer resolution.
	for _, step := range []float64{1.0 / 16, 0.1, 0.01} {
		pack := pack50(t, step)
		for _, enc := range []string{envelope.EncodingNone, envelope.EncodingDeflate, envelope.EncodingZstd} {
			msg := mustSeal(t, p256, 123456, pack, envelope.SealOptions{Encoding: enc})
			t.Logf("50 records, step %g, encoding %q: %d bytes (pack %d bytes)", step, enc, len(msg), len(pack))
		}
	}
	msg = mustSeal(t, edKey, 123456, single(t), envelope.SealOptions{})
	t.Logf("single reading, Ed25519: %d bytes", len(msg))
}

// TestOpenRejects covers hostile and broken messages.
func TestOpenRejects(t *testing.T) {
	p256 := newP256(t)
	other := newP256(t)
	p384 := newP384(t)
	pack := single(t)
	good := mustSeal(t, p256, 7, pack, envelope.SealOptions{})
	sigStart := len(good) - 64
	seqLabel, encLabel := int64(envelope.HeaderSeq), int64(envelope.HeaderEncoding)

	tests := []struct {
		name string
		// The message is msg if set, else a P-256 message over pack made by
		// craft with the protected header prot (or the raw bytes raw) and
		// the unprotected header unprot.
		msg    []byte
		prot   map[any]any
		raw    []byte
		unprot []byte
		pub    crypto.PublicKey // the device key, &p256.PublicKey if nil
		want   error
		text   string
	}{
		// Authenticity.
		{name: "bit flipped in signature", msg: flip(good, sigStart+10), want: envelope.ErrBadSignature, text: "does not verify"},
		{name: "bit flipped in payload", msg: flip(good, sigStart-5), want: envelope.ErrBadSignature},
		{name: "bit flipped in seq", msg: flip(good, 10), want: envelope.ErrBadSignature},
		{name: "empty signature", msg: append(bytes.Clone(good[:sigStart-2]), 0x40), want: envelope.ErrBadSignature},
		{name: "other device's key", msg: good, pub: &other.PublicKey, want: envelope.ErrBadSignature, text: "does not verify"},
		{name: "P-384 device key for a P-256 message", msg: good, pub: &p384.PublicKey, want: envelope.ErrBadSignature, text: "algorithm mismatch"},
		{name: "Ed25519 device key for a P-256 message", msg: good, pub: edKey.Public(), want: envelope.ErrBadSignature, text: "algorithm mismatch"},
		{
			name: "alg says EdDSA but key is P-256",
			msg:  craft(t, spec{protected: hdr(cose.AlgorithmEdDSA, 7), payload: pack, signer: p256, alg: cose.AlgorithmES256}),
			want: envelope.ErrBadSignature, text: "algorithm mismatch: the header says EdDSA, the device key needs ES256",
		},
		{
			name: "alg says EdDSA, signed with Ed25519, but device key is P-256",
			msg:  craft(t, spec{protected: hdr(cose.AlgorithmEdDSA, 7), payload: pack, signer: edKey}),
			want: envelope.ErrBadSignature, text: "algorithm mismatch",
		},
		{
			name: "alg says ES256 but key is Ed25519",
			msg:  craft(t, spec{protected: hdr(cose.AlgorithmES256, 7), payload: pack, signer: edKey, alg: cose.AlgorithmEdDSA}),
			pub:  edKey.Public(), want: envelope.ErrBadSignature, text: "algorithm mismatch",
		},
		{
			name: "alg says ES384 but key is P-256",
			msg:  craft(t, spec{protected: hdr(cose.AlgorithmES384, 7), payload: pack, signer: p256, alg: cose.AlgorithmES256}),
			want: envelope.ErrBadSignature, text: "algorithm mismatch",
		},
		{name: "unsupported device key", msg: good, pub: &rsa.PublicKey{}, want: envelope.ErrBadSignature, text: "an RSA key cannot sign telemetry"},

		// Protected header.
		{name: "missing alg", prot: hdr(-7, 7, int64(1), nil), want: envelope.ErrMalformed, text: "lacks alg"},
		{name: "text alg", prot: hdr(-7, 7, int64(1), "ES256"), want: envelope.ErrMalformed, text: "alg must be an integer"},
		{name: "missing seq", prot: hdr(-7, 7, seqLabel, nil), want: envelope.ErrMalformed, text: "lacks seq"},
		{name: "seq zero", prot: hdr(-7, 0), want: envelope.ErrMalformed, text: "seq must be at least 1"},
		{name: "negative seq", prot: hdr(-7, 7, seqLabel, int64(-5)), want: envelope.ErrMalformed, text: "seq must be an unsigned integer"},
		{name: "unknown critical header", prot: hdr(-7, 7, int64(2), []any{int64(-70000)}, int64(-70000), "x"), want: envelope.ErrMalformed, text: "unknown critical header -70000"},
		{name: "unknown critical text header", prot: hdr(-7, 7, int64(2), []any{"boot"}, "boot", int64(1)), want: envelope.ErrMalformed, text: `unknown critical header "boot"`},
		{name: "empty crit", prot: hdr(-7, 7, int64(2), []any{}), want: envelope.ErrMalformed, text: "crit must be a non-empty array"},
		{name: "critical header absent", prot: hdr(-7, 7, int64(2), []any{encLabel}), want: envelope.ErrMalformed, text: "is absent"},
		{name: "unknown encoding", prot: hdr(-7, 7, encLabel, "gzip"), want: envelope.ErrMalformed, text: `unknown content encoding "gzip"`},
		{name: "empty encoding", prot: hdr(-7, 7, encLabel, ""), want: envelope.ErrMalformed, text: "unknown content encoding"},
		{name: "integer encoding", prot: hdr(-7, 7, encLabel, int64(1)), want: envelope.ErrMalformed, text: "content encoding must be text"},
		{name: "unknown content type", prot: hdr(-7, 7, int64(3), int64(50)), want: envelope.ErrMalformed, text: "unsupported content type 50"},
		{name: "unknown text content type", prot: hdr(-7, 7, int64(3), "text/plain"), want: envelope.ErrMalformed, text: "unsupported content type"},
		{name: "duplicate key in protected header", raw: []byte{0xa3, 0x01, 0x26, 0x3a, 0, 1, 0, 0, 0x07, 0x01, 0x26}, want: envelope.ErrMalformed, text: "duplicate map key"},
		{name: "indefinite-length protected header", raw: []byte{0xbf, 0x01, 0x26, 0x3a, 0, 1, 0, 0, 0x07, 0xff}, want: envelope.ErrMalformed, text: "bad protected header"},
		{name: "tag in protected header", raw: []byte{0xa2, 0x01, 0x26, 0x3a, 0, 1, 0, 0, 0xc1, 0x07}, want: envelope.ErrMalformed, text: "bad protected header"},
		{name: "protected header not a map", raw: []byte{0x82, 0x01, 0x26}, want: envelope.ErrMalformed, text: "bad protected header"},
		{name: "trailing bytes in protected header", raw: []byte{0xa2, 0x01, 0x26, 0x3a, 0, 1, 0, 0, 0x07, 0x00}, want: envelope.ErrMalformed, text: "bad protected header"},
		{name: "empty protected header", raw: []byte{}, want: envelope.ErrMalformed, text: "empty protected header"},
		{name: "non-empty unprotected header", prot: hdr(-7, 7), unprot: []byte{0xa1, 0x04, 0x41, 0x01}, want: envelope.ErrMalformed, text: "unprotected header must be an empty map"},

		// Structure.
		{name: "trailing bytes", msg: append(bytes.Clone(good), 0x00), want: envelope.ErrMalformed, text: "1 trailing bytes"},
		{name: "detached payload", msg: []byte{0x84, 0x41, 0xa0, 0xa0, 0xf6, 0x40}, want: envelope.ErrMalformed, text: "detached"},
		{name: "empty message", msg: []byte{}, want: envelope.ErrMalformed, text: "not a COSE_Sign1"},
		{name: "array of 3", msg: []byte{0x83, 0x40, 0xa0, 0x40}, want: envelope.ErrMalformed, text: "not a COSE_Sign1"},
		{name: "tag 18 not in shortest form", msg: append([]byte{0xd8, 0x12}, good...), want: envelope.ErrMalformed, text: "not a COSE_Sign1"},
		{name: "COSE_Sign tag 98", msg: append([]byte{0xd8, 0x62}, good...), want: envelope.ErrMalformed},
		{name: "protected header as text", msg: []byte{0x84, 0x61, 0x61, 0xa0, 0x40, 0x40}, want: envelope.ErrMalformed, text: "protected header must be a byte string"},
		{name: "indefinite-length payload", msg: []byte{0x84, 0x41, 0xa0, 0xa0, 0x5f, 0x41, 0x00, 0xff, 0x40}, want: envelope.ErrMalformed, text: "definite-length"},
		{name: "length beyond message", msg: []byte{0x84, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, want: envelope.ErrMalformed, text: "truncated"},
		{name: "oversize", msg: make([]byte, pylon.MaxMessageBytes+1), want: envelope.ErrTooLarge, text: "over the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, pub := tt.msg, tt.pub
			if msg == nil {
				msg = craft(t, spec{protected: tt.prot, rawProtected: tt.raw, unprotected: tt.unprot, payload: pack, signer: p256})
			}
			if pub == nil {
				pub = &p256.PublicKey
			}
			got, err := envelope.Open(msg, pub)
			if err == nil {
				t.Fatalf("Open: got %+v and no error, want %v", got, tt.want)
			}
			if got != nil {
				t.Errorf("got a message with the error, want nil")
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("got error %q, want one wrapping %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("got error %q, want it to contain %q", err, tt.text)
			}
			wantCode := map[error]string{envelope.ErrBadSignature: pylon.EUNAUTHORIZED, envelope.ErrMalformed: pylon.EBADREQUEST, envelope.ErrTooLarge: pylon.ETOOLARGE}[tt.want]
			if code := pylon.ErrorCode(err); code != wantCode {
				t.Errorf("got code %q, want %q", code, wantCode)
			}
			if msg := pylon.ErrorMessage(err); msg != err.Error() {
				t.Errorf("got user message %q, want %q", msg, err.Error())
			}
			if len(err.Error()) > 200 {
				t.Errorf("got a %d-byte error message, want it bounded", len(err.Error()))
			}
		})
	}
}

// TestOpenAccepts covers variations that a conforming sender may use.
func TestOpenAccepts(t *testing.T) {
	p256 := newP256(t)
	pack := single(t)
	tests := []struct {
		name   string
		spec   spec
		wantCT int
	}{
		{name: "tagged", spec: spec{protected: hdr(-7, 9), payload: pack, signer: p256, tagged: true}, wantCT: 112},
		{name: "text content type", spec: spec{protected: hdr(-7, 9, int64(3), "application/senml+json"), payload: pack, signer: p256}, wantCT: 110},
		{name: "unknown non-critical header ignored", spec: spec{protected: hdr(-7, 9, int64(-70000), "x", "note", []any{int64(1)}), payload: pack, signer: p256}, wantCT: 112},
		{name: "known critical headers", spec: spec{protected: hdr(-7, 9, int64(2), []any{int64(envelope.HeaderSeq), int64(1)}), payload: pack, signer: p256}, wantCT: 112},
		{name: "max seq", spec: spec{protected: hdr(-7, 1<<64-1), payload: pack, signer: p256}, wantCT: 112},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := envelope.Open(craft(t, tt.spec), &p256.PublicKey)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if got.ContentType != tt.wantCT || !bytes.Equal(got.Payload, pack) {
				t.Errorf("got content type %d and payload %x, want %d and %x", got.ContentType, got.Payload, tt.wantCT, pack)
			}
		})
	}
}

// TestOpenTruncated opens every proper prefix of a message.
func TestOpenTruncated(t *testing.T) {
	for _, o := range []envelope.SealOptions{{}, {Tagged: true}, {Encoding: envelope.EncodingZstd}} {
		msg := mustSeal(t, edKey, 1, pack50(t, 0.1), o)
		for i := range len(msg) {
			_, err := envelope.Open(msg[:i], edKey.Public())
			if !errors.Is(err, envelope.ErrMalformed) {
				t.Fatalf("%+v: prefix of %d of %d bytes: got %v, want ErrMalformed", o, i, len(msg), err)
			}
		}
	}
}

func TestCorruptCompressedPayload(t *testing.T) {
	p256 := newP256(t)
	tests := []struct {
		name    string
		enc     string
		payload []byte
		want    error
	}{
		{"garbage deflate", envelope.EncodingDeflate, []byte{0xff, 0xff, 0xff, 0xff}, envelope.ErrMalformed},
		{"truncated deflate", envelope.EncodingDeflate, deflateBytes(t, pack50(t, 0.1))[:20], envelope.ErrMalformed},
		{"deflate with trailing bytes", envelope.EncodingDeflate, append(deflateBytes(t, single(t)), 0x00), envelope.ErrMalformed},
		{"garbage zstd", envelope.EncodingZstd, []byte("not zstd at all"), envelope.ErrMalformed},
		{"empty zstd", envelope.EncodingZstd, []byte{}, envelope.ErrMalformed},
		{"truncated zstd", envelope.EncodingZstd, zstdBytes(t, pack50(t, 0.1))[:30], envelope.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := craft(t, spec{protected: hdr(-7, 1, int64(envelope.HeaderEncoding), tt.enc), payload: tt.payload, signer: p256})
			_, err := envelope.Open(msg, &p256.PublicKey)
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestInteropGoCOSE checks Seal and Open against go-cose's own COSE_Sign1
// implementation.
func TestInteropGoCOSE(t *testing.T) {
	for name, k := range map[string]crypto.Signer{"p256": newP256(t), "p384": newP384(t), "ed25519": edKey} {
		t.Run(name, func(t *testing.T) {
			alg, err := envelope.AlgorithmFor(k.Public())
			if err != nil {
				t.Fatal(err)
			}
			verifier, err := cose.NewVerifier(alg, k.Public())
			if err != nil {
				t.Fatal(err)
			}
			pack := pack50(t, 0.1)

			// Seal → go-cose.
			msg := mustSeal(t, k, 5, pack, envelope.SealOptions{Encoding: envelope.EncodingZstd})
			var um cose.UntaggedSign1Message
			if err := um.UnmarshalCBOR(msg); err != nil {
				t.Fatalf("go-cose cannot parse our message: %v", err)
			}
			if err := um.Verify(nil, verifier); err != nil {
				t.Errorf("go-cose cannot verify our message: %v", err)
			}
			if got := um.Headers.Protected[int64(envelope.HeaderSeq)]; got != int64(5) {
				t.Errorf("go-cose sees seq %v (%T), want 5", got, got)
			}
			tagged := mustSeal(t, k, 5, pack, envelope.SealOptions{Tagged: true})
			var tm cose.Sign1Message
			if err := tm.UnmarshalCBOR(tagged); err != nil {
				t.Fatalf("go-cose cannot parse our tagged message: %v", err)
			}
			if err := tm.Verify(nil, verifier); err != nil {
				t.Errorf("go-cose cannot verify our tagged message: %v", err)
			}

			// go-cose → Open.
			signer, err := cose.NewSigner(alg, k)
			if err != nil {
				t.Fatal(err)
			}
			headers := cose.Headers{Protected: cose.ProtectedHeader{
				cose.HeaderLabelAlgorithm: alg,
				int64(envelope.HeaderSeq): uint64(77),
			}}
			for _, tagged := range []bool{false, true} {
				sign := cose.Sign1Untagged
				if tagged {
					sign = cose.Sign1
				}
				b, err := sign(rand.Reader, signer, headers, pack, nil)
				if err != nil {
					t.Fatal(err)
				}
				got, err := envelope.Open(b, k.Public())
				if err != nil {
					t.Fatalf("tagged %v: Open of go-cose's message: %v", tagged, err)
				}
				if got.Seq != 77 || !bytes.Equal(got.Payload, pack) {
					t.Errorf("tagged %v: got seq %d, payload %d bytes; want 77 and %d bytes", tagged, got.Seq, len(got.Payload), len(pack))
				}
			}
		})
	}
}

func TestAlgorithmFor(t *testing.T) {
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pub  crypto.PublicKey
		want cose.Algorithm
		err  bool
	}{
		{name: "P-256", pub: &newP256(t).PublicKey, want: cose.AlgorithmES256},
		{name: "P-384", pub: &newP384(t).PublicKey, want: cose.AlgorithmES384},
		{name: "Ed25519", pub: edKey.Public(), want: cose.AlgorithmEdDSA},
		{name: "P-521", pub: &p521.PublicKey, err: true},
		{name: "RSA", pub: &rsa.PublicKey{}, err: true},
		{name: "short Ed25519", pub: ed25519.PublicKey{1, 2, 3}, err: true},
		{name: "nil", pub: nil, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := envelope.AlgorithmFor(tt.pub)
			if tt.err {
				if !errors.Is(err, envelope.ErrBadSignature) {
					t.Errorf("got %v, %v; want ErrBadSignature", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestSealErrors(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	pack := single(t)
	tests := []struct {
		name   string
		signer crypto.Signer
		seq    uint64
		pack   []byte
		opts   envelope.SealOptions
		want   string
		is     error
	}{
		{name: "seq zero", signer: edKey, seq: 0, pack: pack, want: "sequence number must be at least 1"},
		{name: "bad content type", signer: edKey, seq: 1, pack: pack, opts: envelope.SealOptions{ContentType: 50}, want: "unsupported content type 50"},
		{name: "bad encoding", signer: edKey, seq: 1, pack: pack, opts: envelope.SealOptions{Encoding: "gzip"}, want: `unknown content encoding "gzip"`},
		{name: "bad deflate level", signer: edKey, seq: 1, pack: pack, opts: envelope.SealOptions{Encoding: "deflate", Level: 10}, want: "deflate level 10 out of range"},
		{name: "bad zstd level", signer: edKey, seq: 1, pack: pack, opts: envelope.SealOptions{Encoding: "zstd", Level: 23}, want: "zstd level 23 out of range"},
		{name: "RSA key", signer: rsaKey, seq: 1, pack: pack, want: "an RSA key cannot sign telemetry", is: envelope.ErrBadSignature},
		{name: "oversize pack", signer: edKey, seq: 1, pack: make([]byte, pylon.MaxDecodedBytes+1), want: "over the limit", is: envelope.ErrTooLarge},
		{name: "oversize message", signer: edKey, seq: 1, pack: make([]byte, pylon.MaxMessageBytes), want: "sealed message", is: envelope.ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := envelope.Seal(tt.signer, tt.seq, tt.pack, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("got %v, want one wrapping %v", err, tt.is)
			}
		})
	}
	// A big but compressible pack fits once compressed.
	if _, err := envelope.Seal(edKey, 1, make([]byte, pylon.MaxDecodedBytes), envelope.SealOptions{Encoding: envelope.EncodingZstd}); err != nil {
		t.Errorf("1 MiB of zeros with zstd: got %v, want nil", err)
	}
}

// TestDeterministicEd25519 checks that Ed25519 sealing is deterministic,
// which the test vectors rely on.
func TestDeterministicEd25519(t *testing.T) {
	a := mustSeal(t, edKey, 3, single(t), envelope.SealOptions{Encoding: envelope.EncodingZstd})
	b := mustSeal(t, edKey, 3, single(t), envelope.SealOptions{Encoding: envelope.EncodingZstd})
	if !bytes.Equal(a, b) {
		t.Errorf("two seals differ:\n%x\n%x", a, b)
	}
}

// algVerifier is a cose.Verifier that says it checks alg and records what
// it was asked.
type algVerifier struct {
	alg   cose.Algorithm
	calls *int
	inner cose.Verifier
}

func (v algVerifier) Algorithm() cose.Algorithm { return v.alg }
func (v algVerifier) Verify(content, sig []byte) error {
	*v.calls++
	return v.inner.Verify(content, sig)
}

// TestOpener checks that Opener uses its verifier, asks for it with the
// algorithm of the device's key, and refuses a verifier of another
// algorithm or none.
func TestOpener(t *testing.T) {
	msg := mustSeal(t, edKey, 7, single(t), envelope.SealOptions{})
	pub := edKey.Public()
	inner, err := cose.NewVerifier(cose.AlgorithmEdDSA, pub)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	var asked []cose.Algorithm
	o := envelope.Opener{NewVerifier: func(alg cose.Algorithm, k crypto.PublicKey) (cose.Verifier, error) {
		asked = append(asked, alg)
		return algVerifier{alg, &calls, inner}, nil
	}}
	m, err := o.Open(msg, pub)
	if err != nil || m.Seq != 7 {
		t.Fatalf("got %v, %v", m, err)
	}
	if calls != 1 || len(asked) != 1 || asked[0] != cose.AlgorithmEdDSA {
		t.Fatalf("verifier called %d times, asked for %v", calls, asked)
	}
	if _, err := o.Open(flip(msg, len(msg)-1), pub); !errors.Is(err, envelope.ErrBadSignature) {
		t.Fatalf("damaged signature: got %v, want ErrBadSignature", err)
	}

	for name, nv := range map[string]func(cose.Algorithm, crypto.PublicKey) (cose.Verifier, error){
		"another algorithm": func(cose.Algorithm, crypto.PublicKey) (cose.Verifier, error) {
			return algVerifier{cose.AlgorithmES256, &calls, inner}, nil
		},
		"error":       func(cose.Algorithm, crypto.PublicKey) (cose.Verifier, error) { return nil, errors.New("no") },
		"no verifier": func(cose.Algorithm, crypto.PublicKey) (cose.Verifier, error) { return nil, nil },
	} {
		calls = 0
		if _, err := (envelope.Opener{NewVerifier: nv}).Open(msg, pub); !errors.Is(err, envelope.ErrBadSignature) || calls != 0 {
			t.Errorf("%s: got %v after %d verifications, want ErrBadSignature and none", name, err, calls)
		}
	}
}
