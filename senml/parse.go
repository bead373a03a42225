package senml

import "github.com/pylonhq/pylon"

// ParseJSON reads a SenML JSON pack (application/senml+json) into records
// as the device wrote them, unresolved, so that they can be encoded again
// (EncodeCBOR). It applies the syntax rules of Decode: exact labels, no
// duplicate labels, no nesting, must-understand labels refused, values of
// the right type, finite numbers, vd in base64url, bver at most 10, at most
// pylon.MaxReadingsPerMessage records of at most pylon.MaxDecodedBytes. It
// does not check names, units or times: Decode does that.
//
// Unknown labels that need not be understood are dropped. A Record cannot
// tell an absent field from a zero one, so a pack in which a record sets a
// base field back to zero (bn "", bt 0 or bv 0 after a non-zero value), or
// has an empty u or bu, is refused rather than re-encoded with another
// meaning. Every error wraps ErrInvalid.
func ParseJSON(pack []byte) ([]Record, error) {
	if len(pack) > pylon.MaxDecodedBytes {
		return nil, tooLarge("senml: pack larger than %d bytes", pylon.MaxDecodedBytes)
	}
	var (
		out []Record
		// The base fields in effect, to spot a reset to zero.
		bn     bool
		bt, bv float64
	)
	grow := func(n int) { out = make([]Record, 0, n) }
	add := func(i int, r *rawRecord) error {
		var rec Record
		if r.is(lBver) {
			if r.bver > maxVersion {
				return recordError(i, lBver, "version %d is newer than %d, which this receiver understands", r.bver, maxVersion)
			}
			rec.BaseVersion = int(r.bver)
		}
		if r.is(lBn) {
			if len(r.bn) == 0 && bn {
				return recordError(i, lBn, "an empty base name after a non-empty one cannot be re-encoded")
			}
			rec.BaseName, bn = string(r.bn), len(r.bn) > 0
		}
		if r.is(lBt) {
			if r.bt == 0 && bt != 0 {
				return recordError(i, lBt, "a base time of 0 after a non-zero one cannot be re-encoded")
			}
			rec.BaseTime, bt = r.bt, r.bt
		}
		if r.is(lBu) {
			if len(r.bu) == 0 {
				return recordError(i, lBu, "empty unit")
			}
			rec.BaseUnit = string(r.bu)
		}
		if r.is(lBv) {
			if r.bv == 0 && bv != 0 {
				return recordError(i, lBv, "a base value of 0 after a non-zero one cannot be re-encoded")
			}
			rec.BaseValue, bv = r.bv, r.bv
		}
		if r.is(lBs) {
			rec.BaseSum = ptr(r.bs)
		}
		rec.Name = string(r.n)
		if r.is(lU) {
			if len(r.u) == 0 {
				return recordError(i, lU, "empty unit")
			}
			rec.Unit = string(r.u)
		}
		if r.is(lV) {
			rec.Value = ptr(r.v)
		}
		if r.is(lVs) {
			s := string(r.vs)
			rec.StringValue = &s
		}
		if r.is(lVb) {
			b := r.vb
			rec.BoolValue = &b
		}
		if r.is(lVd) {
			rec.DataValue = append([]byte{}, r.vd...) // non-nil, even if empty
		}
		if r.is(lS) {
			rec.Sum = ptr(r.s)
		}
		rec.Time, rec.UpdateTime = r.t, r.ut
		out = append(out, rec)
		return nil
	}
	if err := walkJSON(pack, pylon.MaxReadingsPerMessage, grow, add); err != nil {
		return nil, err
	}
	return out, nil
}

func ptr(f float64) *float64 { return &f }
