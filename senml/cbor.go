package senml

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/pylonhq/pylon/internal/cborenc"
)

// CBOR tags that the decoder understands.
const (
	tagDecimalFraction = 4
	tagSelfDescribed   = 55799
)

// cborLabels maps the CBOR labels -6..8 (offset by 6) to labels.
var cborLabels = [...]label{
	lBs, lBv, lBu, lBt, lBn, lBver, // -6 .. -1
	lN, lU, lV, lVs, lVb, lS, lT, lUt, lVd, // 0 .. 8
}

var errTruncated = errors.New("truncated CBOR")

// cborReader reads the subset of CBOR that SenML uses, without reflection
// and without copying: strings are returned as slices of the input.
type cborReader struct {
	b   []byte
	off int
}

func (r *cborReader) remaining() int { return len(r.b) - r.off }

// head reads the initial byte and argument of the next data item. For
// major type 7 the argument is the simple value or the raw float bits.
func (r *cborReader) head() (major, info byte, arg uint64, err error) {
	if r.off >= len(r.b) {
		return 0, 0, 0, errTruncated
	}
	ib := r.b[r.off]
	r.off++
	major, info = ib>>5, ib&0x1f
	var n int
	switch {
	case info < 24:
		return major, info, uint64(info), nil
	case info == 24:
		n = 1
	case info == 25:
		n = 2
	case info == 26:
		n = 4
	case info == 27:
		n = 8
	case info == 31:
		if major == cborenc.Simple {
			return 0, 0, 0, errors.New("unexpected break code")
		}
		return 0, 0, 0, errors.New("indefinite-length items are not supported")
	default:
		return 0, 0, 0, fmt.Errorf("reserved additional information %d", info)
	}
	if r.remaining() < n {
		return 0, 0, 0, errTruncated
	}
	for _, c := range r.b[r.off : r.off+n] {
		arg = arg<<8 | uint64(c)
	}
	r.off += n
	if major == cborenc.Simple && info == 24 && arg < 32 {
		return 0, 0, 0, errors.New("malformed simple value")
	}
	return major, info, arg, nil
}

// bytes returns the next n bytes of content.
func (r *cborReader) bytes(n uint64) ([]byte, error) {
	if n > uint64(r.remaining()) {
		return nil, errTruncated
	}
	b := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return b, nil
}

// text reads a definite-length UTF-8 text string of at most max bytes.
func (r *cborReader) text(max int) ([]byte, error) {
	major, _, n, err := r.head()
	if err != nil {
		return nil, err
	} else if major != cborenc.Text {
		return nil, fmt.Errorf("want a text string, got %s", majorName(major))
	} else if n > uint64(max) {
		return nil, fmt.Errorf("longer than %d bytes", max)
	}
	b, err := r.bytes(n)
	if err != nil {
		return nil, err
	} else if !utf8.Valid(b) {
		return nil, errors.New("not valid UTF-8")
	}
	return b, nil
}

// number reads an integer, a float of any width or a decimal fraction as a
// finite float64.
func (r *cborReader) number() (float64, error) {
	major, info, arg, err := r.head()
	if err != nil {
		return 0, err
	}
	var f float64
	switch major {
	case cborenc.Uint:
		f = float64(arg)
	case cborenc.NegInt:
		f = -1 - float64(arg)
	case cborenc.Simple:
		switch info {
		case 25:
			f = float16to64(uint16(arg))
		case 26:
			f = float64(math.Float32frombits(uint32(arg)))
		case 27:
			f = math.Float64frombits(arg)
		default:
			return 0, fmt.Errorf("want a number, got %s", simpleName(info, arg))
		}
	case cborenc.Tag:
		if arg != tagDecimalFraction {
			return 0, fmt.Errorf("want a number, got tag %d", arg)
		}
		if f, err = r.decimalFraction(); err != nil {
			return 0, err
		}
	default:
		return 0, fmt.Errorf("want a number, got %s", majorName(major))
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, errors.New("not a finite number")
	}
	return f, nil
}

// decimalFraction reads the content of tag 4: [exponent, mantissa], both
// integers (RFC 8949 §3.4.4; bignum mantissas are not supported).
func (r *cborReader) decimalFraction() (float64, error) {
	major, _, n, err := r.head()
	if err != nil {
		return 0, err
	} else if major != cborenc.Array || n != 2 {
		return 0, errors.New("decimal fraction must be an array of two integers")
	}
	var buf [48]byte
	b := buf[:0]
	var exp int64
	for k := range 2 {
		major, _, arg, err := r.head()
		if err != nil {
			return 0, err
		}
		switch {
		case major == cborenc.Uint && k == 0 && arg <= math.MaxInt64:
			exp = int64(arg)
		case major == cborenc.NegInt && k == 0 && arg <= math.MaxInt64:
			exp = -1 - int64(arg)
		case major == cborenc.Uint && k == 1:
			b = strconv.AppendUint(b, arg, 10)
		case major == cborenc.NegInt && k == 1:
			// -1-arg, written without overflow.
			b = append(b, '-')
			if arg == math.MaxUint64 {
				b = append(b, "18446744073709551616"...)
			} else {
				b = strconv.AppendUint(b, arg+1, 10)
			}
		default:
			return 0, errors.New("decimal fraction must be an array of two integers")
		}
	}
	b = append(b, 'e')
	b = strconv.AppendInt(b, exp, 10)
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Errorf("bad decimal fraction: %w", err)
	}
	return f, nil // ±Inf on overflow, refused by the caller
}

// skipScalar skips the value of an ignored extension label. Only scalar
// values are allowed: records are flat.
func (r *cborReader) skipScalar() error {
	major, _, n, err := r.head()
	if err != nil {
		return err
	}
	switch major {
	case cborenc.Uint, cborenc.NegInt, cborenc.Simple:
		return nil
	case cborenc.Bytes, cborenc.Text:
		_, err := r.bytes(n)
		return err
	}
	return fmt.Errorf("nested %s as a field value", majorName(major))
}

// float16to64 converts IEEE 754 half-precision bits to a float64.
func float16to64(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * math.Ldexp(mant, -24)
	case 0x1f:
		if mant == 0 {
			return math.Inf(int(sign))
		}
		return math.NaN()
	}
	return sign * math.Ldexp(mant+1024, exp-25)
}

func majorName(major byte) string {
	return [...]string{"an unsigned integer", "a negative integer", "a byte string", "a text string",
		"an array", "a map", "a tag", "a simple value or float"}[major&7]
}

func simpleName(info byte, arg uint64) string {
	switch {
	case info == 20 || info == 21:
		return "a boolean"
	case info == 22:
		return "null"
	case info == 23:
		return "undefined"
	}
	return "simple value " + strconv.FormatUint(arg, 10)
}

// fieldError is a problem with one field of a record.
type fieldError struct {
	label string // SenML label, or "" for the record as a whole
	err   error
}

func (e *fieldError) Error() string { return e.err.Error() }

// decodeCBOR reads a SenML CBOR pack into z.
func decodeCBOR(z *resolver, pack []byte) error {
	r := cborReader{b: pack}
	major, _, n, err := r.head()
	if err == nil && major == cborenc.Tag && n == tagSelfDescribed {
		major, _, n, err = r.head()
	}
	switch {
	case err != nil:
		return invalidf("senml: pack: %s", err)
	case major != cborenc.Array:
		return invalidf("senml: pack: want an array of records, got %s", majorName(major))
	case n == 0:
		return invalidf("senml: pack: no records")
	case n > uint64(z.maxRecords):
		return tooLarge("senml: pack: more than %d records", z.maxRecords)
	case n > uint64(r.remaining()):
		return invalidf("senml: pack: %s", errTruncated)
	}
	z.grow(int(n))
	var rec rawRecord
	for i := range int(n) {
		rec = rawRecord{}
		if err := r.record(&rec); err != nil {
			var fe *fieldError
			if errors.As(err, &fe) && fe.label != "" {
				return invalidf("senml: record %d: field %q: %s", i, fe.label, fe.err)
			}
			return invalidf("senml: record %d: %s", i, err)
		}
		if err := z.add(i, &rec); err != nil {
			return err
		}
	}
	if r.remaining() != 0 {
		return invalidf("senml: pack: %d bytes after the end of the array", r.remaining())
	}
	return nil
}

// record reads one record map into rec.
func (r *cborReader) record(rec *rawRecord) error {
	major, _, n, err := r.head()
	if err != nil {
		return err
	} else if major != cborenc.Map {
		return fmt.Errorf("want a map, got %s", majorName(major))
	} else if n > maxFieldsPerRecord {
		return fmt.Errorf("more than %d fields", maxFieldsPerRecord)
	}
	for range n {
		major, _, k, err := r.head()
		if err != nil {
			return err
		}
		var l label
		switch {
		case major == cborenc.Uint && k <= 8:
			l = cborLabels[6+k]
		case major == cborenc.NegInt && k <= 5:
			l = cborLabels[5-k]
		case major == cborenc.Uint || major == cborenc.NegInt:
			v := strconv.FormatUint(k, 10)
			if major == cborenc.NegInt {
				v = "-" + strconv.FormatUint(k+1, 10)
				if k == math.MaxUint64 {
					v = "-18446744073709551616"
				}
			}
			return &fieldError{v, errors.New("unknown integer label (the RFC 8428 table is closed)")}
		case major == cborenc.Text:
			key, err := r.bytes(k)
			if err != nil {
				return err
			} else if !utf8.Valid(key) {
				return errors.New("label is not valid UTF-8")
			}
			if len(key) > 0 && key[len(key)-1] == '_' {
				return &fieldError{clip(key), errors.New("unknown must-understand label")}
			}
			if err := r.skipScalar(); err != nil {
				return &fieldError{clip(key), err}
			}
			continue
		default:
			return fmt.Errorf("label must be an integer or text, got %s", majorName(major))
		}
		if !rec.set(l) {
			return &fieldError{l.String(), errors.New("duplicate label")}
		}
		if err := r.value(rec, l); err != nil {
			return &fieldError{l.String(), err}
		}
	}
	return nil
}

// value reads the value of label l into rec.
func (r *cborReader) value(rec *rawRecord, l label) error {
	var err error
	switch l {
	case lBn:
		rec.bn, err = r.text(maxNameLen)
	case lN:
		rec.n, err = r.text(maxNameLen)
	case lBu:
		rec.bu, err = r.text(maxUnitLen)
	case lU:
		rec.u, err = r.text(maxUnitLen)
	case lVs:
		rec.vs, err = r.text(maxStringLen)
	case lBt:
		rec.bt, err = r.number()
	case lBv:
		rec.bv, err = r.number()
	case lBs:
		rec.bs, err = r.number()
	case lV:
		rec.v, err = r.number()
	case lS:
		rec.s, err = r.number()
	case lT:
		rec.t, err = r.number()
	case lUt:
		rec.ut, err = r.number()
	case lVb:
		major, info, _, herr := r.head()
		switch {
		case herr != nil:
			err = herr
		case major == cborenc.Simple && (info == 20 || info == 21):
			rec.vb = info == 21
		default:
			err = errors.New("want a boolean")
		}
	case lVd:
		major, _, n, herr := r.head()
		switch {
		case herr != nil:
			err = herr
		case major != cborenc.Bytes:
			err = fmt.Errorf("want a byte string, got %s", majorName(major))
		case n > maxDataLen:
			err = fmt.Errorf("longer than %d bytes", maxDataLen)
		default:
			rec.vd, err = r.bytes(n)
		}
	case lBver:
		major, _, n, herr := r.head()
		switch {
		case herr != nil:
			err = herr
		case major != cborenc.Uint:
			err = fmt.Errorf("want an unsigned integer, got %s", majorName(major))
		default:
			rec.bver = n
		}
	}
	return err
}
