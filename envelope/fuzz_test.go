package envelope_test

import (
	"errors"
	"testing"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
)

// FuzzOpen opens arbitrary bytes as a message, and also seals them as a
// compressed payload (with a valid signature) to reach the decompressors.
// Seeds are in testdata/fuzz/FuzzOpen.
func FuzzOpen(f *testing.F) {
	f.Add(mustSeal(f, edKey, 1, single(f), envelope.SealOptions{Encoding: envelope.EncodingZstd}))
	pub := edKey.Public()
	f.Fuzz(func(t *testing.T, data []byte) {
		checkOpened(t, data, pub)
		if len(data) > pylon.MaxMessageBytes-200 {
			return
		}
		for _, enc := range []string{envelope.EncodingDeflate, envelope.EncodingZstd} {
			msg := craft(t, spec{protected: hdr(-8, 1, int64(envelope.HeaderEncoding), enc), payload: data, signer: edKey})
			checkOpened(t, msg, pub)
		}
	})
}

func checkOpened(t *testing.T, msg []byte, pub any) {
	m, err := envelope.Open(msg, pub)
	if err != nil {
		if m != nil {
			t.Fatalf("got a message and error %v", err)
		}
		if !errors.Is(err, envelope.ErrMalformed) && !errors.Is(err, envelope.ErrBadSignature) && !errors.Is(err, envelope.ErrTooLarge) {
			t.Fatalf("got error %v wrapping no sentinel", err)
		}
		if pylon.ErrorCode(err) == pylon.EINTERNAL {
			t.Fatalf("got error %v without a code", err)
		}
		return
	}
	if m.Seq == 0 || len(m.Payload) > pylon.MaxDecodedBytes ||
		(m.ContentType != envelope.ContentTypeSenMLCBOR && m.ContentType != envelope.ContentTypeSenMLJSON) {
		t.Fatalf("opened a bad message: seq %d, content type %d, %d bytes", m.Seq, m.ContentType, len(m.Payload))
	}
}
