package senml

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"unicode/utf8"

	"github.com/pylonhq/pylon/internal/cborenc"
)

// Record is one SenML record as written by a device, with its fields
// unresolved (RFC 8428 §4). Zero and nil fields are left out of the
// encoding; for the time, value and base fields a zero value means the same
// as an absent one.
type Record struct {
	BaseName    string   // bn
	BaseTime    float64  // bt, seconds
	BaseUnit    string   // bu
	BaseValue   float64  // bv
	BaseSum     *float64 // bs
	BaseVersion int      // bver; 0 leaves it out
	Name        string   // n
	Unit        string   // u
	Value       *float64 // v
	StringValue *string  // vs
	BoolValue   *bool    // vb
	DataValue   []byte   // vd; nil leaves it out
	Sum         *float64 // s
	Time        float64  // t, seconds: absolute if ≥ 2^28, else relative to now
	UpdateTime  float64  // ut, seconds
}

// check reports the problems that would make the record unencodable or
// certainly rejected by Decode: non-finite numbers, invalid UTF-8 and a
// negative version.
func (r *Record) check(i int) error {
	for _, f := range [...]struct {
		l label
		v *float64
	}{
		{lBt, &r.BaseTime}, {lBv, &r.BaseValue}, {lBs, r.BaseSum}, {lV, r.Value},
		{lS, r.Sum}, {lT, &r.Time}, {lUt, &r.UpdateTime},
	} {
		if f.v != nil && (math.IsNaN(*f.v) || math.IsInf(*f.v, 0)) {
			return recordError(i, f.l, "not a finite number")
		}
	}
	for _, f := range [...]struct {
		l label
		s *string
	}{
		{lBn, &r.BaseName}, {lBu, &r.BaseUnit}, {lN, &r.Name}, {lU, &r.Unit}, {lVs, r.StringValue},
	} {
		if f.s != nil && !utf8.ValidString(*f.s) {
			return recordError(i, f.l, "not valid UTF-8")
		}
	}
	if r.BaseVersion < 0 {
		return recordError(i, lBver, "negative version")
	}
	return nil
}

// EncodeCBOR encodes recs as an application/senml+cbor pack, writing every
// number in its shortest exact form (see the package documentation). It
// fails, with an error wrapping ErrInvalid, on NaN, ±Inf or invalid UTF-8.
func EncodeCBOR(recs []Record) ([]byte, error) {
	b := make([]byte, 0, 24*len(recs)+8)
	b = cborenc.AppendHead(b, cborenc.Array, uint64(len(recs)))
	for i := range recs {
		r := &recs[i]
		if err := r.check(i); err != nil {
			return nil, err
		}
		n := 0
		for _, present := range [...]bool{
			r.Name != "", r.Unit != "", r.Value != nil, r.StringValue != nil, r.BoolValue != nil,
			r.Sum != nil, r.Time != 0, r.UpdateTime != 0, r.DataValue != nil,
			r.BaseVersion != 0, r.BaseName != "", r.BaseTime != 0, r.BaseUnit != "",
			r.BaseValue != 0, r.BaseSum != nil,
		} {
			if present {
				n++
			}
		}
		b = cborenc.AppendHead(b, cborenc.Map, uint64(n))
		// Keys in the deterministic order of RFC 8949 §4.2.1: 0..8, then -1..-6.
		if r.Name != "" {
			b = cborenc.AppendText(append(b, 0x00), r.Name)
		}
		if r.Unit != "" {
			b = cborenc.AppendText(append(b, 0x01), r.Unit)
		}
		if r.Value != nil {
			b = cborenc.AppendNumber(append(b, 0x02), *r.Value)
		}
		if r.StringValue != nil {
			b = cborenc.AppendText(append(b, 0x03), *r.StringValue)
		}
		if r.BoolValue != nil {
			v := byte(0xf4)
			if *r.BoolValue {
				v = 0xf5
			}
			b = append(b, 0x04, v)
		}
		if r.Sum != nil {
			b = cborenc.AppendNumber(append(b, 0x05), *r.Sum)
		}
		if r.Time != 0 {
			b = cborenc.AppendNumber(append(b, 0x06), r.Time)
		}
		if r.UpdateTime != 0 {
			b = cborenc.AppendNumber(append(b, 0x07), r.UpdateTime)
		}
		if r.DataValue != nil {
			b = cborenc.AppendHead(append(b, 0x08), cborenc.Bytes, uint64(len(r.DataValue)))
			b = append(b, r.DataValue...)
		}
		if r.BaseVersion != 0 {
			b = cborenc.AppendHead(append(b, 0x20), cborenc.Uint, uint64(r.BaseVersion))
		}
		if r.BaseName != "" {
			b = cborenc.AppendText(append(b, 0x21), r.BaseName)
		}
		if r.BaseTime != 0 {
			b = cborenc.AppendNumber(append(b, 0x22), r.BaseTime)
		}
		if r.BaseUnit != "" {
			b = cborenc.AppendText(append(b, 0x23), r.BaseUnit)
		}
		if r.BaseValue != 0 {
			b = cborenc.AppendNumber(append(b, 0x24), r.BaseValue)
		}
		if r.BaseSum != nil {
			b = cborenc.AppendNumber(append(b, 0x25), *r.BaseSum)
		}
	}
	return b, nil
}

// jsonRecordOut is the JSON shape of a Record.
type jsonRecordOut struct {
	BaseName    string   `json:"bn,omitempty"`
	BaseTime    float64  `json:"bt,omitempty"`
	BaseUnit    string   `json:"bu,omitempty"`
	BaseValue   float64  `json:"bv,omitempty"`
	BaseSum     *float64 `json:"bs,omitempty"`
	BaseVersion int      `json:"bver,omitempty"`
	Name        string   `json:"n,omitempty"`
	Unit        string   `json:"u,omitempty"`
	Value       *float64 `json:"v,omitempty"`
	StringValue *string  `json:"vs,omitempty"`
	BoolValue   *bool    `json:"vb,omitempty"`
	DataValue   *string  `json:"vd,omitempty"`
	Sum         *float64 `json:"s,omitempty"`
	Time        float64  `json:"t,omitempty"`
	UpdateTime  float64  `json:"ut,omitempty"`
}

// EncodeJSON encodes recs as an application/senml+json pack, with vd in
// base64url without padding. It fails, with an error wrapping ErrInvalid, on
// NaN, ±Inf or invalid UTF-8.
func EncodeJSON(recs []Record) ([]byte, error) {
	out := make([]jsonRecordOut, len(recs))
	for i := range recs {
		r := &recs[i]
		if err := r.check(i); err != nil {
			return nil, err
		}
		out[i] = jsonRecordOut{
			BaseName: r.BaseName, BaseTime: r.BaseTime, BaseUnit: r.BaseUnit, BaseValue: r.BaseValue,
			BaseSum: r.BaseSum, BaseVersion: r.BaseVersion, Name: r.Name, Unit: r.Unit, Value: r.Value,
			StringValue: r.StringValue, BoolValue: r.BoolValue, Sum: r.Sum, Time: r.Time, UpdateTime: r.UpdateTime,
		}
		if r.DataValue != nil {
			s := base64.RawURLEncoding.EncodeToString(r.DataValue)
			out[i].DataValue = &s
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("encode senml json: %w", err)
	}
	return b, nil
}
