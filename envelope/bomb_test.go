package envelope_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
)

func deflateBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func zstdBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// deflateZeros returns a raw deflate stream of mib MiB of zeros: one
// sync-flushed block of 1 MiB repeated, then an empty final block. This is
// much quicker than compressing the zeros.
func deflateZeros(t testing.TB, mib int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(make([]byte, 1<<20))
	w.Flush()
	unit := bytes.Clone(buf.Bytes())
	w.Close()
	final := buf.Bytes()[len(unit):]
	return append(bytes.Repeat(unit, mib), final...)
}

// zstdZeros returns a zstd frame of blocks RLE blocks of 128 KiB zeros,
// without a frame content size, so that only the decoder's running count
// can stop it.
func zstdZeros(blocks int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, // magic
		0x00, // frame header descriptor: no content size, no checksum, no dictionary
		0x38, // window descriptor: 2^17 bytes
	}
	for i := range blocks {
		h := uint32(128<<10)<<3 | 1<<1 // RLE block of 128 KiB
		if i == blocks-1 {
			h |= 1 // last block
		}
		b = binary.LittleEndian.AppendUint32(b, h)[:len(b)+3]
		b = append(b, 0x00)
	}
	return b
}

func TestBombBuilders(t *testing.T) {
	// Check the constructions on small sizes with independent decoders.
	got, err := io.ReadAll(flate.NewReader(bytes.NewReader(deflateZeros(t, 3))))
	if err != nil || len(got) != 3<<20 || bytes.IndexByte(got, 1) >= 0 {
		t.Errorf("deflateZeros(3): got %d bytes, %v; want 3 MiB of zeros", len(got), err)
	}
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, err = d.DecodeAll(zstdZeros(3), nil)
	if err != nil || len(got) != 3*128<<10 || bytes.IndexByte(got, 1) >= 0 {
		t.Errorf("zstdZeros(3): got %d bytes, %v; want 384 KiB of zeros", len(got), err)
	}
}

// TestZipBomb seals payloads that decompress to far more than
// pylon.MaxDecodedBytes and checks that Open fails quickly, with
// ErrTooLarge, without allocating much more than the cap.
func TestZipBomb(t *testing.T) {
	p256 := newP256(t)
	tests := []struct {
		name    string
		enc     string
		payload []byte
	}{
		// 50 MiB: the most whose deflate stream fits in a 64 KiB message.
		{"deflate 50 MiB of zeros", envelope.EncodingDeflate, deflateZeros(t, 50)},
		{"zstd 100 MiB of zeros, no content size", envelope.EncodingZstd, zstdZeros(800)},
		{"zstd 2 MiB of zeros, content size declared", envelope.EncodingZstd, zstdBytes(t, make([]byte, 2<<20))},
		{"deflate just over the cap", envelope.EncodingDeflate, deflateBytes(t, make([]byte, pylon.MaxDecodedBytes+1))},
		{"zstd just over the cap", envelope.EncodingZstd, zstdBytes(t, make([]byte, pylon.MaxDecodedBytes+1))},
	}
	// Warm up the decoders, whose first use allocates their state.
	for _, enc := range []string{envelope.EncodingDeflate, envelope.EncodingZstd} {
		msg := mustSeal(t, p256, 1, single(t), envelope.SealOptions{Encoding: enc})
		if _, err := envelope.Open(msg, &p256.PublicKey); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := craft(t, spec{protected: hdr(-7, 1, int64(envelope.HeaderEncoding), tt.enc), payload: tt.payload, signer: p256})
			t.Logf("message of %d bytes", len(msg))
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := envelope.Open(msg, &p256.PublicKey)
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, envelope.ErrTooLarge) {
				t.Fatalf("got %v, want ErrTooLarge", err)
			}
			if pylon.ErrorCode(err) != pylon.ETOOLARGE {
				t.Errorf("got code %q, want %q", pylon.ErrorCode(err), pylon.ETOOLARGE)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("failed in %v after allocating %d KiB", elapsed, alloc>>10)
			if alloc > 4*pylon.MaxDecodedBytes {
				t.Errorf("allocated %d bytes, want at most %d", alloc, 4*pylon.MaxDecodedBytes)
			}
			if elapsed > 2*time.Second {
				t.Errorf("took %v, want it to fail fast", elapsed)
			}
		})
	}
	// Exactly the cap is fine.
	msg := craft(t, spec{protected: hdr(-7, 1, int64(envelope.HeaderEncoding), "zstd"), payload: zstdBytes(t, make([]byte, pylon.MaxDecodedBytes)), signer: p256})
	if got, err := envelope.Open(msg, &p256.PublicKey); err != nil || len(got.Payload) != pylon.MaxDecodedBytes {
		t.Errorf("zstd of exactly the cap: got %v, want %d bytes", err, pylon.MaxDecodedBytes)
	}
	msg = craft(t, spec{protected: hdr(-7, 1, int64(envelope.HeaderEncoding), "deflate"), payload: deflateBytes(t, make([]byte, pylon.MaxDecodedBytes)), signer: p256})
	if got, err := envelope.Open(msg, &p256.PublicKey); err != nil || len(got.Payload) != pylon.MaxDecodedBytes {
		t.Errorf("deflate of exactly the cap: got %v, want %d bytes", err, pylon.MaxDecodedBytes)
	}
}
