package httpapi

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pylonhq/pylon"
)

// maxQueryValue bounds the length of a query parameter's value.
const maxQueryValue = 256

// maxCursorLen bounds the length of a paging cursor.
const maxCursorLen = 1024

// queryString returns the parameter's value, refusing values longer than
// max bytes or that are not printable UTF-8 with EINVALID.
func queryString(q url.Values, name string, max int) (string, error) {
	v := q.Get(name)
	if len(v) > max {
		return "", pylon.Errorf(pylon.EINVALID, "%s: longer than %d bytes", name, max)
	}
	if !printable(v) {
		return "", pylon.Errorf(pylon.EINVALID, "%s: not printable UTF-8", name)
	}
	return v, nil
}

// queryLimit returns the "limit" parameter: 0 if absent, else an integer
// from 1 to max (EINVALID otherwise).
func queryLimit(q url.Values, max int) (int, error) {
	v := q.Get("limit")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, pylon.Errorf(pylon.EINVALID, "limit: must be an integer from 1 to %d", max)
	}
	return n, nil
}

// queryBool returns the parameter as "true" or "false", nil if absent.
func queryBool(q url.Values, name string) (*bool, error) {
	switch q.Get(name) {
	case "":
		return nil, nil
	case "true":
		b := true
		return &b, nil
	case "false":
		b := false
		return &b, nil
	}
	return nil, pylon.Errorf(pylon.EINVALID, "%s: must be true or false", name)
}

// queryTime returns the parameter as an RFC 3339 time, nil if absent.
func queryTime(q url.Values, name string) (*time.Time, error) {
	v := q.Get(name)
	if v == "" {
		return nil, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil || len(v) > 64 {
		return nil, pylon.Errorf(pylon.EINVALID, "%s: must be an RFC 3339 time such as 2006-01-02T15:04:05Z", name)
	}
	return &t, nil
}

// pathID returns the {id} path value, or ENOTFOUND for what if it cannot
// be an identifier.
func pathID(r *http.Request, what string) (string, error) {
	id := r.PathValue("id")
	if !pylon.ValidID(id) {
		return "", pylon.Errorf(pylon.ENOTFOUND, "%s not found", what)
	}
	return id, nil
}

// printable reports whether s is UTF-8 without control characters.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// validateName returns EINVALID unless name is 1 to max bytes of
// printable UTF-8 without leading or trailing space.
func validateName(field, name string, max int) error {
	switch {
	case name == "":
		return pylon.Errorf(pylon.EINVALID, "%s: required", field)
	case len(name) > max:
		return pylon.Errorf(pylon.EINVALID, "%s: longer than %d bytes", field, max)
	case !printable(name):
		return pylon.Errorf(pylon.EINVALID, "%s: not printable UTF-8", field)
	case strings.TrimSpace(name) != name:
		return pylon.Errorf(pylon.EINVALID, "%s: leading or trailing space", field)
	}
	return nil
}

// parseTTL parses a Go duration of at most max; "" gives def.
func parseTTL(v string, def, max time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > max {
		return 0, pylon.Errorf(pylon.EINVALID, "ttl: must be a positive duration such as \"24h\", at most %s", max)
	}
	return d, nil
}
