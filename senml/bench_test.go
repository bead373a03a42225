package senml_test

import (
	"math"
	"testing"

	"github.com/pylonhq/pylon/senml"
)

// pack50 is the 50-record pack of a device that samples a temperature
// every 10 s and sends a batch: bn, bt and bu once, then a value and a time
// offset per record. The temperature varies slowly and is quantised to the
// 1/16 °C resolution of a common 12-bit sensor (DS18B20 and the like).
func pack50(bt float64) []senml.Record {
	recs := make([]senml.Record, 50)
	for i := range recs {
		temp := 21 + 1.5*math.Sin(float64(i)/15) + 0.2*math.Sin(float64(i)*1.7)
		temp = math.Round(temp*16) / 16
		recs[i] = senml.Record{Value: f64(temp), Time: float64(i-49) * 10}
	}
	recs[0].BaseName = "room1/temp"
	recs[0].BaseTime = bt
	recs[0].BaseUnit = "Cel"
	return recs
}

func BenchmarkDecodeCBOR1(b *testing.B) {
	pack, err := senml.EncodeCBOR([]senml.Record{{Name: "temp", Unit: "Cel", Value: f64(22.5)}})
	if err != nil {
		b.Fatal(err)
	}
	benchDecode(b, senml.ContentTypeCBOR, pack, 1)
}

func BenchmarkDecodeCBOR50(b *testing.B) {
	pack, err := senml.EncodeCBOR(pack50(float64(now.Unix())))
	if err != nil {
		b.Fatal(err)
	}
	benchDecode(b, senml.ContentTypeCBOR, pack, 50)
}

func BenchmarkDecodeJSON50(b *testing.B) {
	pack, err := senml.EncodeJSON(pack50(float64(now.Unix())))
	if err != nil {
		b.Fatal(err)
	}
	benchDecode(b, senml.ContentTypeJSON, pack, 50)
}

func BenchmarkEncodeCBOR50(b *testing.B) {
	recs := pack50(float64(now.Unix()))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := senml.EncodeCBOR(recs); err != nil {
			b.Fatal(err)
		}
	}
}

func benchDecode(b *testing.B, ct int, pack []byte, n int) {
	b.Helper()
	b.SetBytes(int64(len(pack)))
	b.ReportAllocs()
	for b.Loop() {
		got, err := senml.Decode(dev, ct, pack, now, senml.Limits{})
		if err != nil || len(got) != n {
			b.Fatalf("got %d readings and %v, want %d", len(got), err, n)
		}
	}
}
