package senml

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"unicode/utf8"
)

var jsonLabels = map[string]label{
	"bver": lBver, "bn": lBn, "bt": lBt, "bu": lBu, "bv": lBv, "bs": lBs,
	"n": lN, "u": lU, "v": lV, "vs": lVs, "vb": lVb, "s": lS, "t": lT, "ut": lUt, "vd": lVd,
}

// decodeJSON reads a SenML JSON pack into z. It walks the tokens, so that
// anything nested fails at once, whatever its depth, and duplicate labels
// are seen.
func decodeJSON(z *resolver, pack []byte) error {
	return walkJSON(pack, z.maxRecords, z.grow, z.add)
}

// walkJSON reads the records of a SenML JSON pack of at most maxRecords
// records, calling grow once with an estimate of their number and add for
// each record in turn.
func walkJSON(pack []byte, maxRecords int, grow func(n int), add func(i int, rec *rawRecord) error) error {
	if !utf8.Valid(pack) {
		return invalidf("senml: pack: not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(pack))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return invalidf("senml: pack: %s", jsonErr(err))
	} else if tok != json.Delim('[') {
		return invalidf("senml: pack: want an array of records")
	}
	grow(min(len(pack)/8+1, maxRecords, 64))
	var rec rawRecord
	i := 0
	for ; dec.More(); i++ {
		if i >= maxRecords {
			return tooLarge("senml: pack: more than %d records", maxRecords)
		}
		rec = rawRecord{}
		if err := jsonRecord(dec, &rec); err != nil {
			var fe *fieldError
			if errors.As(err, &fe) && fe.label != "" {
				return invalidf("senml: record %d: field %q: %s", i, fe.label, fe.err)
			}
			return invalidf("senml: record %d: %s", i, err)
		}
		if err := add(i, &rec); err != nil {
			return err
		}
	}
	if i == 0 {
		return invalidf("senml: pack: no records")
	}
	if _, err := dec.Token(); err != nil { // the closing ']'
		return invalidf("senml: pack: %s", jsonErr(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalidf("senml: pack: data after the end of the array")
	}
	return nil
}

func jsonErr(err error) string {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return "truncated JSON"
	}
	return "malformed JSON: " + err.Error()
}

// jsonRecord reads one record object into rec.
func jsonRecord(dec *json.Decoder, rec *rawRecord) error {
	tok, err := dec.Token()
	if err != nil {
		return errors.New(jsonErr(err))
	} else if tok != json.Delim('{') {
		return errors.New("want an object")
	}
	for n := 0; dec.More(); n++ {
		if n >= maxFieldsPerRecord {
			return fmt.Errorf("more than %d fields", maxFieldsPerRecord)
		}
		tok, err := dec.Token()
		if err != nil {
			return errors.New(jsonErr(err))
		}
		key, _ := tok.(string)
		val, err := dec.Token()
		if err != nil {
			return errors.New(jsonErr(err))
		}
		if _, nested := val.(json.Delim); nested {
			return &fieldError{clip([]byte(key)), errors.New("nested array or object as a field value")}
		}
		l, ok := jsonLabels[key]
		if !ok {
			if len(key) > 0 && key[len(key)-1] == '_' {
				return &fieldError{clip([]byte(key)), errors.New("unknown must-understand label")}
			}
			continue // unknown label: ignored
		}
		if !rec.set(l) {
			return &fieldError{key, errors.New("duplicate label")}
		}
		if err := jsonValue(rec, l, val); err != nil {
			return &fieldError{key, err}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return errors.New(jsonErr(err))
	}
	return nil
}

// jsonValue stores the scalar token val as the value of label l.
func jsonValue(rec *rawRecord, l label, val json.Token) error {
	switch l {
	case lBn, lN, lBu, lU, lVs, lVd:
		s, ok := val.(string)
		if !ok {
			return fmt.Errorf("want a string, got %s", jsonType(val))
		}
		switch l {
		case lBn:
			rec.bn = []byte(s)
		case lN:
			rec.n = []byte(s)
		case lBu:
			rec.bu = []byte(s)
		case lU:
			rec.u = []byte(s)
		case lVs:
			if len(s) > maxStringLen {
				return fmt.Errorf("longer than %d bytes", maxStringLen)
			}
			rec.vs = []byte(s)
		case lVd:
			if len(s) > base64.RawURLEncoding.EncodedLen(maxDataLen)+2 {
				return fmt.Errorf("longer than %d bytes", maxDataLen)
			}
			enc := base64.RawURLEncoding
			if len(s)%4 == 0 && len(s) > 0 && s[len(s)-1] == '=' {
				enc = base64.URLEncoding
			}
			b, err := enc.Strict().DecodeString(s)
			if err != nil {
				return errors.New("not base64url")
			}
			rec.vd = b
		}
	case lVb:
		b, ok := val.(bool)
		if !ok {
			return fmt.Errorf("want a boolean, got %s", jsonType(val))
		}
		rec.vb = b
	case lBver:
		num, ok := val.(json.Number)
		if !ok {
			return fmt.Errorf("want a number, got %s", jsonType(val))
		}
		v, err := strconv.ParseUint(string(num), 10, 64)
		if err != nil {
			return errors.New("want an unsigned integer")
		}
		rec.bver = v
	default: // numbers
		num, ok := val.(json.Number)
		if !ok {
			return fmt.Errorf("want a number, got %s", jsonType(val))
		}
		f, err := strconv.ParseFloat(string(num), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return errors.New("not a finite number")
		}
		switch l {
		case lBt:
			rec.bt = f
		case lBv:
			rec.bv = f
		case lBs:
			rec.bs = f
		case lV:
			rec.v = f
		case lS:
			rec.s = f
		case lT:
			rec.t = f
		case lUt:
			rec.ut = f
		}
	}
	return nil
}

func jsonType(v json.Token) string {
	switch v.(type) {
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return "an array or object"
}
