// Package sse starts Server-Sent Events responses (the HTML Living
// Standard's text/event-stream) for the API's and the dashboard's live
// streams.
package sse

import (
	"net/http"
	"time"
)

// Start answers 200 with an event stream and returns the function that
// writes to it: each call renews the write deadline to writeTimeout (the
// server's WriteTimeout would otherwise cut every stream short), writes b
// and flushes, and reports whether the client is still there. The read
// deadline is cleared, as the request has been read in full.
func Start(w http.ResponseWriter, writeTimeout time.Duration) (write func(b []byte) bool) {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{}) // not supported by every writer; then there is none to clear
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return func(b []byte) bool {
		rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
}
