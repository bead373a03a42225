package dashboard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/pylonhq/pylon"
)

// funcs returns the template functions. None of them returns unescaped
// HTML: html/template escapes everything they produce.
func (s *Server) funcs() template.FuncMap {
	return template.FuncMap{
		"asset":   s.assetURL,
		"ago":     func(t time.Time) string { return relTime(t, s.now()) },
		"agoPtr":  func(t *time.Time) string { return relTimePtr(t, s.now()) },
		"abs":     absTime,
		"absPtr":  absTimePtr,
		"iso":     func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"expiry":  func(t time.Time) string { return expiryText(t, s.now()) },
		"expired": func(t time.Time) bool { return !s.now().Before(t) },
		"expiresSoon": func(t time.Time) bool {
			return s.now().Before(t) && t.Sub(s.now()) < certSoon
		},
		"json":       prettyJSON,
		"details":    detailsText,
		"short":      func(s string, n int) string { return shorten(s, n) },
		"objectLink": objectLink,
		"deviceLink": deviceLink,
		"unixSec":    unixSeconds,
		"unit":       unitText,
	}
}

// certSoon is how close to its expiry a certificate is shown as expiring
// soon. Devices renew at about two thirds of the lifetime (30 days by
// default), so a certificate this close to its end has missed renewals.
const certSoon = 7 * 24 * time.Hour

// absTime formats t in UTC to the second.
func absTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func absTimePtr(t *time.Time) string {
	if t == nil {
		return ""
	}
	return absTime(*t)
}

// relTime says how long ago (or in how long) t is from now, roughly.
func relTime(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < 10*time.Second:
		return "just now"
	case d < time.Minute:
		s = strconv.Itoa(int(d/time.Second)) + " s"
	case d < time.Hour:
		s = strconv.Itoa(int(d/time.Minute)) + " min"
	case d < 48*time.Hour:
		s = strconv.Itoa(int(d/time.Hour)) + " h"
	default:
		s = strconv.Itoa(int(d/(24*time.Hour))) + " days"
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

func relTimePtr(t *time.Time, now time.Time) string {
	if t == nil {
		return "never"
	}
	return relTime(*t, now)
}

// expiryText says when a certificate or token expires, in whole days.
func expiryText(t, now time.Time) string {
	d := t.Sub(now)
	days := int(math.Round(d.Hours() / 24))
	switch {
	case d <= 0:
		days = int(math.Round(-d.Hours() / 24))
		if days == 0 {
			return "expired today"
		}
		return fmt.Sprintf("expired %d %s ago", days, plural(days, "day", "days"))
	case d < 24*time.Hour:
		return "in less than a day"
	}
	return fmt.Sprintf("in %d %s", days, plural(days, "day", "days"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// prettyJSON indents raw JSON; invalid JSON is returned as it is (the
// template escapes it either way).
func prettyJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return string(raw)
	}
	return buf.String()
}

// detailsText returns audit details as compact JSON for people: with
// "<", ">" and "&" as themselves rather than the \u003c escapes that
// encoding/json writes (the template escapes the text for HTML anyway).
// Details that are not JSON are returned as they are.
func detailsText(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return string(raw)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return string(raw)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// shorten cuts s to n bytes (on a rune boundary) with an ellipsis.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8Start(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// objectLink returns the dashboard page of an audit object, or "".
func objectLink(object string) string {
	if id, ok := strings.CutPrefix(object, "device:"); ok && pylon.ValidID(id) {
		return "/devices/" + id
	}
	return ""
}

// deviceLink returns the dashboard page of a device id, or "".
func deviceLink(id string) string {
	if pylon.ValidID(id) {
		return "/devices/" + id
	}
	return ""
}

// unitSymbols are the SenML units (RFC 8428 §12.1) shown otherwise than
// as they are spelled.
var unitSymbols = map[string]string{
	"Cel":   "°C",
	"Ohm":   "Ω",
	"m2":    "m²",
	"m3":    "m³",
	"m/s2":  "m/s²",
	"W/m2":  "W/m²",
	"cd/m2": "cd/m²",
	"lat":   "°",
	"lon":   "°",
	"%RH":   "% RH",
	"%EL":   "% battery",
	"/":     "",
	"count": "",
}

// unitText returns how a unit is shown after a value.
func unitText(u string) string {
	if sym, ok := unitSymbols[u]; ok {
		return sym
	}
	return u
}

// withUnit joins a formatted number and a unit.
func withUnit(num, unit string) string {
	u := unitText(unit)
	switch {
	case u == "":
		return num
	case u == "°" || u[0] == '%':
		return num + u
	}
	return num + " " + u
}

// readingText formats a reading's value with its unit: numbers to six
// significant digits, strings cut to maxTextLen bytes, binary data as its
// size. A sum is added after the value.
func readingText(rd *pylon.Reading) string {
	var s string
	switch {
	case rd.Value != nil:
		s = withUnit(formatNumber(*rd.Value), rd.Unit)
	case rd.StringValue != nil:
		s = shorten(printableText(*rd.StringValue), maxTextLen)
	case rd.BoolValue != nil:
		s = strconv.FormatBool(*rd.BoolValue)
	case rd.DataValue != nil:
		s = formatCount(int64(len(rd.DataValue))) + " " + plural(len(rd.DataValue), "byte", "bytes") + " of data"
	}
	if rd.Sum != nil {
		sum := "sum " + withUnit(formatNumber(*rd.Sum), rd.Unit)
		if s == "" {
			return sum
		}
		s += " (" + sum + ")"
	}
	return s
}

// printableText replaces control characters, which a device may send in a
// string value, with U+FFFD.
func printableText(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) && r != ' ' {
			return '\uFFFD'
		}
		return r
	}, s)
}

// formatNumber formats v for people: six significant digits, thousands
// separated by commas from 10,000 on, exponents only for very large and
// very small magnitudes.
func formatNumber(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "∞"
	case math.IsInf(v, -1):
		return "−∞"
	case v == 0:
		return "0"
	}
	a := math.Abs(v)
	if a >= 1e15 || a < 1e-4 {
		return strconv.FormatFloat(v, 'g', 6, 64)
	}
	// Round to six significant digits, then print the shortest form.
	digits := 6 - int(math.Floor(math.Log10(a))) - 1
	if digits < 0 {
		p := math.Pow(10, float64(-digits))
		v = math.Round(v/p) * p
		digits = 0
	}
	s := strconv.FormatFloat(v, 'f', digits, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return groupThousands(s)
}

// groupThousands puts commas in the integer part of a decimal number of
// five digits or more.
func groupThousands(s string) string {
	sign := ""
	if s != "" && s[0] == '-' {
		sign, s = "-", s[1:]
	}
	intPart, frac, hasFrac := strings.Cut(s, ".")
	if len(intPart) < 5 {
		return sign + s
	}
	var b strings.Builder
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if hasFrac {
		b.WriteString("." + frac)
	}
	return sign + b.String()
}

// formatCount formats a whole number with thousands separators.
func formatCount(n int64) string {
	return groupThousands(strconv.FormatInt(n, 10))
}

// formatRate formats a rate per second: one decimal below 100.
func formatRate(r float64) string {
	switch {
	case r <= 0 || math.IsNaN(r):
		return "0"
	case r < 0.05:
		return "< 0.1"
	case r < 100:
		return strconv.FormatFloat(r, 'f', 1, 64)
	}
	return formatCount(int64(math.Round(r)))
}
