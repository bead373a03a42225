package pylon

import (
	"errors"
	"fmt"
)

// Error codes. Each maps to one HTTP status in httpapi and nowhere else.
const (
	EBADREQUEST   = "bad_request"  // malformed request (bad JSON, bad wire format)
	ECONFLICT     = "conflict"     // the action conflicts with current state (duplicate name)
	EFORBIDDEN    = "forbidden"    // authenticated but not allowed
	EINTERNAL     = "internal"     // anything else; its details are logged, never shown
	EINVALID      = "invalid"      // well-formed request with an invalid field
	ENOTFOUND     = "not_found"    // the object does not exist
	ERATELIMITED  = "rate_limited" // too many attempts
	ETOOLARGE     = "too_large"    // input over its size limit
	EUNAUTHORIZED = "unauthorized" // missing or bad credentials
	EUNAVAILABLE  = "unavailable"  // not ready or shutting down
)

// Error is a domain error with a machine-readable code and a message that is
// safe to show to the caller. Errors of other types are internal: they are
// logged in full and reported only as "internal error".
type Error struct {
	Code    string
	Message string
}

// Error implements the error interface.
func (e *Error) Error() string {
	return fmt.Sprintf("pylon error: code=%s message=%s", e.Code, e.Message)
}

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code string, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other non-nil error and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the user-safe message of the first *Error in err's
// chain, or "internal error" for any other non-nil error.
func ErrorMessage(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
