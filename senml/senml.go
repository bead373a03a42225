package senml

import (
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/pylonhq/pylon"
)

// Content formats (CoAP content-format numbers) of the two SenML
// representations.
const (
	ContentTypeJSON = 110 // application/senml+json
	ContentTypeCBOR = 112 // application/senml+cbor
)

// Defaults for the zero fields of Limits.
const (
	DefaultMaxFuture = 10 * time.Minute
	DefaultMaxPast   = 30 * 24 * time.Hour
)

// maxSkew bounds MaxFuture and MaxPast, so that time arithmetic cannot
// overflow a time.Duration.
const maxSkew = 100 * 365 * 24 * time.Hour

// relativeTimeLimit is 2^28: resolved times below it are relative to now
// (RFC 8428 §4.5.3).
const relativeTimeLimit = 1 << 28

// maxVersion is the SenML version that this package understands (RFC 8428).
const maxVersion = 10

// Size limits of single fields.
const (
	maxNameLen   = pylon.MaxSenMLNameLen
	maxStringLen = pylon.MaxStringValueLen
	maxDataLen   = pylon.MaxDataValueLen
)

// maxFieldsPerRecord bounds the number of labels in one record: the 15
// defined ones plus room for extensions.
const maxFieldsPerRecord = 64

// Errors.
var (
	// ErrInvalid is wrapped by every error of Decode, EncodeCBOR and
	// EncodeJSON that is caused by their input: malformed syntax, a failed
	// validation rule or a size limit. The wrapping error says which record
	// and field are at fault and is also a *pylon.Error.
	ErrInvalid = errors.New("senml: invalid pack")
)

// Limits bounds what Decode accepts. Zero fields take the defaults.
type Limits struct {
	// MaxRecords is the most records a pack may hold
	// (default pylon.MaxReadingsPerMessage).
	MaxRecords int
	// MaxFuture is how far ahead of now a reading's time may be
	// (default DefaultMaxFuture, 10 minutes).
	MaxFuture time.Duration
	// MaxPast is how far behind now a reading's time may be
	// (default DefaultMaxPast, 30 days).
	MaxPast time.Duration
	// MaxFuture and MaxPast are capped at 100 years.
}

func (l Limits) withDefaults() Limits {
	if l.MaxRecords <= 0 {
		l.MaxRecords = pylon.MaxReadingsPerMessage
	}
	if l.MaxFuture <= 0 {
		l.MaxFuture = DefaultMaxFuture
	}
	if l.MaxPast <= 0 {
		l.MaxPast = DefaultMaxPast
	}
	l.MaxFuture = min(l.MaxFuture, maxSkew)
	l.MaxPast = min(l.MaxPast, maxSkew)
	return l
}

// Decode parses the SenML pack in the given content format (ContentTypeCBOR
// or ContentTypeJSON), validates it and resolves it into readings of
// deviceID. now is the receiver's clock: relative times count from it, and
// absolute times must lie within lim of it. The whole pack is rejected if
// any record is invalid; every such error wraps ErrInvalid.
func Decode(deviceID string, contentType int, pack []byte, now time.Time, lim Limits) ([]pylon.Reading, error) {
	lim = lim.withDefaults()
	if len(pack) > pylon.MaxDecodedBytes {
		return nil, tooLarge("senml: pack larger than %d bytes", pylon.MaxDecodedBytes)
	}
	z := newResolver(deviceID, now, lim)
	var err error
	switch contentType {
	case ContentTypeCBOR:
		err = decodeCBOR(&z, pack)
	case ContentTypeJSON:
		err = decodeJSON(&z, pack)
	default:
		return nil, invalidf("senml: unsupported content format %d", contentType)
	}
	if err != nil {
		return nil, err
	}
	return z.out, nil
}

// Labels, in the order of their bit in rawRecord.has.
type label uint8

const (
	lBver label = iota
	lBn
	lBt
	lBu
	lBv
	lBs
	lN
	lU
	lV
	lVs
	lVb
	lS
	lT
	lUt
	lVd
	numLabels
)

var labelNames = [numLabels]string{"bver", "bn", "bt", "bu", "bv", "bs", "n", "u", "v", "vs", "vb", "s", "t", "ut", "vd"}

func (l label) String() string { return labelNames[l] }

// rawRecord is one record as read, before resolution. Byte slices may
// alias the input.
type rawRecord struct {
	has                     uint16 // bit l set if label l is present
	bver                    uint64
	bn, bu, n, u, vs, vd    []byte
	bt, bv, bs, v, s, t, ut float64
	vb                      bool
}

func (r *rawRecord) set(l label) bool {
	bit := uint16(1) << l
	if r.has&bit != 0 {
		return false
	}
	r.has |= bit
	return true
}

func (r *rawRecord) is(l label) bool { return r.has&(uint16(1)<<l) != 0 }

// resolver carries the base fields from record to record and collects the
// readings.
type resolver struct {
	deviceID   string
	now        time.Time
	nowSec     float64
	maxFuture  float64 // seconds
	maxPast    float64 // seconds
	maxRecords int

	bn    []byte
	bt    float64
	bu    string
	bv    float64
	hasBv bool
	bs    float64
	hasBs bool

	lastName string
	out      []pylon.Reading
	floats   []float64 // backing store of Value and Sum pointers
	bools    []bool
	strs     []string
	hint     int // expected number of remaining records
}

func newResolver(deviceID string, now time.Time, lim Limits) resolver {
	// Times are kept to the microsecond (docs/protocol.md 6.4), relative
	// ones too.
	now = now.UTC().Truncate(time.Microsecond)
	return resolver{
		deviceID:   deviceID,
		now:        now,
		nowSec:     float64(now.Unix()) + float64(now.Nanosecond())/1e9,
		maxFuture:  lim.MaxFuture.Seconds(),
		maxPast:    lim.MaxPast.Seconds(),
		maxRecords: lim.MaxRecords,
	}
}

// grow prepares for n more records.
func (z *resolver) grow(n int) {
	z.hint = n
	if z.out == nil {
		z.out = make([]pylon.Reading, 0, n)
	}
}

func (z *resolver) float(f float64) *float64 {
	if len(z.floats) == cap(z.floats) {
		z.floats = make([]float64, 0, max(z.hint, 8))
	}
	z.floats = append(z.floats, f)
	return &z.floats[len(z.floats)-1]
}

func (z *resolver) bool(b bool) *bool {
	if len(z.bools) == cap(z.bools) {
		z.bools = make([]bool, 0, max(z.hint, 8))
	}
	z.bools = append(z.bools, b)
	return &z.bools[len(z.bools)-1]
}

func (z *resolver) string(s string) *string {
	if len(z.strs) == cap(z.strs) {
		z.strs = make([]string, 0, max(z.hint, 4))
	}
	z.strs = append(z.strs, s)
	return &z.strs[len(z.strs)-1]
}

// add validates record i, resolves it against the base fields and appends
// its reading.
func (z *resolver) add(i int, r *rawRecord) error {
	if z.hint > 0 {
		z.hint--
	}
	// Base fields first: they apply to this record too.
	if r.is(lBver) && r.bver > maxVersion {
		return recordError(i, lBver, "version %d is newer than %d, which this receiver understands", r.bver, maxVersion)
	}
	if r.is(lBn) {
		if len(r.bn) > pylon.MaxSenMLNameLen {
			return recordError(i, lBn, "longer than %d bytes", pylon.MaxSenMLNameLen)
		}
		z.bn = r.bn
	}
	if r.is(lBt) {
		z.bt = r.bt
	}
	if r.is(lBu) {
		u, ok := units[string(r.bu)]
		if !ok {
			return recordError(i, lBu, "unknown unit %q", clip(r.bu))
		}
		z.bu = u
	}
	if r.is(lBv) {
		z.bv, z.hasBv = r.bv, true
	}
	if r.is(lBs) {
		z.bs, z.hasBs = r.bs, true
	}

	rd := pylon.Reading{DeviceID: z.deviceID}

	// Name.
	name, err := z.name(r)
	if err != nil {
		return recordError(i, lN, "%s", err)
	}
	rd.Name = name

	// Unit.
	rd.Unit = z.bu
	if r.is(lU) {
		u, ok := units[string(r.u)]
		if !ok {
			return recordError(i, lU, "unknown unit %q", clip(r.u))
		}
		rd.Unit = u
	}

	// Time.
	t := z.bt + r.t
	if math.IsInf(t, 0) {
		return recordError(i, lT, "time out of range")
	}
	if rd.Time, err = z.time(t); err != nil {
		return recordError(i, lT, "%s", err)
	}

	// Sum.
	hasSum := r.is(lS) || z.hasBs
	if hasSum {
		s := r.s
		if z.hasBs {
			s += z.bs
		}
		if math.IsInf(s, 0) {
			return recordError(i, lS, "sum out of range")
		}
		rd.Sum = z.float(s)
	}

	// Value: exactly one value field, or none if there is a sum.
	nv := 0
	for _, l := range [...]label{lV, lVs, lVb, lVd} {
		if r.is(l) {
			nv++
		}
	}
	switch {
	case nv > 1:
		return recordError(i, lV, "more than one of v, vs, vb and vd")
	case nv == 0 && !hasSum:
		return recordError(i, lV, "no value: one of v, vs, vb, vd or s is required")
	}
	switch {
	case r.is(lV):
		v := r.v
		if z.hasBv {
			v += z.bv
		}
		if math.IsInf(v, 0) {
			return recordError(i, lV, "value out of range")
		}
		rd.Value = z.float(v)
	case r.is(lVs):
		if len(r.vs) > pylon.MaxStringValueLen {
			return recordError(i, lVs, "longer than %d bytes", pylon.MaxStringValueLen)
		} else if !utf8.Valid(r.vs) {
			return recordError(i, lVs, "not valid UTF-8")
		}
		rd.StringValue = z.string(string(r.vs))
	case r.is(lVb):
		rd.BoolValue = z.bool(r.vb)
	case r.is(lVd):
		if len(r.vd) > pylon.MaxDataValueLen {
			return recordError(i, lVd, "longer than %d bytes", pylon.MaxDataValueLen)
		}
		rd.DataValue = append(make([]byte, 0, len(r.vd)), r.vd...)
	}
	z.out = append(z.out, rd)
	return nil
}

// name returns the resolved name bn+n, reusing the previous record's name
// string when it is the same.
func (z *resolver) name(r *rawRecord) (string, error) {
	bn, n := z.bn, r.n
	total := len(bn) + len(n)
	switch {
	case total == 0:
		return "", errors.New("empty name (neither bn nor n)")
	case total > pylon.MaxSenMLNameLen:
		return "", fmt.Errorf("resolved name longer than %d bytes", pylon.MaxSenMLNameLen)
	}
	last := z.lastName
	if len(last) == total && last[:len(bn)] == string(bn) && last[len(bn):] == string(n) {
		return last, nil
	}
	if !validNameStart(firstByte(bn, n)) {
		return "", fmt.Errorf("name %q must start with a letter or digit", clip2(bn, n))
	}
	for _, part := range [2][]byte{bn, n} {
		for _, c := range part {
			if !validNameChar(c) {
				return "", fmt.Errorf("name %q contains %q; allowed are letters, digits and - : . / _", clip2(bn, n), rune(c))
			}
		}
	}
	name := string(bn) + string(n)
	z.lastName = name
	return name, nil
}

func firstByte(a, b []byte) byte {
	if len(a) > 0 {
		return a[0]
	}
	return b[0]
}

func validNameStart(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func validNameChar(c byte) bool {
	return validNameStart(c) || c == '-' || c == ':' || c == '.' || c == '/' || c == '_'
}

// time converts a resolved SenML time to an absolute time and checks it
// against the skew limits.
func (z *resolver) time(t float64) (time.Time, error) {
	relative := t < relativeTimeLimit
	diff := t
	if !relative {
		diff = t - z.nowSec
	}
	switch {
	case diff > z.maxFuture:
		return time.Time{}, fmt.Errorf("time is %.6g s in the future; at most %g s allowed", diff, z.maxFuture)
	case diff < -z.maxPast:
		return time.Time{}, fmt.Errorf("time is %.6g s in the past; at most %g s allowed", -diff, z.maxPast)
	}
	if relative {
		// |t| is bounded by the limits above, so this does not overflow.
		return z.now.Add(time.Duration(math.Round(t*1e6)) * time.Microsecond), nil
	}
	sec, frac := math.Modf(t)
	return time.Unix(int64(sec), int64(math.Round(frac*1e6))*1e3).UTC(), nil
}

// invalidError is an error caused by the input. It wraps ErrInvalid and a
// *pylon.Error with a user-safe message.
type invalidError struct {
	perr *pylon.Error
}

func (e *invalidError) Error() string   { return e.perr.Message }
func (e *invalidError) Unwrap() []error { return []error{ErrInvalid, e.perr} }

func invalidf(format string, args ...any) error {
	return &invalidError{pylon.Errorf(pylon.EINVALID, format, args...)}
}

func tooLarge(format string, args ...any) error {
	return &invalidError{pylon.Errorf(pylon.ETOOLARGE, format, args...)}
}

func recordError(i int, l label, format string, args ...any) error {
	return invalidf("senml: record %d: field %q: %s", i, l.String(), fmt.Sprintf(format, args...))
}

// clip shortens b for quoting in an error message.
func clip(b []byte) string {
	const n = 40
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

func clip2(a, b []byte) string {
	if len(a) >= 40 {
		return clip(a)
	}
	return clip(append(append(make([]byte, 0, len(a)+len(b)), a...), b...))
}
