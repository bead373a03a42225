package envelope_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"

	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/senml"
)

var update = flag.Bool("update", false, "regenerate testdata/vectors.json")

const vectorsFile = "testdata/vectors.json"

type vectorFile struct {
	Description      string   `json:"description"`
	Ed25519Seed      string   `json:"ed25519_seed"`
	Ed25519PublicKey string   `json:"ed25519_public_key"`
	Ed25519          []vector `json:"ed25519_vectors"`
	P256PublicKey    string   `json:"p256_public_key"` // uncompressed SEC 1 point
	P256             []vector `json:"p256_vectors"`
}

type vector struct {
	Name        string `json:"name"`
	Seq         uint64 `json:"seq"`
	ContentType int    `json:"content_type"`
	Encoding    string `json:"encoding"`
	Level       int    `json:"level"`
	Tagged      bool   `json:"tagged"`
	SenML       string `json:"senml"`  // hex
	Sealed      string `json:"sealed"` // hex
}

func (v vector) opts() envelope.SealOptions {
	return envelope.SealOptions{ContentType: v.ContentType, Encoding: v.Encoding, Level: v.Level, Tagged: v.Tagged}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVectors checks the fixed test vectors: Ed25519 seals are
// deterministic, so Seal must reproduce them byte for byte; ECDSA seals are
// randomised, so the stored P-256 messages are only opened. Regenerate with
//
//	go test ./envelope/ -run TestVectors -update
//
// after a deliberate change to the wire format (or to the output of the
// compressors, which is not part of the format but fixes these bytes).
func TestVectors(t *testing.T) {
	if *update {
		writeVectors(t)
	}
	raw, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(raw, &vf); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(edKey.Seed()); got != vf.Ed25519Seed {
		t.Fatalf("got seed %s, want %s", got, vf.Ed25519Seed)
	}
	for _, v := range vf.Ed25519 {
		t.Run("ed25519/"+v.Name, func(t *testing.T) {
			pack, want := mustHex(t, v.SenML), mustHex(t, v.Sealed)
			got, err := envelope.Seal(edKey, v.Seq, pack, v.opts())
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Seal:\n got %x\nwant %x", got, want)
			}
			checkOpen(t, v, want, ed25519.PublicKey(mustHex(t, vf.Ed25519PublicKey)))
		})
	}
	point := mustHex(t, vf.P256PublicKey)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vf.P256 {
		t.Run("p256/"+v.Name, func(t *testing.T) {
			sealed := mustHex(t, v.Sealed)
			checkOpen(t, v, sealed, pub)
			if _, err := envelope.Open(flip(sealed, len(sealed)-1), pub); err == nil {
				t.Errorf("Open of a tampered vector: got no error")
			}
		})
	}
}

func checkOpen(t *testing.T, v vector, sealed []byte, pub any) {
	t.Helper()
	m, err := envelope.Open(sealed, pub)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	wantCT := v.ContentType
	if wantCT == 0 {
		wantCT = envelope.ContentTypeSenMLCBOR
	}
	if m.Seq != v.Seq || m.ContentType != wantCT || m.Encoding != v.Encoding || !bytes.Equal(m.Payload, mustHex(t, v.SenML)) {
		t.Errorf("Open: got seq %d, content type %d, encoding %q, payload %x; want %d, %d, %q, %s",
			m.Seq, m.ContentType, m.Encoding, m.Payload, v.Seq, wantCT, v.Encoding, v.SenML)
	}
}

func writeVectors(t *testing.T) {
	jsonPack, err := senml.EncodeJSON([]senml.Record{{Name: "temp", Unit: "Cel", Value: f64(22.5)}})
	if err != nil {
		t.Fatal(err)
	}
	one, fifty := single(t), pack50(t, 1.0/16)
	vf := vectorFile{
		Description: "Pylon telemetry envelope test vectors: COSE_Sign1 over SenML. " +
			"Ed25519 vectors are deterministic and must be reproduced by Seal byte for byte; " +
			"the P-256 vectors (randomised signatures) must open. Regenerate with: go test ./envelope/ -run TestVectors -update",
		Ed25519Seed:      hex.EncodeToString(edKey.Seed()),
		Ed25519PublicKey: hex.EncodeToString(edKey.Public().(ed25519.PublicKey)),
		Ed25519: []vector{
			{Name: "single reading", Seq: 123456, SenML: hex.EncodeToString(one)},
			{Name: "single reading, tagged", Seq: 1, Tagged: true, SenML: hex.EncodeToString(one)},
			{Name: "single reading, senml+json", Seq: 2, ContentType: envelope.ContentTypeSenMLJSON, SenML: hex.EncodeToString(jsonPack)},
			{Name: "50-record pack, zstd", Seq: 123457, Encoding: envelope.EncodingZstd, SenML: hex.EncodeToString(fifty)},
			{Name: "50-record pack, deflate", Seq: 123458, Encoding: envelope.EncodingDeflate, SenML: hex.EncodeToString(fifty)},
		},
		P256: []vector{
			{Name: "single reading", Seq: 123456, SenML: hex.EncodeToString(one)},
			{Name: "50-record pack, zstd", Seq: 123457, Encoding: envelope.EncodingZstd, SenML: hex.EncodeToString(fifty)},
		},
	}
	for i := range vf.Ed25519 {
		v := &vf.Ed25519[i]
		v.Sealed = hex.EncodeToString(mustSeal(t, edKey, v.Seq, mustHex(t, v.SenML), v.opts()))
	}
	p256 := newP256(t)
	point, err := p256.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	vf.P256PublicKey = hex.EncodeToString(point)
	for i := range vf.P256 {
		v := &vf.P256[i]
		v.Sealed = hex.EncodeToString(mustSeal(t, p256, v.Seq, mustHex(t, v.SenML), v.opts()))
	}
	out, err := json.MarshalIndent(vf, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vectorsFile, append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", vectorsFile)
}
