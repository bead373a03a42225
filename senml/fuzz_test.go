package senml_test

import (
	"encoding/json"
	"errors"
	"math"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/senml"
)

// FuzzDecodeCBOR decodes arbitrary bytes as SenML CBOR. Seeds are in
// testdata/fuzz/FuzzDecodeCBOR.
func FuzzDecodeCBOR(f *testing.F) {
	b, err := senml.EncodeCBOR(pack50(float64(now.Unix())))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := senml.Decode(dev, senml.ContentTypeCBOR, data, now, senml.Limits{})
		checkDecoded(t, got, err)
		if err == nil {
			if werr := cbor.Wellformed(data); werr != nil {
				t.Fatalf("accepted CBOR that fxamacker/cbor finds not well-formed: %v", werr)
			}
		}
	})
}

// FuzzDecodeJSON decodes arbitrary bytes as SenML JSON. Seeds are in
// testdata/fuzz/FuzzDecodeJSON.
func FuzzDecodeJSON(f *testing.F) {
	f.Add([]byte(`[{"bn":"a/","bt":1717243100,"bu":"Cel","v":21.5},{"n":"b","vs":"x"},{"n":"c","vd":"AAE"}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := senml.Decode(dev, senml.ContentTypeJSON, data, now, senml.Limits{})
		checkDecoded(t, got, err)
		if err == nil && !json.Valid(data) {
			t.Fatalf("accepted invalid JSON")
		}
	})
}

// checkDecoded checks the invariants of Decode's result.
func checkDecoded(t *testing.T, got []pylon.Reading, err error) {
	t.Helper()
	if err != nil {
		if got != nil || !errors.Is(err, senml.ErrInvalid) {
			t.Fatalf("got %d readings and error %v, want none and ErrInvalid", len(got), err)
		}
		return
	}
	if len(got) == 0 || len(got) > pylon.MaxReadingsPerMessage {
		t.Fatalf("got %d readings", len(got))
	}
	finite := func(p *float64) bool { return p == nil || !math.IsNaN(*p) && !math.IsInf(*p, 0) }
	for i, r := range got {
		n := 0
		for _, set := range []bool{r.Value != nil, r.StringValue != nil, r.BoolValue != nil, r.DataValue != nil} {
			if set {
				n++
			}
		}
		switch {
		case r.DeviceID != dev:
			t.Fatalf("reading %d: device %q", i, r.DeviceID)
		case r.Name == "" || len(r.Name) > pylon.MaxSenMLNameLen:
			t.Fatalf("reading %d: name %q", i, r.Name)
		case n > 1 || n == 0 && r.Sum == nil:
			t.Fatalf("reading %d: %d values and sum %v", i, n, r.Sum)
		case r.Unit != "" && !senml.KnownUnit(r.Unit):
			t.Fatalf("reading %d: unit %q", i, r.Unit)
		case !finite(r.Value) || !finite(r.Sum):
			t.Fatalf("reading %d: value %v, sum %v", i, r.Value, r.Sum)
		case r.Time.Before(now.Add(-senml.DefaultMaxPast)) || r.Time.After(now.Add(senml.DefaultMaxFuture)):
			t.Fatalf("reading %d: time %v", i, r.Time)
		case r.StringValue != nil && len(*r.StringValue) > pylon.MaxStringValueLen:
			t.Fatalf("reading %d: vs of %d bytes", i, len(*r.StringValue))
		case len(r.DataValue) > pylon.MaxDataValueLen:
			t.Fatalf("reading %d: vd of %d bytes", i, len(r.DataValue))
		}
	}
}
