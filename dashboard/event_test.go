package dashboard_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/dashboard"
)

// liveEvent is the data of a device stream's event.
type liveEvent struct {
	T        float64 `json:"t"`
	Readings []struct {
		N    string   `json:"n"`
		U    string   `json:"u"`
		UT   string   `json:"ut"`
		T    float64  `json:"t"`
		V    *float64 `json:"v"`
		Text string   `json:"text"`
	} `json:"readings"`
	Online *bool  `json:"online"`
	Reason string `json:"reason"`
	Code   string `json:"code"`
	Seq    string `json:"seq"`
	State  string `json:"state"`
}

func TestDeviceEvents_StreamsTheDevice(t *testing.T) {
	hub := &Hub{Unfiltered: true}
	e := MustNewEnv(t, func(e *Env) { e.Server.Events = hub })
	viewer, _ := e.MustToken(pylon.RoleViewer)
	b := e.MustSignIn(viewer)
	d := e.MustDevice("sensor-1", nil)
	other := e.MustDevice("sensor-2", nil)

	s := b.OpenStream("/devices/"+d.ID+"/events", "Sec-Fetch-Site: same-origin")
	if s.Resp.StatusCode != http.StatusOK {
		t.Fatalf("got status %d, want 200", s.Resp.StatusCode)
	}
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-store", "Content-Security-Policy": dashboard.ContentSecurityPolicy} {
		if got := s.Resp.Header.Get(k); got != want {
			t.Errorf("got %s %q, want %q", k, got, want)
		}
	}
	first, ok := s.Next()
	if !ok || len(first.Comments) == 0 || first.Comments[0] != "connected" {
		t.Fatalf("got first block %+v, want the connected comment", first)
	}
	if got := hub.Subscribers(d.ID); got != 1 {
		t.Fatalf("got %d subscriptions of the device, want 1", got)
	}
	// The device as it is now, for the page.
	for _, want := range []string{`"online":false`, `"state":"registered"`} {
		if ev := s.NextEvent(); !strings.Contains(ev.Data, want) {
			t.Fatalf("got first event %s %s, want %s", ev.Event, ev.Data, want)
		}
	}

	at := time.Unix(1_700_000_000, 250_000_000)
	// The hub is broken (Unfiltered): the other device's events reach the
	// handler, which must drop them.
	hub.PublishEvent(pylon.Event{Type: pylon.EventReadings, DeviceID: other.ID, Time: at, Readings: []pylon.Reading{{Name: "secret", Value: ptr(1.0), Time: at}}})
	hub.PublishEvent(pylon.Event{Type: "unknown", DeviceID: d.ID, Time: at})
	hub.PublishEvent(pylon.Event{Type: pylon.EventState, DeviceID: d.ID, Time: at, State: "<b>bogus</b>"})
	hub.PublishEvent(pylon.Event{Type: pylon.EventReadings, DeviceID: d.ID, Time: at, Readings: []pylon.Reading{
		{Name: "temp", Unit: "Cel", Value: ptr(21.5), Time: at},
		{Name: "<script>", StringValue: ptr("</script><script>alert(1)</script>"), Time: at},
	}})
	hub.PublishEvent(pylon.Event{Type: pylon.EventRejected, DeviceID: d.ID, Time: at, Reason: "bad signature", Code: "unauthorized"})
	hub.PublishEvent(pylon.Event{Type: pylon.EventRejected, DeviceID: d.ID, Time: at, Reason: "bad unit", Code: "invalid", Seq: 1<<64 - 1})
	hub.PublishEvent(pylon.Event{Type: pylon.EventConnection, DeviceID: d.ID, Time: at, Online: ptr(false)})
	hub.PublishEvent(pylon.Event{Type: pylon.EventState, DeviceID: d.ID, Time: at, State: string(pylon.DeviceSuspended)})

	tests := []struct {
		event string
		check func(le liveEvent) bool
	}{
		{"readings", func(le liveEvent) bool {
			return len(le.Readings) == 2 && le.Readings[0].N == "temp" && *le.Readings[0].V == 21.5 &&
				le.Readings[0].Text == "21.5 °C" && le.Readings[0].UT == "°C" && le.Readings[0].T == 1_700_000_000.25 &&
				le.Readings[1].V == nil && le.Readings[1].Text == "</script><script>alert(1)</script>"
		}},
		{"rejected", func(le liveEvent) bool {
			return le.Reason == "bad signature" && le.Code == "unauthorized" && le.Seq == ""
		}},
		// The seq as a string: a JavaScript number would round it.
		{"rejected", func(le liveEvent) bool {
			return le.Reason == "bad unit" && le.Code == "invalid" && le.Seq == "18446744073709551615"
		}},
		{"connection", func(le liveEvent) bool { return le.Online != nil && !*le.Online }},
		{"state", func(le liveEvent) bool { return le.State == "suspended" }},
	}
	for _, tt := range tests {
		ev := s.NextEvent()
		if ev.Event != tt.event {
			t.Fatalf("got event %q (%s), want %q", ev.Event, ev.Data, tt.event)
		}
		if strings.Contains(ev.Data, "<") {
			t.Errorf("%s: data carries a raw '<': %s", ev.Event, ev.Data)
		}
		var le liveEvent
		if err := json.Unmarshal([]byte(ev.Data), &le); err != nil || !tt.check(le) {
			t.Fatalf("%s: got data %s (err %v), not what was published", ev.Event, ev.Data, err)
		}
	}

	// The client goes away: the subscription ends with it.
	s.Close()
	waitFor(t, "the subscription to end", func() bool { return hub.Subscribers(d.ID) == 0 })
}

func TestDeviceEvents_Errors(t *testing.T) {
	e := MustNewEnv(t, func(e *Env) { e.Server.Events = &Hub{} })
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	tests := []struct {
		name   string
		path   string
		status int
	}{
		{"unknown device", "/devices/aaaaaaaaaaaaaaaa/events", http.StatusNotFound},
		{"bad id", "/devices/x/events", http.StatusNotFound},
		{"POST", "/devices/aaaaaaaaaaaaaaaa/events", http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp *http.Response
			if tt.name == "POST" {
				resp, _ = b.Post(tt.path, url.Values{})
			} else {
				resp, _ = b.Get(tt.path)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("got status %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
}

func TestDeviceEvents_Limits(t *testing.T) {
	hub := &Hub{}
	e := MustNewEnv(t, func(e *Env) { e.Server.Events, e.Server.MaxStreams = hub, dashboard.MaxStreamsPerSession+1 })
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	path := "/devices/" + d.ID + "/events"

	var open []*Stream
	for i := range dashboard.MaxStreamsPerSession {
		s := b.OpenStream(path)
		if s.Resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: got status %d, want 200", i+1, s.Resp.StatusCode)
		}
		open = append(open, s)
	}
	s := b.OpenStream(path)
	if s.Resp.StatusCode != http.StatusTooManyRequests || s.Resp.Header.Get("Retry-After") == "" {
		t.Fatalf("one more in the session: got status %d, want 429 with Retry-After", s.Resp.StatusCode)
	}
	other := e.MustSignIn(admin)
	if s := other.OpenStream(path); s.Resp.StatusCode != http.StatusOK {
		t.Fatalf("another session: got status %d, want 200", s.Resp.StatusCode)
	}
	third := e.MustSignIn(admin)
	if s := third.OpenStream(path); s.Resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("beyond MaxStreams: got status %d, want 503", s.Resp.StatusCode)
	}

	// Closing a stream frees its slot.
	open[0].Close()
	waitFor(t, "the slot to free", func() bool { return hub.Subscribers(d.ID) == dashboard.MaxStreamsPerSession })
	if s := b.OpenStream(path); s.Resp.StatusCode != http.StatusOK {
		t.Fatalf("after closing one: got status %d, want 200", s.Resp.StatusCode)
	}

	// Close ends every stream and refuses new ones.
	e.Server.Close()
	for i, s := range open[1:] {
		if !s.Ends() {
			t.Fatalf("stream %d still open after Close", i+2)
		}
	}
	if s := third.OpenStream(path); s.Resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("after Close: got status %d, want 503", s.Resp.StatusCode)
	}
}

func TestDeviceEvents_PingsAndEndsWithTheSession(t *testing.T) {
	e := MustNewEnv(t, func(e *Env) { e.Server.Events, e.Server.PingInterval = &Hub{}, 20*time.Millisecond })
	admin, id := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	s := b.OpenStream("/devices/" + d.ID + "/events")
	pinged := false
	for range 5 {
		ev, ok := s.Next()
		if !ok {
			t.Fatal("the stream ended early")
		}
		pinged = pinged || len(ev.Comments) > 0 && ev.Comments[0] == "ping"
	}
	if !pinged {
		t.Fatal("no ping comment")
	}
	if err := e.APITokens.RevokeAPIToken(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	e.Advance(dashboard.TokenRecheckInterval)
	if !s.Ends() {
		t.Fatal("the stream goes on after its API token was revoked")
	}
}

func TestDeviceEvents_EndWithHTTPServerShutdown(t *testing.T) {
	e := MustNewEnv(t, func(e *Env) { e.Server.Events = &Hub{} })
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	s := b.OpenStream("/devices/" + d.ID + "/events")
	if s.Resp.StatusCode != http.StatusOK {
		t.Fatalf("got status %d, want 200", s.Resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := e.TS.Config.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown waited for the open stream: %v", err)
	}
	if !s.Ends() {
		t.Fatal("the stream is still open after Shutdown")
	}
}

func TestDeviceEvents_FollowTheStoredState(t *testing.T) {
	e := MustNewEnv(t, func(e *Env) { e.Server.Events, e.Server.StatePollInterval = &Hub{}, 10*time.Millisecond })
	viewer, _ := e.MustToken(pylon.RoleViewer)
	b := e.MustSignIn(viewer)
	d := e.MustDevice("sensor-1", nil)
	ctx := context.Background()
	s := b.OpenStream("/devices/" + d.ID + "/events")
	next := func() liveEvent {
		t.Helper()
		var le liveEvent
		ev := s.NextEvent()
		if err := json.Unmarshal([]byte(ev.Data), &le); err != nil {
			t.Fatalf("event %s: %v", ev.Event, err)
		}
		return le
	}
	if le := next(); le.Online == nil || *le.Online {
		t.Fatalf("got first event %+v, want offline", le)
	}
	if le := next(); le.State != "registered" {
		t.Fatalf("got second event %+v, want state registered", le)
	}

	// Nothing the page does not know yet: the broker records a connection,
	// the API activates and suspends the device.
	if _, err := e.Devices.TransitionDevice(ctx, d.ID, pylon.DeviceActive); err != nil {
		t.Fatal(err)
	}
	if le := next(); le.State != "active" {
		t.Fatalf("after activation: got %+v, want state active", le)
	}
	if err := e.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: d.ID, Online: true, At: e.Now()}); err != nil {
		t.Fatal(err)
	}
	if le := next(); le.Online == nil || !*le.Online {
		t.Fatalf("after connecting: got %+v, want online", le)
	}
	if _, err := e.Devices.TransitionDevice(ctx, d.ID, pylon.DeviceSuspended); err != nil {
		t.Fatal(err)
	}
	if err := e.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: d.ID, Online: false, At: e.Now()}); err != nil {
		t.Fatal(err)
	}
	var offline, suspended bool
	for !offline || !suspended {
		le := next()
		offline = offline || le.Online != nil && !*le.Online
		suspended = suspended || le.State == "suspended"
	}

	// A deleted device ends its streams.
	if err := e.Devices.DeleteDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if !s.Ends() {
		t.Fatal("the stream goes on after its device was deleted")
	}
}
