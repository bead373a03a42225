package envelope

import (
	"fmt"
	"math"

	"github.com/fxamacker/cbor/v2"
	"github.com/pylonhq/pylon/internal/cborenc"
	"github.com/veraison/go-cose"
)

// CBOR heads used on the wire.
const (
	cborArray4      = 0x84 // array of 4 items
	cborEmptyMap    = 0xa0
	cborNull        = 0xf6
	cborTagSign1    = 0xd2 // tag 18, COSE_Sign1
	cborEmptyBytes  = 0x40
	labelAlg        = 1
	labelCType      = 3
	sigContext      = "Signature1"
	sigContextHead  = 0x6a // text string of 10 bytes
	maxProtectedLen = 256  // far more than any header this protocol defines
)

// parseSign1 splits a COSE_Sign1 (RFC 9052 §4.2), tagged (18) or not, into
// its protected header bytes, payload and signature, which alias msg. The
// unprotected header must be an empty map and the payload must be attached.
func parseSign1(msg []byte) (protected, payload, sig []byte, err error) {
	b := msg
	if len(b) > 0 && b[0] == cborTagSign1 {
		b = b[1:]
	}
	if len(b) == 0 || b[0] != cborArray4 {
		return nil, nil, nil, malformed("not a COSE_Sign1: want an array of 4 items")
	}
	b = b[1:]
	if protected, b, err = readBytes(b, "protected header"); err != nil {
		return nil, nil, nil, err
	}
	if len(b) == 0 || b[0] != cborEmptyMap {
		return nil, nil, nil, malformed("unprotected header must be an empty map")
	}
	b = b[1:]
	if len(b) > 0 && b[0] == cborNull {
		return nil, nil, nil, malformed("detached payloads are not supported")
	}
	if payload, b, err = readBytes(b, "payload"); err != nil {
		return nil, nil, nil, err
	}
	if sig, b, err = readBytes(b, "signature"); err != nil {
		return nil, nil, nil, err
	}
	if len(b) != 0 {
		return nil, nil, nil, malformed("%d trailing bytes after the COSE_Sign1", len(b))
	}
	return protected, payload, sig, nil
}

// readBytes reads a definite-length CBOR byte string from the front of b.
func readBytes(b []byte, what string) (content, rest []byte, err error) {
	if len(b) == 0 {
		return nil, nil, malformed("truncated %s", what)
	}
	major, info := b[0]>>5, b[0]&0x1f
	if major != cborenc.Bytes {
		return nil, nil, malformed("%s must be a byte string", what)
	}
	b = b[1:]
	var n uint64
	switch {
	case info < 24:
		n = uint64(info)
	case info <= 27:
		w := 1 << (info - 24) // 1, 2, 4 or 8 bytes
		if len(b) < w {
			return nil, nil, malformed("truncated %s", what)
		}
		for _, c := range b[:w] {
			n = n<<8 | uint64(c)
		}
		b = b[w:]
	default:
		return nil, nil, malformed("%s must be a definite-length byte string", what)
	}
	if n > uint64(len(b)) {
		return nil, nil, malformed("truncated %s", what)
	}
	return b[:n], b[n:], nil
}

// protectedHeader is the wire form of the protected header map. Values are
// decoded loosely and checked in parseProtected, for precise errors.
// Unknown labels are ignored unless listed in crit.
type protectedHeader struct {
	Alg      any `cbor:"1,keyasint"`
	Crit     any `cbor:"2,keyasint"`
	CType    any `cbor:"3,keyasint"`
	Seq      any `cbor:"-65537,keyasint"`
	Encoding any `cbor:"-65538,keyasint"`
}

// header is a checked protected header.
type header struct {
	alg         cose.Algorithm
	seq         uint64
	contentType int
	encoding    string
}

// headerDecMode bounds the decoding of protected headers.
var headerDecMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  4,
		MaxArrayElements: 16,
		MaxMapPairs:      16,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		IntDec:           cbor.IntDecConvertNone,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// understood lists the protected header labels this receiver processes;
// only these may be marked critical.
func understood(label any) bool {
	switch l := label.(type) {
	case uint64:
		return l == labelAlg || l == labelCType
	case int64:
		return l == HeaderSeq || l == HeaderEncoding
	}
	return false
}

func parseProtected(b []byte) (header, error) {
	var h header
	if len(b) == 0 {
		return h, malformed("empty protected header: alg and seq are required")
	} else if len(b) > maxProtectedLen {
		return h, malformed("protected header longer than %d bytes", maxProtectedLen)
	}
	var p protectedHeader
	if err := headerDecMode.Unmarshal(b, &p); err != nil {
		return h, malformed("bad protected header: %v", err)
	}

	switch a := p.Alg.(type) {
	case nil:
		return h, malformed("protected header lacks alg (1)")
	case int64:
		h.alg = cose.Algorithm(a)
	case uint64:
		if a > math.MaxInt64 {
			return h, malformed("alg out of range")
		}
		h.alg = cose.Algorithm(a)
	default:
		return h, malformed("alg must be an integer")
	}

	switch s := p.Seq.(type) {
	case nil:
		return h, malformed("protected header lacks seq (-65537)")
	case uint64:
		if s == 0 {
			return h, malformed("seq must be at least 1")
		}
		h.seq = s
	default:
		return h, malformed("seq must be an unsigned integer")
	}

	switch c := p.CType.(type) {
	case nil:
		h.contentType = ContentTypeSenMLCBOR
	case uint64:
		if c != ContentTypeSenMLCBOR && c != ContentTypeSenMLJSON {
			return h, malformed("unsupported content type %d", c)
		}
		h.contentType = int(c)
	case string:
		switch c {
		case "application/senml+cbor":
			h.contentType = ContentTypeSenMLCBOR
		case "application/senml+json":
			h.contentType = ContentTypeSenMLJSON
		default:
			return h, malformed("unsupported content type %.40q", c)
		}
	default:
		return h, malformed("content type must be an unsigned integer or text")
	}

	switch e := p.Encoding.(type) {
	case nil:
	case string:
		if e != EncodingDeflate && e != EncodingZstd {
			return h, malformed("unknown content encoding %.40q", e)
		}
		h.encoding = e
	default:
		return h, malformed("content encoding must be text")
	}

	if p.Crit != nil {
		labels, ok := p.Crit.([]any)
		if !ok || len(labels) == 0 {
			return h, malformed("crit must be a non-empty array")
		}
		present := map[any]bool{uint64(labelAlg): true, int64(HeaderSeq): true, uint64(labelCType): p.CType != nil, int64(HeaderEncoding): p.Encoding != nil}
		for _, l := range labels {
			if !understood(l) {
				return h, malformed("unknown critical header %v", printable(l))
			} else if !present[l] {
				return h, malformed("critical header %v is absent", l)
			}
		}
	}
	return h, nil
}

// printable bounds what an error message repeats of a header label.
func printable(v any) string {
	s := fmt.Sprintf("%v", v)
	if _, ok := v.(string); ok {
		s = fmt.Sprintf("%.40q", v)
	}
	if len(s) > 50 {
		s = s[:50] + "..."
	}
	return s
}

// appendProtected appends the protected header map in deterministic
// encoding (RFC 8949 §4.2.1: keys 1, 3, -65537, -65538 in that order).
func appendProtected(b []byte, alg cose.Algorithm, seq uint64, contentType int, encoding string) []byte {
	n := 2
	if contentType != ContentTypeSenMLCBOR {
		n++
	}
	if encoding != "" {
		n++
	}
	b = append(b, 0xa0|byte(n))
	b = append(b, labelAlg)
	b = appendInt(b, int64(alg))
	if contentType != ContentTypeSenMLCBOR {
		b = append(b, labelCType)
		b = cborenc.AppendHead(b, cborenc.Uint, uint64(contentType))
	}
	b = appendInt(b, HeaderSeq)
	b = cborenc.AppendHead(b, cborenc.Uint, seq)
	if encoding != "" {
		b = appendInt(b, HeaderEncoding)
		b = cborenc.AppendText(b, encoding)
	}
	return b
}

// appendSigStructure appends the CBOR encoding of the Sig_structure of a
// COSE_Sign1 with empty external AAD (RFC 9052 §4.4):
//
//	["Signature1", protected, h'', payload]
func appendSigStructure(b, protected, payload []byte) []byte {
	b = append(b, cborArray4, sigContextHead)
	b = append(b, sigContext...)
	b = cborenc.AppendHead(b, cborenc.Bytes, uint64(len(protected)))
	b = append(b, protected...)
	b = append(b, cborEmptyBytes)
	b = cborenc.AppendHead(b, cborenc.Bytes, uint64(len(payload)))
	return append(b, payload...)
}

func sigStructureLen(protected, payload []byte) int {
	return 2 + len(sigContext) + 9 + len(protected) + 1 + 9 + len(payload)
}

// appendSign1 appends a COSE_Sign1 with an empty unprotected header.
func appendSign1(b []byte, tagged bool, protected, payload, sig []byte) []byte {
	if tagged {
		b = append(b, cborTagSign1)
	}
	b = append(b, cborArray4)
	b = cborenc.AppendHead(b, cborenc.Bytes, uint64(len(protected)))
	b = append(b, protected...)
	b = append(b, cborEmptyMap)
	b = cborenc.AppendHead(b, cborenc.Bytes, uint64(len(payload)))
	b = append(b, payload...)
	b = cborenc.AppendHead(b, cborenc.Bytes, uint64(len(sig)))
	return append(b, sig...)
}

func sign1Len(protected, payload, sig []byte) int {
	return 1 + 9 + len(protected) + 1 + 9 + len(payload) + 9 + len(sig)
}

// appendInt appends a CBOR integer.
func appendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return cborenc.AppendHead(b, cborenc.Uint, uint64(v))
	}
	return cborenc.AppendHead(b, cborenc.NegInt, uint64(-1-v))
}
