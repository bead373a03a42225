package senml_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/senml"
)

const dev = "dev-1"

// now is the receiver's clock in most tests: 2024-06-01T12:00:00Z.
var now = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

func f64(v float64) *float64 { return &v }
func str(s string) *string   { return &s }
func boolp(b bool) *bool     { return &b }

// jsonToCBOR converts a SenML JSON pack to SenML CBOR with fxamacker/cbor,
// an encoder independent of the package under test.
func jsonToCBOR(t testing.TB, pack string) []byte {
	t.Helper()
	labels := map[string]int{"bver": -1, "bn": -2, "bt": -3, "bu": -4, "bv": -5, "bs": -6,
		"n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "s": 5, "t": 6, "ut": 7, "vd": 8}
	var recs []map[string]any
	if err := json.Unmarshal([]byte(pack), &recs); err != nil {
		t.Fatalf("bad JSON in test: %v", err)
	}
	out := make([]map[any]any, len(recs))
	for i, r := range recs {
		out[i] = map[any]any{}
		for k, v := range r {
			key, ok := labels[k]
			if !ok {
				out[i][k] = v
				continue
			}
			switch {
			case k == "vd":
				b, err := decodeB64URL(v.(string))
				if err != nil {
					t.Fatal(err)
				}
				out[i][key] = b
			case k == "bver":
				out[i][key] = uint64(v.(float64))
			default:
				out[i][key] = v
			}
		}
	}
	em, err := cbor.EncOptions{ShortestFloat: cbor.ShortestFloat16, Sort: cbor.SortCoreDeterministic}.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	b, err := em.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeB64URL(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(s)
}

// formats runs f for the JSON pack and for its CBOR translation.
func formats(t *testing.T, pack string, f func(t *testing.T, ct int, b []byte)) {
	t.Run("json", func(t *testing.T) { f(t, senml.ContentTypeJSON, []byte(pack)) })
	t.Run("cbor", func(t *testing.T) { f(t, senml.ContentTypeCBOR, jsonToCBOR(t, pack)) })
}

func unix(sec float64) time.Time {
	s, frac := math.Modf(sec)
	return time.Unix(int64(s), int64(math.Round(frac*1e6))*1e3).UTC()
}

// TestDecodeRFCExamples decodes the examples of RFC 8428 §5.1 and checks
// the resolved records that §5.1.4 documents.
func TestDecodeRFCExamples(t *testing.T) {
	const bn = "urn:dev:ow:10e2073a01080063"
	exampleNow := unix(1.320067464e+09 + 200)
	tests := []struct {
		name string
		now  time.Time
		pack string
		want []pylon.Reading
	}{
		{
			name: "5.1.1 single datapoint",
			now:  now,
			pack: `[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]`,
			want: []pylon.Reading{{Name: bn, Unit: "Cel", Time: now, Value: f64(23.1)}},
		},
		{
			name: "5.1.2 multiple datapoints",
			now:  now,
			pack: `[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},
			        {"n":"current","u":"A","v":1.2}]`,
			want: []pylon.Reading{
				{Name: bn + ":voltage", Unit: "V", Time: now, Value: f64(120.1)},
				{Name: bn + ":current", Unit: "A", Time: now, Value: f64(1.2)},
			},
		},
		{
			name: "5.1.2 multiple datapoints with base time",
			now:  unix(1.276020076001e+09 + 60),
			pack: `[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
			        {"n":"current","t":-5,"v":1.2},
			        {"n":"current","t":-4,"v":1.3},
			        {"n":"current","t":-3,"v":1.4},
			        {"n":"current","t":-2,"v":1.5},
			        {"n":"current","t":-1,"v":1.6},
			        {"n":"current","v":1.7}]`,
			want: []pylon.Reading{
				{Name: "urn:dev:ow:10e2073a0108006:voltage", Unit: "V", Time: time.Date(2010, 6, 8, 18, 1, 16, 1e6, time.UTC), Value: f64(120.1)},
				{Name: "urn:dev:ow:10e2073a0108006:current", Unit: "A", Time: time.Date(2010, 6, 8, 18, 1, 11, 1e6, time.UTC), Value: f64(1.2)},
				{Name: "urn:dev:ow:10e2073a0108006:current", Unit: "A", Time: time.Date(2010, 6, 8, 18, 1, 12, 1e6, time.UTC), Value: f64(1.3)},
				{Name: "urn:dev:ow:10e2073a0108006:current", Unit: "A", Time: time.Date(2010, 6, 8, 18, 1, 13, 1e6, time.UTC), Value: f64(1.4)},
				{Name: "urn:dev:ow:10e2073a0108006:current", Unit: "A", Time: time.Date(2010, 6, 8, 18, 1, 14, 1e6, time.UTC), Value: f64(1.5)},
				{Name: "urn:dev:ow:10e2073a0108006:current", Unit: "A", Time: time.Date(2010, 6, 8, 18, 1, 15, 1e6, time.UTC), Value: f64(1.6)},
				{Name: "urn:dev:ow:10e2073a0108006:current", Unit: "A", Time: time.Date(2010, 6, 8, 18, 1, 16, 1e6, time.UTC), Value: f64(1.7)},
			},
		},
		{
			name: "5.1.3 multiple measurements resolve as 5.1.4",
			now:  exampleNow,
			pack: `[{"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,"bu":"%RH","v":20},
			        {"u":"lon","v":24.30621},
			        {"u":"lat","v":60.07965},
			        {"t":60,"v":20.3},
			        {"u":"lon","t":60,"v":24.30622},
			        {"u":"lat","t":60,"v":60.07965},
			        {"t":120,"v":20.7},
			        {"u":"lon","t":120,"v":24.30623},
			        {"u":"lat","t":120,"v":60.07966},
			        {"u":"%EL","t":150,"v":98},
			        {"t":180,"v":21.2},
			        {"u":"lon","t":180,"v":24.30628},
			        {"u":"lat","t":180,"v":60.07967}]`,
			want: resolvedJSON(t, `[
			  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067464e+09,"v":20},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067464e+09,"v":24.30621},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067464e+09,"v":60.07965},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067524e+09,"v":20.3},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067524e+09,"v":24.30622},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067524e+09,"v":60.07965},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067584e+09,"v":20.7},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067584e+09,"v":24.30623},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067584e+09,"v":60.07966},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"%EL","t":1.320067614e+09,"v":98},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067644e+09,"v":21.2},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067644e+09,"v":24.30628},
			  {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067644e+09,"v":60.07967}]`),
		},
		{
			name: "5.1.5 multiple data types",
			now:  now,
			pack: `[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},
			        {"n":"label","vs":"Machine Room"},
			        {"n":"open","vb":false},
			        {"n":"nfc-reader","vd":"aGkgCg"}]`,
			want: []pylon.Reading{
				{Name: bn + ":temp", Unit: "Cel", Time: now, Value: f64(23.1)},
				{Name: bn + ":label", Time: now, StringValue: str("Machine Room")},
				{Name: bn + ":open", Time: now, BoolValue: boolp(false)},
				{Name: bn + ":nfc-reader", Time: now, DataValue: []byte("hi \n")},
			},
		},
		{
			name: "5.1.6 collection of resources",
			now:  unix(1.320078429e+09 + 5),
			pack: `[{"bn":"2001:db8::2/","bt":1.320078429e+09,"n":"temperature","u":"Cel","v":27.2},
			        {"n":"humidity","u":"%RH","v":80},
			        {"bn":"2001:db8::1/","n":"temperature","u":"Cel","v":12.3},
			        {"n":"humidity","u":"%RH","v":67}]`,
			want: []pylon.Reading{
				{Name: "2001:db8::2/temperature", Unit: "Cel", Time: unix(1.320078429e+09), Value: f64(27.2)},
				{Name: "2001:db8::2/humidity", Unit: "%RH", Time: unix(1.320078429e+09), Value: f64(80)},
				{Name: "2001:db8::1/temperature", Unit: "Cel", Time: unix(1.320078429e+09), Value: f64(12.3)},
				{Name: "2001:db8::1/humidity", Unit: "%RH", Time: unix(1.320078429e+09), Value: f64(67)},
			},
		},
		{
			name: "5.1.7 setting an actuator",
			now:  now,
			pack: `[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},
			        {"n":"heat","u":"/","v":1},
			        {"n":"fan","u":"/","v":0}]`,
			want: []pylon.Reading{
				{Name: bn + ":temp", Unit: "Cel", Time: now, Value: f64(23.1)},
				{Name: bn + ":heat", Unit: "/", Time: now, Value: f64(1)},
				{Name: bn + ":fan", Unit: "/", Time: now, Value: f64(0)},
			},
		},
		{
			name: "base value and base sum",
			now:  now,
			pack: `[{"bn":"meter/","bv":1000,"bs":50,"n":"energy","u":"J","v":2.5,"s":1},
			        {"n":"energy","u":"J","v":-0.5},
			        {"n":"total","u":"J"}]`,
			want: []pylon.Reading{
				{Name: "meter/energy", Unit: "J", Time: now, Value: f64(1002.5), Sum: f64(51)},
				{Name: "meter/energy", Unit: "J", Time: now, Value: f64(999.5), Sum: f64(50)},
				{Name: "meter/total", Unit: "J", Time: now, Sum: f64(50)},
			},
		},
		{
			name: "relative times and ignored extension field",
			now:  now,
			pack: `[{"n":"a","t":-60,"v":1,"xyz":"ignored","ut":30},{"n":"a","t":0.5,"v":2}]`,
			want: []pylon.Reading{
				{Name: "a", Time: now.Add(-time.Minute), Value: f64(1)},
				{Name: "a", Time: now.Add(500 * time.Millisecond), Value: f64(2)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			formats(t, tt.pack, func(t *testing.T, ct int, b []byte) {
				got, err := senml.Decode(dev, ct, b, tt.now, senml.Limits{})
				if err != nil {
					t.Fatalf("Decode: got error %v, want nil", err)
				}
				for i := range tt.want {
					tt.want[i].DeviceID = dev
				}
				assertReadings(t, got, tt.want)
			})
		})
	}
}

// resolvedJSON turns a pack of resolved records (n, u, t, v) into readings.
func resolvedJSON(t *testing.T, pack string) []pylon.Reading {
	t.Helper()
	var recs []struct {
		N string  `json:"n"`
		U string  `json:"u"`
		T float64 `json:"t"`
		V float64 `json:"v"`
	}
	if err := json.Unmarshal([]byte(pack), &recs); err != nil {
		t.Fatal(err)
	}
	out := make([]pylon.Reading, len(recs))
	for i, r := range recs {
		out[i] = pylon.Reading{Name: r.N, Unit: r.U, Time: unix(r.T), Value: f64(r.V)}
	}
	return out
}

func assertReadings(t *testing.T, got, want []pylon.Reading) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d readings, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := show(got[i]), show(want[i])
		if g != w {
			t.Errorf("reading %d:\n got %s\nwant %s", i, g, w)
		}
		if !got[i].Time.Equal(want[i].Time) {
			t.Errorf("reading %d: got time %v, want %v", i, got[i].Time, want[i].Time)
		}
	}
}

func show(r pylon.Reading) string {
	r.Time = r.Time.UTC()
	b, _ := json.Marshal(r)
	return string(b)
}

func TestDecodeRejects(t *testing.T) {
	long := strings.Repeat("a", pylon.MaxSenMLNameLen+1)
	tests := []struct {
		name string
		pack string // JSON, also run as CBOR unless jsonOnly
		want string // substring of the error
		code string // pylon error code, EINVALID if empty
		json bool   // JSON only (not representable in CBOR)
	}{
		{name: "empty pack", pack: `[]`, want: "pack: no records"},
		{name: "not an array", pack: `{"n":"a","v":1}`, want: "pack: want an array", json: true},
		{name: "record not an object", pack: `[1]`, want: "record 0: want a", json: true},
		{name: "empty name", pack: `[{"v":1}]`, want: `record 0: field "n": empty name`},
		{name: "name too long", pack: `[{"n":"` + long + `","v":1}]`, want: `field "n"`},
		{name: "resolved name too long", pack: `[{"bn":"` + long[:100] + `","n":"` + long[:40] + `","v":1}]`, want: "resolved name longer than 128"},
		{name: "name bad first char", pack: `[{"n":"-a","v":1}]`, want: "must start with a letter or digit"},
		{name: "name with space", pack: `[{"n":"a b","v":1}]`, want: `contains ' '`},
		{name: "name with unicode", pack: `[{"n":"café","v":1}]`, want: "contains"},
		{name: "base name bad in second record", pack: `[{"n":"a","v":1},{"bn":"x y","n":"z","v":1}]`, want: `record 1: field "n"`},
		{name: "unknown unit", pack: `[{"n":"a","u":"furlong","v":1}]`, want: `senml: record 0: field "u": unknown unit "furlong"`},
		{name: "unknown base unit", pack: `[{"bn":"a","bu":"degC","v":1}]`, want: `field "bu": unknown unit "degC"`},
		{name: "unit wrong case", pack: `[{"n":"a","u":"cel","v":1}]`, want: `unknown unit "cel"`},
		{name: "empty unit", pack: `[{"n":"a","u":"","v":1}]`, want: `unknown unit ""`},
		{name: "secondary unit", pack: `[{"n":"a","u":"kWh","v":1}]`, want: `unknown unit "kWh"`},
		{name: "no value", pack: `[{"n":"a","u":"Cel"}]`, want: "no value"},
		{name: "base value alone is no value", pack: `[{"n":"a","bv":3}]`, want: "no value"},
		{name: "two values", pack: `[{"n":"a","v":1,"vs":"x"}]`, want: "more than one of v, vs, vb and vd"},
		{name: "three values", pack: `[{"n":"a","v":1,"vb":true,"vd":"AA"}]`, want: "more than one"},
		{name: "string for v", pack: `[{"n":"a","v":"1"}]`, want: `field "v": want a number, got a`},
		{name: "bool for vs", pack: `[{"n":"a","vs":true}]`, want: `field "vs": want a`},
		{name: "number for vb", pack: `[{"n":"a","vb":1}]`, want: `field "vb": want a boolean`},
		{name: "number for n", pack: `[{"n":1,"v":1}]`, want: `field "n": want a`},
		{name: "string for t", pack: `[{"n":"a","t":"now","v":1}]`, want: `field "t": want a number`},
		{name: "null value", pack: `[{"n":"a","v":null}]`, want: `field "v": want a number`},
		{name: "vs too long", pack: `[{"n":"a","vs":"` + strings.Repeat("x", pylon.MaxStringValueLen+1) + `"}]`, want: `field "vs": longer than 1024 bytes`},
		{name: "vd too long", pack: `[{"n":"a","vd":"` + strings.Repeat("A", 5472) + `"}]`, want: `field "vd": longer than 4096 bytes`},
		{name: "vd not base64url", pack: `[{"n":"a","vd":"a+b/"}]`, want: "not base64url", json: true},
		{name: "bver too new", pack: `[{"n":"a","bver":11,"v":1}]`, want: `field "bver": version 11 is newer than 10`},
		{name: "bver not integer", pack: `[{"n":"a","bver":10.5,"v":1}]`, want: `field "bver": want an unsigned integer`, json: true},
		{name: "bver negative", pack: `[{"n":"a","bver":-1,"v":1}]`, want: `field "bver": want an unsigned integer`, json: true},
		{name: "must understand", pack: `[{"n":"a","v":1,"foo_":1}]`, want: `field "foo_": unknown must-understand label`},
		{name: "must understand base", pack: `[{"bn":"a","bfoo_":"x","v":1}]`, want: "unknown must-understand label"},
		{name: "nested object value", pack: `[{"n":"a","v":1,"x":{"y":1}}]`, want: `field "x": nested`},
		{name: "nested array value", pack: `[{"n":"a","v":[1]}]`, want: `field "v": `},
		{name: "duplicate label", pack: `[{"n":"a","v":1,"v":2}]`, want: `field "v": duplicate label`, json: true},
		{name: "time too far in future", pack: `[{"n":"a","t":601,"v":1}]`, want: `field "t": time is 601 s in the future`},
		{name: "time too far in past", pack: `[{"n":"a","t":-2592001,"v":1}]`, want: "in the past"},
		{name: "absolute time too old", pack: `[{"n":"a","t":1.5e9,"v":1}]`, want: "in the past"},
		{name: "absolute time in future", pack: `[{"n":"a","bt":1.7172446e9,"t":1,"v":1}]`, want: "in the future"},
		{name: "huge number", pack: `[{"n":"a","v":1e400}]`, want: `field "v": not a finite number`, json: true},
		{name: "value overflows with base", pack: `[{"n":"a","bv":1.7e308,"v":1.7e308}]`, want: "value out of range"},
		{name: "trailing data", pack: `[{"n":"a","v":1}] []`, want: "after the end", json: true},
		{name: "trailing garbage", pack: `[{"n":"a","v":1}]x`, want: "pack", json: true},
		{name: "truncated", pack: `[{"n":"a","v":1}`, want: "truncated", json: true},
		{name: "too many records", pack: "[" + strings.Repeat(`{"n":"a","v":1},`, pylon.MaxReadingsPerMessage) + `{"n":"a","v":1}]`, want: "more than 1000 records", code: pylon.ETOOLARGE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := func(t *testing.T, ct int, b []byte) {
				got, err := senml.Decode(dev, ct, b, now, senml.Limits{})
				if err == nil {
					t.Fatalf("Decode: got %d readings and no error, want error containing %q", len(got), tt.want)
				}
				if got != nil {
					t.Errorf("got %d readings with the error, want none", len(got))
				}
				if !errors.Is(err, senml.ErrInvalid) {
					t.Errorf("got error %v, want one wrapping ErrInvalid", err)
				}
				wantCode := tt.code
				if wantCode == "" {
					wantCode = pylon.EINVALID
				}
				if code := pylon.ErrorCode(err); code != wantCode {
					t.Errorf("got code %q, want %q", code, wantCode)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("got error %q, want it to contain %q", err, tt.want)
				}
				if msg := pylon.ErrorMessage(err); msg != err.Error() {
					t.Errorf("got user message %q, want %q", msg, err.Error())
				}
			}
			if tt.json {
				check(t, senml.ContentTypeJSON, []byte(tt.pack))
				return
			}
			formats(t, tt.pack, check)
		})
	}
}

// TestDecodeCBORRejects covers what only CBOR can express.
func TestDecodeCBORRejects(t *testing.T) {
	tests := []struct {
		name string
		hex  string
		want string
	}{
		{name: "NaN half", hex: "81a2006161 02f97e00", want: `field "v": not a finite number`},
		{name: "Inf half", hex: "81a2006161 02f97c00", want: "not a finite number"},
		{name: "-Inf single", hex: "81a2006161 02faff800000", want: "not a finite number"},
		{name: "NaN double", hex: "81a2006161 02fb7ff8000000000000", want: "not a finite number"},
		{name: "NaN in time", hex: "81a3006161 0201 06f97e00", want: `field "t": not a finite number`},
		{name: "NaN in base time", hex: "81a3006161 0201 22f97e00", want: `field "bt": not a finite number`},
		{name: "NaN in sum", hex: "81a2006161 05f97e00", want: `field "s": not a finite number`},
		{name: "Inf in base value", hex: "81a3006161 0201 24f97c00", want: `field "bv": not a finite number`},
		{name: "unknown integer label", hex: "81a3006161 0201 0901", want: `field "9": unknown integer label`},
		{name: "unknown negative label", hex: "81a3006161 0201 2601", want: `field "-7": unknown integer label`},
		{name: "must-understand text label", hex: "81a3006161 0201 62785f01", want: `field "x_": unknown must-understand label`},
		{name: "nested extension value", hex: "81a3006161 0201 6178a0", want: `field "x": nested a map`},
		{name: "tagged extension value", hex: "81a3006161 0201 6178c101", want: "nested a tag"},
		{name: "duplicate label", hex: "81a3006161 0201 0202", want: `field "v": duplicate label`},
		{name: "byte string name", hex: "81a2004161 0201", want: `field "n": want a text string, got a byte string`},
		{name: "text string data", hex: "81a2006161 086161", want: `field "vd": want a byte string`},
		{name: "invalid UTF-8 in vs", hex: "81a2006161 0362c328", want: `field "vs": not valid UTF-8`},
		{name: "invalid UTF-8 in name", hex: "81a2006261ff 0201", want: "not valid UTF-8"},
		{name: "bver negative", hex: "81a3006161 0201 2020", want: `field "bver": want an unsigned integer`},
		{name: "bver float", hex: "81a3006161 0201 20f94900", want: `field "bver": want an unsigned integer`},
		{name: "vb not bool", hex: "81a2006161 04f6", want: `field "vb": want a boolean`},
		{name: "value null", hex: "81a2006161 02f6", want: "want a number, got null"},
		{name: "value tag 1", hex: "81a2006161 02c11a5f5e1000", want: "want a number, got tag 1"},
		{name: "bignum decimal fraction", hex: "81a2006161 02c48221c24101", want: "decimal fraction"},
		{name: "decimal fraction overflow", hex: "81a2006161 02c482190fa001", want: "not a finite number"},
		{name: "indefinite array", hex: "9fa2006161 0201ff", want: "indefinite-length"},
		{name: "indefinite text", hex: "81a2007f6161ff 0201", want: "indefinite-length"},
		{name: "indefinite map", hex: "81bf006161 0201ff", want: "indefinite-length"},
		{name: "reserved info", hex: "81a2006161 021c", want: "reserved additional information"},
		{name: "truncated float", hex: "81a2006161 02fb7ff8", want: "truncated"},
		{name: "truncated string", hex: "81a2006461", want: "truncated"},
		{name: "truncated pack", hex: "82a2006161 0201", want: "truncated"},
		{name: "array length beyond input", hex: "9903e8 a2006161 0201", want: "truncated"},
		{name: "top-level map", hex: "a2006161 0201", want: "want an array of records, got a map"},
		{name: "record not a map", hex: "8101", want: "record 0: want a map, got an unsigned integer"},
		{name: "trailing bytes", hex: "81a2006161 0201 00", want: "1 bytes after the end"},
		{name: "unexpected break", hex: "81a2006161 02ff", want: "break"},
		{name: "other top-level tag", hex: "c081a2006161 0201", want: "want an array of records, got a tag"},
		{name: "huge map", hex: "81b9ffff", want: "more than 64 fields"},
		{name: "label is a map", hex: "81a1a0 00", want: "label must be an integer or text"},
		{name: "malformed simple value", hex: "81a2006161 02f801", want: "malformed simple value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := hex.DecodeString(strings.ReplaceAll(tt.hex, " ", ""))
			if err != nil {
				t.Fatal(err)
			}
			got, err := senml.Decode(dev, senml.ContentTypeCBOR, b, now, senml.Limits{})
			if err == nil {
				t.Fatalf("Decode: got %d readings and no error, want error containing %q", len(got), tt.want)
			}
			if !errors.Is(err, senml.ErrInvalid) {
				t.Errorf("got error %v, want one wrapping ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestDecodeCBORNumbers(t *testing.T) {
	tests := []struct {
		name string
		hex  string // the encoding of v
		want float64
	}{
		{"uint", "1819", 25},
		{"negative int", "3818", -25},
		{"big uint", "1b000000174876e800", 1e11},
		{"half", "f94da0", 22.5},
		{"half subnormal", "f90001", 5.960464477539063e-08},
		{"negative half", "f9c000", -2},
		{"single", "fa41bb3333", 23.399999618530273},
		{"double", "fb403719999999999a", 23.1},
		{"decimal fraction", "c482201901a3", 41.9},
		{"decimal fraction negative mantissa", "c4822038c8", -20.1},
		{"decimal fraction positive exponent", "c482020c", 1200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := hex.DecodeString("81a200616102" + tt.hex)
			got, err := senml.Decode(dev, senml.ContentTypeCBOR, b, now, senml.Limits{})
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if v := *got[0].Value; v != tt.want {
				t.Errorf("got %v, want %v", v, tt.want)
			}
		})
	}
}

func TestDecodeTime(t *testing.T) {
	nowSec := float64(now.Unix())
	tests := []struct {
		name string
		t    float64
		lim  senml.Limits
		want time.Time
		err  bool
	}{
		{name: "zero is now", t: 0, want: now},
		{name: "relative past", t: -3600, want: now.Add(-time.Hour)},
		{name: "relative future within skew", t: 600, want: now.Add(10 * time.Minute)},
		{name: "relative future beyond skew", t: 600.5, err: true},
		{name: "relative just below 2^28", t: 1<<28 - 1, err: true},
		{name: "absolute at 2^28 is far past", t: 1 << 28, err: true},
		{name: "absolute now", t: nowSec, want: now},
		{name: "absolute with microseconds", t: nowSec - 0.25, want: now.Add(-250 * time.Millisecond)},
		{name: "absolute 30 days ago", t: nowSec - 30*86400, want: now.Add(-30 * 24 * time.Hour)},
		{name: "absolute 30 days and 1 s ago", t: nowSec - 30*86400 - 1, err: true},
		{name: "absolute future within skew", t: nowSec + 600, want: now.Add(10 * time.Minute)},
		{name: "absolute future beyond skew", t: nowSec + 601, err: true},
		{name: "custom past limit", t: -7200, lim: senml.Limits{MaxPast: time.Hour}, err: true},
		{name: "custom future limit", t: 3000, lim: senml.Limits{MaxFuture: time.Hour}, want: now.Add(50 * time.Minute)},
		{name: "huge negative", t: -1e300, err: true},
		{name: "relative 200 years ago, limit capped", t: -200 * 365 * 86400, lim: senml.Limits{MaxPast: 1 << 62}, err: true},
		{name: "relative 50 years ago, huge limit", t: -50 * 365 * 86400, lim: senml.Limits{MaxPast: 1 << 62}, want: now.Add(-50 * 365 * 24 * time.Hour)},
		{name: "huge positive", t: 1e300, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs := []senml.Record{{Name: "a", Value: f64(1), Time: tt.t}}
			b, err := senml.EncodeCBOR(recs)
			if err != nil {
				t.Fatal(err)
			}
			got, err := senml.Decode(dev, senml.ContentTypeCBOR, b, now, tt.lim)
			if tt.err {
				if err == nil {
					t.Fatalf("got time %v and no error, want error", got[0].Time)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !got[0].Time.Equal(tt.want) {
				t.Errorf("got time %v, want %v", got[0].Time, tt.want)
			}
			if got[0].Time.Location() != time.UTC {
				t.Errorf("got location %v, want UTC", got[0].Time.Location())
			}
		})
	}
}

// TestDecodeTimeMicroseconds: relative times are kept to the microsecond,
// as absolute ones, even when the receiver's clock has nanoseconds.
func TestDecodeTimeMicroseconds(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.FixedZone("CET", 3600))
	want := time.Date(2030, 1, 2, 2, 4, 5, 123456000, time.UTC)
	for _, tt := range []struct {
		t    float64
		want time.Time
	}{
		{0, want},
		{-1.5, want.Add(-1500 * time.Millisecond)},
		{float64(want.Unix()) - 2, want.Add(-2*time.Second - 123456*time.Microsecond)},
	} {
		b, err := senml.EncodeCBOR([]senml.Record{{Name: "a", Value: f64(1), Time: tt.t}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := senml.Decode(dev, senml.ContentTypeCBOR, b, at, senml.Limits{})
		if err != nil {
			t.Fatalf("t %v: %v", tt.t, err)
		}
		if !got[0].Time.Equal(tt.want) || got[0].Time.Nanosecond()%1000 != 0 || got[0].Time.Location() != time.UTC {
			t.Errorf("t %v: got %v, want %v", tt.t, got[0].Time, tt.want)
		}
	}
}

func TestDecodeMaxRecords(t *testing.T) {
	recs := make([]senml.Record, 11)
	for i := range recs {
		recs[i] = senml.Record{Name: "a", Value: f64(float64(i))}
	}
	b, err := senml.EncodeCBOR(recs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := senml.Decode(dev, senml.ContentTypeCBOR, b, now, senml.Limits{MaxRecords: 10}); pylon.ErrorCode(err) != pylon.ETOOLARGE {
		t.Errorf("11 records, limit 10: got %v, want a too_large error", err)
	}
	if got, err := senml.Decode(dev, senml.ContentTypeCBOR, b, now, senml.Limits{MaxRecords: 11}); err != nil || len(got) != 11 {
		t.Errorf("11 records, limit 11: got %d readings and %v, want 11 and nil", len(got), err)
	}
}

func TestDecodeOversize(t *testing.T) {
	b := make([]byte, pylon.MaxDecodedBytes+1)
	for _, ct := range []int{senml.ContentTypeCBOR, senml.ContentTypeJSON} {
		_, err := senml.Decode(dev, ct, b, now, senml.Limits{})
		if !errors.Is(err, senml.ErrInvalid) || pylon.ErrorCode(err) != pylon.ETOOLARGE {
			t.Errorf("content type %d: got %v, want a too_large ErrInvalid", ct, err)
		}
	}
}

func TestDecodeUnsupportedContentType(t *testing.T) {
	_, err := senml.Decode(dev, 50, []byte(`[{"n":"a","v":1}]`), now, senml.Limits{})
	if !errors.Is(err, senml.ErrInvalid) || !strings.Contains(err.Error(), "unsupported content format 50") {
		t.Errorf("got %v, want unsupported content format", err)
	}
}

// TestDecodeDeepNesting checks that deep nesting fails fast, at the first
// level where a record or value is expected, without recursion.
func TestDecodeDeepNesting(t *testing.T) {
	const depth = 100_000
	tests := []struct {
		name string
		ct   int
		pack []byte
	}{
		{"json arrays", senml.ContentTypeJSON, []byte(strings.Repeat("[", depth))},
		{"json objects in value", senml.ContentTypeJSON, []byte(`[{"n":"a","x":` + strings.Repeat(`{"a":`, depth))},
		{"cbor arrays", senml.ContentTypeCBOR, bytes.Repeat([]byte{0x81}, depth)},
		{"cbor maps in value", senml.ContentTypeCBOR, append([]byte{0x81, 0xa2, 0x00, 0x61, 0x61, 0x61, 0x78}, bytes.Repeat([]byte{0xa1, 0x00}, depth)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := senml.Decode(dev, tt.ct, tt.pack, now, senml.Limits{})
			if !errors.Is(err, senml.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("took %v, want well under a second", d)
			}
		})
	}
}

func TestKnownUnit(t *testing.T) {
	for _, u := range []string{"m", "kg", "Cel", "%RH", "%EL", "/", "%", "beat/min", "S/m", "B", "VA", "VAs", "var", "vars", "J/m", "kg/m3", "deg", "NTU", "lat", "lon", "Bspl", "dBW", "m/s2", "cd/m2"} {
		if !senml.KnownUnit(u) {
			t.Errorf("KnownUnit(%q): got false, want true", u)
		}
	}
	for _, u := range []string{"", "furlong", "cel", "degC", "°C", "kWh", "ms", "M", "m/s^2"} {
		if senml.KnownUnit(u) {
			t.Errorf("KnownUnit(%q): got true, want false", u)
		}
	}
}

func TestDecodeSelfDescribedTag(t *testing.T) {
	b, _ := hex.DecodeString("d9d9f7" + "81a2006161" + "0201")
	got, err := senml.Decode(dev, senml.ContentTypeCBOR, b, now, senml.Limits{})
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if len(got) != 1 || *got[0].Value != 1 {
		t.Errorf("got %+v, want one reading of value 1", got)
	}
}

// TestDecodeNoAliasing checks that readings do not share memory with the
// input, so that callers may reuse their buffers.
func TestDecodeNoAliasing(t *testing.T) {
	b, err := senml.EncodeCBOR([]senml.Record{{Name: "a", DataValue: []byte{1, 2, 3}}, {Name: "b", StringValue: str("xyz")}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := senml.Decode(dev, senml.ContentTypeCBOR, b, now, senml.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0
	}
	if !bytes.Equal(got[0].DataValue, []byte{1, 2, 3}) || got[0].Name != "a" || *got[1].StringValue != "xyz" {
		t.Errorf("readings changed with the input buffer: %+v", got)
	}
}

func TestRoundTrip(t *testing.T) {
	recs := []senml.Record{
		{BaseName: "urn:dev:x:", BaseTime: float64(now.Unix()) - 100, BaseUnit: "Cel", BaseVersion: 10, Name: "t1", Value: f64(21.5), Time: 1.25},
		{Name: "t2", Value: f64(-3.0000001)},
		{Name: "hum", Unit: "%RH", Value: f64(45), UpdateTime: 60},
		{Name: "msg", StringValue: str("hello, wörld")},
		{Name: "door", BoolValue: boolp(true)},
		{Name: "blob", DataValue: []byte{0, 1, 2, 0xff}},
		{Name: "empty-blob", DataValue: []byte{}},
		{BaseSum: f64(100), Name: "energy", Unit: "J", Sum: f64(0.5)},
		{BaseValue: 1000, Name: "offset", Unit: "m", Value: f64(1e-9)},
		{Name: "big", Value: f64(1e300)},
		{Name: "negzero", Value: f64(math.Copysign(0, -1))},
	}
	base := float64(now.Unix()) - 100
	want := []pylon.Reading{
		{Name: "urn:dev:x:t1", Unit: "Cel", Time: unix(base + 1.25), Value: f64(21.5)},
		{Name: "urn:dev:x:t2", Unit: "Cel", Time: unix(base), Value: f64(-3.0000001)},
		{Name: "urn:dev:x:hum", Unit: "%RH", Time: unix(base), Value: f64(45)},
		{Name: "urn:dev:x:msg", Unit: "Cel", Time: unix(base), StringValue: str("hello, wörld")},
		{Name: "urn:dev:x:door", Unit: "Cel", Time: unix(base), BoolValue: boolp(true)},
		{Name: "urn:dev:x:blob", Unit: "Cel", Time: unix(base), DataValue: []byte{0, 1, 2, 0xff}},
		{Name: "urn:dev:x:empty-blob", Unit: "Cel", Time: unix(base), DataValue: []byte{}},
		{Name: "urn:dev:x:energy", Unit: "J", Time: unix(base), Sum: f64(100.5)},
		{Name: "urn:dev:x:offset", Unit: "m", Time: unix(base), Value: f64(1000 + 1e-9), Sum: f64(100)},
		{Name: "urn:dev:x:big", Unit: "Cel", Time: unix(base), Value: f64(1e300), Sum: f64(100)},
		{Name: "urn:dev:x:negzero", Unit: "Cel", Time: unix(base), Value: f64(1000), Sum: f64(100)},
	}
	for i := range want {
		want[i].DeviceID = dev
	}
	for _, enc := range []struct {
		name string
		ct   int
		f    func([]senml.Record) ([]byte, error)
	}{
		{"cbor", senml.ContentTypeCBOR, senml.EncodeCBOR},
		{"json", senml.ContentTypeJSON, senml.EncodeJSON},
	} {
		t.Run(enc.name, func(t *testing.T) {
			b, err := enc.f(recs)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			got, err := senml.Decode(dev, enc.ct, b, now, senml.Limits{})
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			assertReadings(t, got, want)
			// DataValue must keep the difference between nil and empty.
			if got[6].DataValue == nil {
				t.Errorf("empty vd: got nil, want empty non-nil")
			}
		})
	}
}

func TestEncodeRejects(t *testing.T) {
	tests := []struct {
		name string
		rec  senml.Record
		want string
	}{
		{"NaN value", senml.Record{Name: "a", Value: f64(math.NaN())}, `record 0: field "v": not a finite number`},
		{"Inf time", senml.Record{Name: "a", Value: f64(1), Time: math.Inf(1)}, `field "t": not a finite number`},
		{"-Inf base time", senml.Record{Name: "a", Value: f64(1), BaseTime: math.Inf(-1)}, `field "bt"`},
		{"NaN sum", senml.Record{Name: "a", Sum: f64(math.NaN())}, `field "s"`},
		{"bad UTF-8", senml.Record{Name: "a", StringValue: str("\xff")}, `field "vs": not valid UTF-8`},
		{"negative version", senml.Record{Name: "a", Value: f64(1), BaseVersion: -1}, `field "bver"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, f := range []func([]senml.Record) ([]byte, error){senml.EncodeCBOR, senml.EncodeJSON} {
				_, err := f([]senml.Record{tt.rec})
				if !errors.Is(err, senml.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("got %v, want ErrInvalid containing %q", err, tt.want)
				}
			}
		})
	}
}

// TestEncodeCBORSingleReading pins the encoding of the reading that the
// envelope's size budget is built on.
func TestEncodeCBORSingleReading(t *testing.T) {
	b, err := senml.EncodeCBOR([]senml.Record{{Name: "temp", Unit: "Cel", Value: f64(22.5)}})
	if err != nil {
		t.Fatal(err)
	}
	const want = "81a3006474656d700163436" + "56c02f94da0"
	if got := hex.EncodeToString(b); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	t.Logf("single reading: %d bytes", len(b))
}

// TestEncodeCBORShortestFloat checks every float16 value and a sample of
// others against fxamacker/cbor's ShortestFloat16 encoding, and that each
// decodes back exactly.
func TestEncodeCBORShortestFloat(t *testing.T) {
	em, err := cbor.EncOptions{ShortestFloat: cbor.ShortestFloat16}.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	var values []float64
	for h := range 1 << 16 {
		var f float64
		if err := cbor.Unmarshal([]byte{0xf9, byte(h >> 8), byte(h)}, &f); err != nil {
			t.Fatal(err)
		}
		values = append(values, f)
	}
	values = append(values, 0.1, 21.3, 1e-300, 3.4e38, 1.5e-45, 123456.789, float64(float32(0.1)), 65504, 65520, 6.1e-5, 1<<70)
	for _, v := range values {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		b, err := senml.EncodeCBOR([]senml.Record{{Name: "a", Value: &v}})
		if err != nil {
			t.Fatalf("EncodeCBOR(%v): %v", v, err)
		}
		enc := b[6:] // after 81 a2 00 61 61 02
		if v != math.Trunc(v) || (v == 0 && math.Signbit(v)) || math.Abs(v) >= 1<<63 {
			want, _ := em.Marshal(v)
			if !bytes.Equal(enc, want) {
				t.Errorf("%v: got %x, want %x", v, enc, want)
			}
		} else if enc[0]>>5 > 1 {
			t.Errorf("%v: got %x, want an integer", v, enc)
		}
		got, err := senml.Decode(dev, senml.ContentTypeCBOR, b, now, senml.Limits{})
		if err != nil {
			t.Fatalf("Decode(%x): %v", b, err)
		}
		if g := *got[0].Value; g != v || math.Signbit(g) != math.Signbit(v) {
			t.Errorf("%v: decoded %v", v, g)
		}
	}
}

func TestErrorMessagesAreBounded(t *testing.T) {
	pack := `[{"n":"a","u":"` + strings.Repeat("x", 10000) + `","v":1}]`
	_, err := senml.Decode(dev, senml.ContentTypeJSON, []byte(pack), now, senml.Limits{})
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("got error of %d bytes, want an error under 200 bytes", len(err.Error()))
	}
}

// TestDecodeCBORAndJSONAgree cross-checks CBOR and JSON decoding of the same
// records.
func TestDecodeCBORAndJSONAgree(t *testing.T) {
	recs := pack50(float64(now.Unix()))
	cb, err := senml.EncodeCBOR(recs)
	if err != nil {
		t.Fatal(err)
	}
	js, err := senml.EncodeJSON(recs)
	if err != nil {
		t.Fatal(err)
	}
	fromCBOR, err := senml.Decode(dev, senml.ContentTypeCBOR, cb, now, senml.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := senml.Decode(dev, senml.ContentTypeJSON, js, now, senml.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromCBOR, fromJSON) {
		t.Errorf("CBOR and JSON decode differently")
	}
	t.Logf("50-record pack: %d bytes CBOR, %d bytes JSON", len(cb), len(js))
}
