// Package senml decodes, validates and resolves SenML packs (RFC 8428) into
// pylon.Readings, and encodes packs for devices and tests.
//
// # Formats
//
// Two representations are understood, chosen by the CoAP content-format
// number that the telemetry envelope carries:
//
//   - 112, application/senml+cbor (RFC 8428 §6): an array of maps with the
//     integer labels bver -1, bn -2, bt -3, bu -4, bv -5, bs -6, n 0, u 1,
//     v 2, vs 3, vb 4, s 5, t 6, ut 7, vd 8. Numbers may be integers, floats
//     of any width or decimal fractions (tag 4). Indefinite-length items are
//     not accepted. An optional self-described CBOR tag (55799) may precede
//     the array.
//   - 110, application/senml+json (RFC 8428 §5): an array of flat objects
//     with the text labels; vd is base64url (padding optional).
//
// # Resolution (RFC 8428 §4.6)
//
// Base fields apply to their own record and to every later record until a
// record sets the same base field again. The resolved name is bn + n, the
// resolved time bt + t, the unit u or else bu, the value bv + v and the sum
// bs + s (a record has a sum when s is present or a base sum is in effect).
// A base value only adjusts a v that the record carries; it never creates a
// value on its own.
//
// # Validation
//
// Decode accepts a pack only if every record is valid; one bad record
// rejects the whole pack and no reading is returned. Every failure wraps
// ErrInvalid and is also a *pylon.Error (code EINVALID, or ETOOLARGE for
// size limits) whose message names the record index (0-based) and the
// field, for example
//
//	senml: record 3: field "u": unknown unit "furlong"
//
// The rules:
//
//   - The pack is a non-empty array of at most Limits.MaxRecords records and
//     at most pylon.MaxDecodedBytes bytes, with nothing after it. Records are
//     flat: a nested array, map or tag as a field value is refused (decimal
//     fractions excepted), so deep nesting fails at the first level.
//   - Duplicate labels in a record are refused.
//   - Names: the resolved name is 1 to pylon.MaxSenMLNameLen bytes, starts
//     with A-Z, a-z or 0-9 and continues with those or - : . / _ (§4.5.1).
//   - Units: u and bu must be in the SenML units registry: RFC 8428 §12.1
//     plus the primary units added by RFC 8798 (see units.go). The RFC 8798
//     secondary units are not accepted.
//   - Values: exactly one of v, vs, vb and vd, or none of them if the
//     record has a sum. Numbers must be finite (NaN and ±Inf, which CBOR can
//     carry, are refused), also after adding a base. vs is valid UTF-8 of at
//     most pylon.MaxStringValueLen bytes, vd at most pylon.MaxDataValueLen
//     bytes decoded. Types are exact: a string where a number belongs is
//     refused.
//   - bver, if present, is an unsigned integer of at most 10 (RFC 8428).
//   - Must-understand: a label ending in "_" is refused, in JSON and in CBOR
//     (where extension labels are text strings). In CBOR the integer label
//     table is closed (§6), so an unknown integer label is refused too.
//     Other unknown labels are ignored, but their values must be scalars.
//   - Time (clock-skew policy): a resolved time below 2^28 is relative to
//     the receiver's clock ("now", §4.5.3), and otherwise seconds since the
//     Unix epoch. Either way the absolute time must lie within
//     [now − MaxPast, now + MaxFuture]: by default 30 days back, to let
//     devices flush buffered readings after an outage, and 10 minutes ahead,
//     to tolerate device clocks that run a little fast. Times are rounded to
//     the microsecond and returned in UTC.
//
// # Encoding
//
// EncodeCBOR writes numbers in their shortest exact form: an integer when
// the value is integral, otherwise the narrowest of float16, float32 and
// float64 that holds it exactly, so that a single reading such as
// [{0:"temp",1:"Cel",2:22.5}] takes 17 bytes. Map keys are in the
// deterministic order of RFC 8949 §4.2.1.
package senml
