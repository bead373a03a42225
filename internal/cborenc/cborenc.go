// Package cborenc appends CBOR (RFC 8949) data items to a byte slice:
// heads in their shortest form, text, and numbers in their shortest exact
// form. It is the encoder that SenML packs (package senml) and the
// store's blocks of readings (package sqlite) share; each decodes on its
// own terms, with the major types named here.
package cborenc

import "math"

// Major types.
const (
	Uint   = 0
	NegInt = 1
	Bytes  = 2
	Text   = 3
	Array  = 4
	Map    = 5
	Tag    = 6
	Simple = 7 // and floats
)

// AppendHead appends a CBOR head in its shortest form.
func AppendHead(b []byte, major byte, arg uint64) []byte {
	m := major << 5
	switch {
	case arg < 24:
		return append(b, m|byte(arg))
	case arg <= math.MaxUint8:
		return append(b, m|24, byte(arg))
	case arg <= math.MaxUint16:
		return append(b, m|25, byte(arg>>8), byte(arg))
	case arg <= math.MaxUint32:
		return append(b, m|26, byte(arg>>24), byte(arg>>16), byte(arg>>8), byte(arg))
	}
	return append(b, m|27, byte(arg>>56), byte(arg>>48), byte(arg>>40), byte(arg>>32),
		byte(arg>>24), byte(arg>>16), byte(arg>>8), byte(arg))
}

// AppendText appends s as a text string.
func AppendText(b []byte, s string) []byte {
	return append(AppendHead(b, Text, uint64(len(s))), s...)
}

// AppendNumber appends f as an integer if it is integral and fits, and
// otherwise as the narrowest float that holds it exactly. f is finite.
func AppendNumber(b []byte, f float64) []byte {
	const two63 = 1 << 63
	if f == math.Trunc(f) && f >= -two63 && f < two63 && !(f == 0 && math.Signbit(f)) {
		if f >= 0 {
			return AppendHead(b, Uint, uint64(f))
		}
		return AppendHead(b, NegInt, uint64(-(f + 1)))
	}
	return AppendFloat(b, f)
}

// AppendFloat appends f as the narrowest float (half, single or double
// precision) that holds it exactly, as fxamacker/cbor's ShortestFloat16
// does. f is finite.
func AppendFloat(b []byte, f float64) []byte {
	if f32 := float32(f); float64(f32) == f {
		if h, ok := float32to16(f32); ok {
			return append(b, 0xf9, byte(h>>8), byte(h))
		}
		u := math.Float32bits(f32)
		return append(b, 0xfa, byte(u>>24), byte(u>>16), byte(u>>8), byte(u))
	}
	u := math.Float64bits(f)
	return append(b, 0xfb, byte(u>>56), byte(u>>48), byte(u>>40), byte(u>>32),
		byte(u>>24), byte(u>>16), byte(u>>8), byte(u))
}

// float32to16 returns the half-precision bits of f if f is exactly
// representable as a (normal or subnormal) float16. f is finite.
func float32to16(f float32) (uint16, bool) {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	exp := int(u>>23) & 0xff
	mant := u & 0x7fffff
	if exp == 0 {
		if mant == 0 {
			return sign, true // ±0
		}
		return 0, false // float32 subnormals are far below float16's range
	}
	e := exp - 127
	switch {
	case e >= -14 && e <= 15: // normal float16
		if mant&0x1fff != 0 {
			return 0, false
		}
		return sign | uint16(e+15)<<10 | uint16(mant>>13), true
	case e >= -24 && e < -14: // subnormal float16: value = k × 2^-24
		full := mant | 0x800000
		shift := uint(-e - 1)
		if full&(1<<shift-1) != 0 {
			return 0, false
		}
		return sign | uint16(full>>shift), true
	}
	return 0, false
}
