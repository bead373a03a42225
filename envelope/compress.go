package envelope

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
	"github.com/pylonhq/pylon"
)

// compress encodes b with the named encoding at level (0 = default).
func compress(encoding string, level int, b []byte) ([]byte, error) {
	switch encoding {
	case EncodingNone:
		return b, nil
	case EncodingDeflate:
		if level == 0 {
			level = flate.DefaultCompression
		} else if level < flate.BestSpeed || level > flate.BestCompression {
			return nil, fmt.Errorf("envelope: deflate level %d out of range 1-9", level)
		}
		return deflate(level, b)
	case EncodingZstd:
		zl := zstd.SpeedDefault
		if level != 0 {
			if level < 1 || level > 22 {
				return nil, fmt.Errorf("envelope: zstd level %d out of range 1-22", level)
			}
			zl = zstd.EncoderLevelFromZstd(level)
		}
		enc, err := zstdEncoder(zl)
		if err != nil {
			return nil, err
		}
		return enc.EncodeAll(b, make([]byte, 0, len(b)/2+32)), nil
	}
	return nil, fmt.Errorf("envelope: unknown content encoding %q", encoding)
}

// flateWriters pools deflate writers per level (-1 and 1..9), as each holds
// hundreds of kilobytes of state.
var flateWriters [flate.BestCompression + 2]sync.Pool

func deflate(level int, b []byte) ([]byte, error) {
	pool := &flateWriters[level+1]
	var out bytes.Buffer
	out.Grow(len(b)/2 + 16)
	w, _ := pool.Get().(*flate.Writer)
	if w == nil {
		var err error
		if w, err = flate.NewWriter(&out, level); err != nil {
			return nil, fmt.Errorf("envelope: deflate: %w", err)
		}
	} else {
		w.Reset(&out)
	}
	defer func() {
		w.Reset(io.Discard) // drop the reference to out
		pool.Put(w)
	}()
	if _, err := w.Write(b); err != nil {
		return nil, fmt.Errorf("envelope: deflate: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("envelope: deflate: %w", err)
	}
	return out.Bytes(), nil
}

// zstd encoders per speed, made on first use. EncodeAll is safe for
// concurrent use. Frames carry no checksum: the signature covers the
// compressed bytes already.
var (
	zstdEncMu sync.Mutex
	zstdEncs  = map[zstd.EncoderLevel]*zstd.Encoder{}
)

func zstdEncoder(level zstd.EncoderLevel) (*zstd.Encoder, error) {
	zstdEncMu.Lock()
	defer zstdEncMu.Unlock()
	if e := zstdEncs[level]; e != nil {
		return e, nil
	}
	e, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderCRC(false),
		zstd.WithEncoderConcurrency(1),
		zstd.WithLowerEncoderMem(true),
		zstd.WithWindowSize(1<<17),
		zstd.WithZeroFrames(true),
	)
	if err != nil {
		return nil, fmt.Errorf("envelope: zstd encoder: %w", err)
	}
	zstdEncs[level] = e
	return e, nil
}

// zstdDecoder decodes zstd payloads, refusing any output beyond
// pylon.MaxDecodedBytes (ErrDecoderSizeExceeded) as it goes and any frame
// that declares more up front. Made on first use.
var zstdDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderMaxMemory(pylon.MaxDecodedBytes),
		zstd.WithDecoderMaxWindow(pylon.MaxDecodedBytes),
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderLowmem(true),
		zstd.IgnoreChecksum(false),
	)
})

var flateReaders = sync.Pool{New: func() any { return flate.NewReader(noInput) }}

// noInput is what pooled deflate readers read from between uses; it is
// never read.
var noInput = bytes.NewReader(nil)

// scratch holds buffers into which payloads are decompressed, with room for
// pylon.MaxDecodedBytes plus the largest zstd block, so that the decoders
// never grow them: a zip bomb costs no allocation beyond a pooled buffer.
// The result is copied out at its exact size.
var scratch = sync.Pool{New: func() any {
	b := make([]byte, 0, scratchSize)
	return &b
}}

const scratchSize = pylon.MaxDecodedBytes + 256<<10

// decompress decodes payload with the named encoding, to at most
// pylon.MaxDecodedBytes. The result never aliases payload.
func decompress(encoding string, payload []byte) ([]byte, error) {
	if encoding == EncodingNone {
		return bytes.Clone(payload), nil
	}
	bp := scratch.Get().(*[]byte)
	defer scratch.Put(bp)
	var out []byte
	var err error
	switch encoding {
	case EncodingZstd:
		out, err = unzstd((*bp)[:0], payload)
	case EncodingDeflate:
		out, err = inflate((*bp)[:0], payload)
	default:
		err = malformed("unknown content encoding") // parseProtected prevents this
	}
	if err != nil {
		return nil, err
	}
	return bytes.Clone(out), nil
}

func unzstd(dst, payload []byte) ([]byte, error) {
	if len(payload) == 0 {
		return nil, malformed("empty zstd payload")
	}
	d, err := zstdDecoder()
	if err != nil {
		return nil, fmt.Errorf("envelope: zstd decoder: %w", err)
	}
	out, err := d.DecodeAll(payload, dst)
	switch {
	case errors.Is(err, zstd.ErrDecoderSizeExceeded), errors.Is(err, zstd.ErrWindowSizeExceeded):
		return nil, tooLarge("payload decompresses to more than %d bytes", pylon.MaxDecodedBytes)
	case err != nil:
		return nil, malformed("bad zstd payload")
	case len(out) > pylon.MaxDecodedBytes:
		return nil, tooLarge("payload decompresses to more than %d bytes", pylon.MaxDecodedBytes)
	}
	return out, nil
}

func inflate(dst, payload []byte) ([]byte, error) {
	src := bytes.NewReader(payload)
	fr := flateReaders.Get().(io.ReadCloser)
	defer func() {
		fr.(flate.Resetter).Reset(noInput, nil) // drop the reference to payload
		flateReaders.Put(fr)
	}()
	if err := fr.(flate.Resetter).Reset(src, nil); err != nil {
		return nil, malformed("bad deflate payload")
	}
	// Read up to one byte more than the cap, to tell "exactly the cap" from
	// "more".
	dst = dst[:pylon.MaxDecodedBytes+1]
	n := 0
	for {
		m, err := fr.Read(dst[n:])
		n += m
		if n > pylon.MaxDecodedBytes {
			return nil, tooLarge("payload decompresses to more than %d bytes", pylon.MaxDecodedBytes)
		} else if err == io.EOF {
			break
		} else if err != nil {
			return nil, malformed("bad deflate payload")
		} else if m == 0 {
			return nil, malformed("bad deflate payload: no progress")
		}
	}
	if src.Len() != 0 {
		return nil, malformed("%d trailing bytes after the deflate stream", src.Len())
	}
	return dst[:n], nil
}
