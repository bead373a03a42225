package sse_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pylonhq/pylon/sse"
)

func TestStart(t *testing.T) {
	w := httptest.NewRecorder()
	write := sse.Start(w, time.Second)
	if !write([]byte(": hello\n\n")) {
		t.Fatal("write to a live recorder failed")
	}
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/event-stream" || w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("got %d %v, want 200 with an uncached event stream", w.Code, w.Header())
	}
	if !w.Flushed || w.Body.String() != ": hello\n\n" {
		t.Fatalf("got flushed=%v body %q, want the bytes flushed", w.Flushed, w.Body)
	}
}
