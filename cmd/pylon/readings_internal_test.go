package main

import (
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
)

// TestFormatEvent_Rejected checks what `pylon readings watch` prints for a
// refused message: its code, its sequence number when known, the reason.
func TestFormatEvent_Rejected(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		ev   pylon.Event
		want string
	}{
		{pylon.Event{Type: pylon.EventRejected, DeviceID: "dev1", Time: at, Reason: "senml: unknown unit", Code: "invalid", Seq: 42}, "invalid  seq 42: senml: unknown unit"},
		{pylon.Event{Type: pylon.EventRejected, DeviceID: "dev1", Time: at, Reason: "bad signature", Code: "unauthorized"}, "unauthorized  bad signature"},
		{pylon.Event{Type: pylon.EventRejected, DeviceID: "dev1", Time: at, Reason: "old server"}, "rejected    old server"},
	} {
		got := formatEvent(tt.ev)
		if !strings.HasSuffix(got, tt.want) || !strings.Contains(got, "dev1") {
			t.Errorf("got %q, want it to end with %q", got, tt.want)
		}
	}
}
