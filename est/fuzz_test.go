package est_test

import (
	"bytes"
	"testing"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/est"
)

// FuzzDecodeCSR checks that DecodeCSR never panics, fails only with its
// documented codes, and that what it accepts survives EncodeCSR. The seed
// corpus is in testdata/fuzz/FuzzDecodeCSR.
func FuzzDecodeCSR(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("MIHTMHwCAQAw"))
	f.Add([]byte{0x30, 0x82, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, body []byte) {
		csr, err := est.DecodeCSR(body)
		if err != nil {
			if code := pylon.ErrorCode(err); code != pylon.EBADREQUEST && code != pylon.ETOOLARGE {
				t.Fatalf("got code %q, want bad_request or too_large", code)
			}
			if csr != nil {
				t.Fatal("got a request with an error")
			}
			return
		}
		again, err := est.DecodeCSR(est.EncodeCSR(csr.Raw))
		if err != nil {
			t.Fatalf("re-encoded request: %v", err)
		}
		if !bytes.Equal(again.Raw, csr.Raw) {
			t.Fatal("re-encoded request differs")
		}
	})
}
