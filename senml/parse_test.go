package senml_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/senml"
)

// TestParseJSONReencodes checks that JSON → ParseJSON → EncodeCBOR keeps
// the meaning: both packs decode to the same readings.
func TestParseJSONReencodes(t *testing.T) {
	nowSec := fmt.Sprint(now.Unix())
	tests := map[string]string{
		"single":       `[{"n":"temp","u":"Cel","v":22.5}]`,
		"base fields":  `[{"bn":"dev:","bt":` + nowSec + `,"bu":"A","bv":10,"bver":5,"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3},{"n":"voltage","u":"V","v":0}]`,
		"value kinds":  `[{"n":"s","vs":"hello"},{"n":"b","vb":false},{"n":"d","vd":"AAEC"},{"n":"e","vd":""},{"n":"sum","u":"J","s":12.5}]`,
		"base sum":     `[{"bn":"x/","bs":0,"n":"a","s":1},{"n":"b","v":2,"s":3}]`,
		"ignored":      `[{"n":"temp","v":1,"foo":"bar","ut":30}]`,
		"new base":     `[{"bn":"a/","bt":` + nowSec + `,"n":"x","v":1},{"bn":"b/","bt":` + nowSec + `.5,"n":"x","v":2}]`,
		"zero base ok": `[{"bn":"","bt":0,"bv":0,"n":"x","v":1}]`,
		"negative":     `[{"n":"x","u":"Cel","v":-40.25,"t":-0.5}]`,
	}
	for name, pack := range tests {
		t.Run(name, func(t *testing.T) {
			recs, err := senml.ParseJSON([]byte(pack))
			if err != nil {
				t.Fatalf("ParseJSON: %v", err)
			}
			cb, err := senml.EncodeCBOR(recs)
			if err != nil {
				t.Fatalf("EncodeCBOR: %v", err)
			}
			want, err := senml.Decode(dev, senml.ContentTypeJSON, []byte(pack), now, senml.Limits{})
			if err != nil {
				t.Fatalf("Decode JSON: %v", err)
			}
			got, err := senml.Decode(dev, senml.ContentTypeCBOR, cb, now, senml.Limits{})
			if err != nil {
				t.Fatalf("Decode CBOR: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("readings differ:\n got %v\nwant %v", got, want)
			}
		})
	}
}

func TestParseJSONRejects(t *testing.T) {
	tests := map[string]struct {
		pack string
		want string // in the message
	}{
		"not an array":         {`{"n":"x","v":1}`, "want an array"},
		"empty":                {`[]`, "no records"},
		"truncated":            {`[{"n":"x","v":1}`, "truncated"},
		"trailing data":        {`[{"n":"x","v":1}] x`, "after the end"},
		"duplicate label":      {`[{"n":"x","v":1,"v":2}]`, "duplicate label"},
		"must-understand":      {`[{"n":"x","v":1,"foo_":1}]`, "must-understand"},
		"nested":               {`[{"n":"x","v":[1]}]`, "nested"},
		"wrong type":           {`[{"n":"x","v":"1"}]`, "want a number"},
		"not finite":           {`[{"n":"x","v":1e400}]`, "finite"},
		"bad vd":               {`[{"n":"x","vd":"!!"}]`, "base64url"},
		"version":              {`[{"bver":11,"n":"x","v":1}]`, "newer"},
		"base name reset":      {`[{"bn":"a/","n":"x","v":1},{"bn":"","n":"y","v":2}]`, "empty base name"},
		"base time reset":      {`[{"bt":1700000000,"n":"x","v":1},{"bt":0,"n":"y","v":2}]`, "base time of 0"},
		"base value reset":     {`[{"bv":5,"n":"x","v":1},{"bv":0,"n":"y","v":2}]`, "base value of 0"},
		"empty unit":           {`[{"n":"x","u":"","v":1}]`, "empty unit"},
		"empty base unit":      {`[{"bu":"","n":"x","v":1}]`, "empty unit"},
		"too many records":     {"[" + strings.Repeat(`{"n":"x","v":1},`, pylon.MaxReadingsPerMessage) + `{"n":"x","v":1}]`, "more than"},
		"not UTF-8":            {"[{\"n\":\"\xff\",\"v\":1}]", "UTF-8"},
		"case-folded label":    {`[{"N":"x","V":1}]`, ""}, // unknown labels: parsed, then Decode refuses the empty record
		"oversize":             {"[" + strings.Repeat(" ", pylon.MaxDecodedBytes) + "]", "larger than"},
		"record not an object": {`[1]`, "want an object"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			recs, err := senml.ParseJSON([]byte(tt.pack))
			if tt.want == "" {
				if err != nil || len(recs) != 1 || recs[0].Name != "" || recs[0].Value != nil {
					t.Fatalf("got %+v, %v; want one empty record", recs, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %d records, want an error containing %q", len(recs), tt.want)
			}
			if !errors.Is(err, senml.ErrInvalid) || !strings.Contains(pylon.ErrorMessage(err), tt.want) {
				t.Fatalf("got %v, want an ErrInvalid containing %q", err, tt.want)
			}
		})
	}
}
