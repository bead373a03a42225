package device

import (
	"math"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/senml"
)

// Float returns a pointer to v, for senml.Record values.
func Float(v float64) *float64 { return &v }

// String returns a pointer to s, for senml.Record string values.
func String(s string) *string { return &s }

// Bool returns a pointer to b, for senml.Record boolean values.
func Bool(b bool) *bool { return &b }

// relativeTimeLimit: SenML times below 2^28 are relative to "now" (RFC 8428
// §4.5.3).
const relativeTimeLimit = 1 << 28

// reading is a resolved record: base fields applied, time absolute in
// milliseconds since the epoch.
type reading struct {
	name, unit string
	v          *float64
	vs         *string
	vb         *bool
	vd         []byte
	s          *float64
	ut         float64
	ms         int64
}

// resolve applies the base fields of recs (RFC 8428 §4.6) and makes every
// time absolute: a record without a time, or with a relative one, is timed
// from now, the moment of Publish, so that readings held in the outbox
// keep the time they were taken. It checks what the platform would refuse
// for sure (names, units, values) so that the caller learns of it at once.
func resolve(recs []senml.Record, now time.Time) ([]reading, error) {
	if len(recs) == 0 {
		return nil, pylon.Errorf(pylon.EINVALID, "no records")
	}
	if len(recs) > pylon.MaxReadingsPerMessage {
		return nil, pylon.Errorf(pylon.EINVALID, "more than %d records in one call", pylon.MaxReadingsPerMessage)
	}
	out := make([]reading, len(recs))
	var bn, bu string
	var bt, bv float64
	var bs *float64
	nowS := float64(now.UnixMilli()) / 1000
	for i := range recs {
		r := &recs[i]
		if r.BaseName != "" {
			bn = r.BaseName
		}
		if r.BaseTime != 0 {
			bt = r.BaseTime
		}
		if r.BaseUnit != "" {
			bu = r.BaseUnit
		}
		if r.BaseValue != 0 {
			bv = r.BaseValue
		}
		if r.BaseSum != nil {
			bs = r.BaseSum
		}
		rd := reading{name: bn + r.Name, unit: r.Unit, vs: r.StringValue, vb: r.BoolValue, vd: r.DataValue, ut: r.UpdateTime}
		if rd.unit == "" {
			rd.unit = bu
		}
		if r.Value != nil {
			rd.v = Float(bv + *r.Value)
		}
		if r.Sum != nil || bs != nil {
			var s float64
			if bs != nil {
				s = *bs
			}
			if r.Sum != nil {
				s += *r.Sum
			}
			rd.s = &s
		}
		t := bt + r.Time
		if t < relativeTimeLimit {
			t += nowS
		}
		if math.IsNaN(t) || math.IsInf(t, 0) {
			return nil, recordError(i, "t", "not a finite number")
		}
		rd.ms = int64(math.Round(t * 1000))
		if err := checkReading(i, &rd); err != nil {
			return nil, err
		}
		out[i] = rd
	}
	return out, nil
}

func recordError(i int, field, msg string) error {
	return pylon.Errorf(pylon.EINVALID, "senml: record %d: field %q: %s", i, field, msg)
}

// checkReading applies the platform's rules (docs/protocol.md §6.4) that
// can be checked without its clock.
func checkReading(i int, r *reading) error {
	if err := checkName(r.name); err != nil {
		return recordError(i, "n", err.Error())
	}
	if r.unit != "" && !senml.KnownUnit(r.unit) {
		return recordError(i, "u", "unknown unit "+quote(r.unit))
	}
	n := 0
	for _, set := range []bool{r.v != nil, r.vs != nil, r.vb != nil, r.vd != nil} {
		if set {
			n++
		}
	}
	switch {
	case n > 1:
		return recordError(i, "v", "more than one value")
	case n == 0 && r.s == nil:
		return recordError(i, "v", "no value and no sum")
	case r.v != nil && (math.IsNaN(*r.v) || math.IsInf(*r.v, 0)):
		return recordError(i, "v", "not a finite number")
	case r.s != nil && (math.IsNaN(*r.s) || math.IsInf(*r.s, 0)):
		return recordError(i, "s", "not a finite number")
	case r.vs != nil && len(*r.vs) > pylon.MaxStringValueLen:
		return recordError(i, "vs", "longer than the limit")
	case r.vs != nil && !utf8.ValidString(*r.vs):
		return recordError(i, "vs", "not valid UTF-8")
	case len(r.vd) > pylon.MaxDataValueLen:
		return recordError(i, "vd", "longer than the limit")
	case math.IsNaN(r.ut) || math.IsInf(r.ut, 0):
		return recordError(i, "ut", "not a finite number")
	}
	return nil
}

// checkName applies the SenML name rules (RFC 8428 §4.5.1).
func checkName(name string) error {
	if name == "" {
		return pylon.Errorf(pylon.EINVALID, "empty name")
	}
	if len(name) > pylon.MaxSenMLNameLen {
		return pylon.Errorf(pylon.EINVALID, "name longer than %d bytes", pylon.MaxSenMLNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("-:./_", rune(c))) {
			return pylon.Errorf(pylon.EINVALID, "name %s: must start with a letter or digit and contain only letters, digits and - : . / _", quote(name))
		}
	}
	return nil
}

func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return `"` + strings.ToValidUTF8(s, "?") + `"`
}

// encodePack writes readings as one SenML pack. With more than one
// reading, a common name prefix up to a '/' goes into bn and the first
// reading's time into bt, later times relative to it: fewer bytes on the
// wire.
func encodePack(rs []reading, contentType int) ([]byte, error) {
	recs := make([]senml.Record, len(rs))
	prefix, unit := "", ""
	if len(rs) > 1 {
		prefix, unit = commonPrefix(rs), commonUnit(rs)
	}
	t0 := rs[0].ms
	for i := range rs {
		r := &rs[i]
		rec := senml.Record{
			Name: r.name[len(prefix):], Unit: r.unit, Value: r.v, StringValue: r.vs, BoolValue: r.vb,
			DataValue: r.vd, Sum: r.s, UpdateTime: r.ut,
		}
		if unit != "" {
			rec.Unit = ""
		}
		if i == 0 {
			rec.BaseName, rec.BaseUnit = prefix, unit
			if len(rs) > 1 {
				rec.BaseTime = float64(t0) / 1000
			} else {
				rec.Time = float64(t0) / 1000
			}
		} else {
			rec.Time = float64(r.ms-t0) / 1000
		}
		recs[i] = rec
	}
	if contentType == envelope.ContentTypeSenMLJSON {
		return senml.EncodeJSON(recs)
	}
	return senml.EncodeCBOR(recs)
}

// commonPrefix returns the name if all readings share it, else the
// longest prefix ending in '/' shared by all names that leaves every name
// non-empty.
func commonPrefix(rs []reading) string {
	p := rs[0].name
	same := true
	for _, r := range rs[1:] {
		same = same && r.name == p
	}
	if same {
		return p
	}
	for _, r := range rs[1:] {
		n := 0
		for n < len(p) && n < len(r.name) && p[n] == r.name[n] {
			n++
		}
		p = p[:n]
	}
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return ""
	}
	p = p[:i+1]
	for _, r := range rs {
		if len(r.name) == len(p) {
			return ""
		}
	}
	return p
}

// commonUnit returns the unit if every reading has the same one.
func commonUnit(rs []reading) string {
	for _, r := range rs[1:] {
		if r.unit != rs[0].unit {
			return ""
		}
	}
	return rs[0].unit
}

// estimateSize is an upper bound of the bytes r adds to a CBOR pack.
func estimateSize(r *reading) int {
	return 40 + len(r.name) + len(r.unit) + len(r.vd) + func() int {
		if r.vs != nil {
			return len(*r.vs)
		}
		return 0
	}()
}

// Health is what a device reports in its heartbeat, besides its uptime and
// firmware version. Nil fields are left out.
type Health struct {
	Battery    *float64 // remaining battery, percent (0–100): "sys/battery", unit "%EL"
	RSSI       *float64 // received signal strength in dBm: "sys/rssi", unit "dB" (SenML has no dBm)
	FreeMemory *float64 // bytes: "sys/mem_free", unit "B"
}

// healthRecords returns the heartbeat readings under the base name "sys/":
// uptime (s), firmware (vs) and the Health fields.
func healthRecords(uptime time.Duration, firmware string, h Health) []senml.Record {
	recs := []senml.Record{{BaseName: "sys/", Name: "uptime", Unit: "s", Value: Float(math.Round(uptime.Seconds()))}}
	if firmware != "" {
		recs = append(recs, senml.Record{Name: "firmware", StringValue: String(truncateUTF8(firmware, pylon.MaxStringValueLen))})
	}
	if h.Battery != nil {
		recs = append(recs, senml.Record{Name: "battery", Unit: "%EL", Value: h.Battery})
	}
	if h.RSSI != nil {
		recs = append(recs, senml.Record{Name: "rssi", Unit: "dB", Value: h.RSSI})
	}
	if h.FreeMemory != nil {
		recs = append(recs, senml.Record{Name: "mem_free", Unit: "B", Value: h.FreeMemory})
	}
	return recs
}

// truncateUTF8 cuts s to at most n bytes on a rune boundary.
func truncateUTF8(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
