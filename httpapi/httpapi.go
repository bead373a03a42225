// Package httpapi serves Pylon over HTTPS: the REST API under /api/v1
// (with live events as Server-Sent Events, per the WHATWG HTML standard),
// certificate enrollment (EST, RFC 7030) under /.well-known/est, /healthz
// and /metrics. It also holds the Client that the command-line tool and the
// tests use, and the request and response types both sides share.
//
// Handlers talk to the platform only through the root package's service
// interfaces, set as fields of Server. Error is the one place where error
// codes become HTTP statuses: a *pylon.Error is shown with its code and
// message, anything else is logged in full and shown as "internal error".
package httpapi

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"reflect"
	"strings"

	"github.com/pylonhq/pylon"
)

// MaxJSONBody is the largest JSON request body accepted.
const MaxJSONBody = 1 << 20

// codeMethodNotAllowed is the error code of 405 responses. It is not a
// domain code: only the router produces it.
const codeMethodNotAllowed = "method_not_allowed"

// statusOf maps domain error codes to HTTP statuses.
var statusOf = map[string]int{
	pylon.EBADREQUEST:   http.StatusBadRequest,
	pylon.EUNAUTHORIZED: http.StatusUnauthorized,
	pylon.EFORBIDDEN:    http.StatusForbidden,
	pylon.ENOTFOUND:     http.StatusNotFound,
	pylon.ECONFLICT:     http.StatusConflict,
	pylon.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	pylon.EINVALID:      http.StatusUnprocessableEntity,
	pylon.ERATELIMITED:  http.StatusTooManyRequests,
	pylon.EUNAVAILABLE:  http.StatusServiceUnavailable,
	pylon.EINTERNAL:     http.StatusInternalServerError,
}

// codeOf maps HTTP statuses back to domain codes, for responses without a
// JSON error body.
var codeOf = map[int]string{
	http.StatusMethodNotAllowed: codeMethodNotAllowed,
}

func init() {
	for code, status := range statusOf {
		codeOf[status] = code
	}
}

// ErrorResponse is the body of every error response:
// {"error":{"code":"...","message":"..."}}.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody is the error inside an ErrorResponse.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error writes err as a JSON error response with the status of its code.
// A *pylon.Error (anywhere in err's chain) is shown with its code and
// message. Any other error, and a *pylon.Error with code EINTERNAL or an
// unknown code, is logged in full with the request's method and path, and
// shown only as "internal error" with status 500.
func Error(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := pylon.ErrorCode(err), pylon.ErrorMessage(err)
	status, ok := statusOf[code]
	if !ok || code == pylon.EINTERNAL {
		reportInternal(w, r, err)
		code, msg, status = pylon.EINTERNAL, "internal error", http.StatusInternalServerError
	}
	writeError(w, status, code, msg)
}

// internalReporter is implemented by the Server's response writer, which
// logs an internal error with the Server's logger once the request is done.
type internalReporter interface {
	reportInternal(err error)
}

func reportInternal(w http.ResponseWriter, r *http.Request, err error) {
	if rep, ok := w.(internalReporter); ok {
		rep.reportInternal(err)
		return
	}
	// Error used outside Server.Handler: there is no injected logger.
	slog.Default().Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
}

// writeError writes an error body with the given status.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorResponse{Error: ErrorBody{Code: code, Message: msg}})
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own response types get here; they always marshal.
		b = []byte(`{"error":{"code":"internal","message":"internal error"}}`)
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// decodeJSON reads a JSON object of at most MaxJSONBody bytes from the
// request body into v. Unknown fields are refused. With optional set, an
// empty body leaves v alone.
//
// Errors: EBADREQUEST (wrong Content-Type, malformed JSON, trailing data),
// ETOOLARGE, EINVALID (unknown field, wrong type of a field).
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || !(mt == "application/json" || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")) {
			return pylon.Errorf(pylon.EBADREQUEST, "Content-Type must be application/json")
		}
	}
	if r.ContentLength > MaxJSONBody {
		return pylon.Errorf(pylon.ETOOLARGE, "request body larger than %d bytes", MaxJSONBody)
	}
	body := http.MaxBytesReader(unwrap(w), r.Body, MaxJSONBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if optional && errors.Is(err, io.EOF) {
			return nil
		}
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			if e := jsonError(err); pylon.ErrorCode(e) == pylon.ETOOLARGE {
				return e
			}
		}
		return pylon.Errorf(pylon.EBADREQUEST, "unexpected data after the JSON object")
	}
	return nil
}

// unwrap returns the innermost ResponseWriter, so that http.MaxBytesReader
// can tell the server to close the connection after an oversized body.
func unwrap(w http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}

// jsonError turns an error of encoding/json into a domain error.
func jsonError(err error) error {
	var (
		maxErr    *http.MaxBytesError
		typeErr   *json.UnmarshalTypeError
		syntaxErr *json.SyntaxError
		pylonErr  *pylon.Error
	)
	switch {
	case errors.As(err, &maxErr):
		return pylon.Errorf(pylon.ETOOLARGE, "request body larger than %d bytes", MaxJSONBody)
	case errors.As(err, &pylonErr):
		return pylonErr
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return pylon.Errorf(pylon.EBADREQUEST, "request body must be a JSON object")
		}
		return pylon.Errorf(pylon.EINVALID, "%s: got %s, want %s", typeErr.Field, typeErr.Value, jsonType(typeErr.Type))
	case errors.As(err, &syntaxErr):
		return pylon.Errorf(pylon.EBADREQUEST, "malformed JSON at byte %d", syntaxErr.Offset)
	case errors.Is(err, io.EOF):
		return pylon.Errorf(pylon.EBADREQUEST, "request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return pylon.Errorf(pylon.EBADREQUEST, "malformed JSON: unexpected end of input")
	}
	if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return pylon.Errorf(pylon.EINVALID, "unknown field %s", truncate(field, 80))
	}
	return pylon.Errorf(pylon.EBADREQUEST, "malformed JSON")
}

// jsonType names the JSON type that decodes into t.
func jsonType(t reflect.Type) string {
	if t == nil {
		return "a different type"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Map, reflect.Struct:
		return "object"
	case reflect.Slice, reflect.Array:
		return "array"
	}
	return "a different type"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
