package est_test

import (
	"testing"

	"github.com/pylonhq/pylon/est"
)

// The wire-format work of one enrollment: the server decodes the CSR and
// encodes the certs-only answer, the client decodes it.

func BenchmarkDecodeCSR(b *testing.B) {
	body := est.EncodeCSR(newCSR(b, "sensor-1"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := est.DecodeCSR(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeCertsOnly(b *testing.B) {
	cert := newCert(b, "d8f3k2")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := est.EncodeCertsOnly(cert); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeCertsOnly(b *testing.B) {
	body, err := est.EncodeCertsOnly(newCert(b, "d8f3k2"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := est.DecodeCertsOnly(body); err != nil {
			b.Fatal(err)
		}
	}
}
