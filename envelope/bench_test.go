package envelope_test

import (
	"crypto"
	"testing"

	"github.com/pylonhq/pylon/envelope"
)

func BenchmarkSealP256(b *testing.B) {
	benchSeal(b, newP256(b), single(b), envelope.SealOptions{})
}

func BenchmarkSealEd25519(b *testing.B) {
	benchSeal(b, edKey, single(b), envelope.SealOptions{})
}

func BenchmarkSealP256Zstd50(b *testing.B) {
	benchSeal(b, newP256(b), pack50(b, 0.1), envelope.SealOptions{Encoding: envelope.EncodingZstd})
}

func BenchmarkOpenP256(b *testing.B) {
	benchOpen(b, newP256(b), single(b), envelope.SealOptions{})
}

func BenchmarkOpenEd25519(b *testing.B) {
	benchOpen(b, edKey, single(b), envelope.SealOptions{})
}

func BenchmarkOpenP256Zstd50(b *testing.B) {
	benchOpen(b, newP256(b), pack50(b, 0.1), envelope.SealOptions{Encoding: envelope.EncodingZstd})
}

func BenchmarkOpenP256Deflate50(b *testing.B) {
	benchOpen(b, newP256(b), pack50(b, 0.1), envelope.SealOptions{Encoding: envelope.EncodingDeflate})
}

func benchSeal(b *testing.B, k crypto.Signer, pack []byte, o envelope.SealOptions) {
	b.ReportAllocs()
	var seq uint64
	for b.Loop() {
		seq++
		if _, err := envelope.Seal(k, seq, pack, o); err != nil {
			b.Fatal(err)
		}
	}
}

func benchOpen(b *testing.B, k crypto.Signer, pack []byte, o envelope.SealOptions) {
	msg := mustSeal(b, k, 1, pack, o)
	pub := k.Public()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := envelope.Open(msg, pub); err != nil {
			b.Fatal(err)
		}
	}
}
