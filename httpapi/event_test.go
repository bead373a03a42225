package httpapi_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
	"github.com/pylonhq/pylon/mock"
)

// hub is a simple in-test EventService: it delivers to subscribers of the
// event's device and of the fleet, and drops what does not fit in a
// subscriber's buffer.
type hub struct {
	mu   sync.Mutex
	subs map[*hubSub]bool
}

type hubSub struct {
	device  string
	ch      chan pylon.Event
	dropped atomic.Int64
}

func (s *hubSub) C() <-chan pylon.Event { return s.ch }
func (s *hubSub) Dropped() int64        { return s.dropped.Load() }

var _ pylon.EventService = (*hub)(nil)

func newHub() *hub { return &hub{subs: map[*hubSub]bool{}} }

func (h *hub) Subscribe(ctx context.Context, deviceID string) pylon.Subscription {
	s := &hubSub{device: deviceID, ch: make(chan pylon.Event, 16)}
	h.mu.Lock()
	h.subs[s] = true
	h.mu.Unlock()
	context.AfterFunc(ctx, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.subs, s)
		close(s.ch)
	})
	return s
}

func (h *hub) PublishEvent(e pylon.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.device != "" && s.device != e.DeviceID {
			continue
		}
		select {
		case s.ch <- e:
		default:
			s.dropped.Add(1)
		}
	}
}

// subscribers returns the device ids of the live subscriptions, sorted.
func (h *hub) subscribers() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ids []string
	for s := range h.subs {
		ids = append(ids, s.device)
	}
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && ids[j] < ids[j-1]; j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
	return ids
}

// waitFor polls cond until it holds, failing the test after 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// stream runs StreamEvents in the background, passing events to a channel.
type stream struct {
	events chan pylon.Event
	done   chan struct{} // closed when StreamEvents has returned err
	err    error
	cancel context.CancelFunc
}

// startStream starts a stream that the test's cleanup cancels and waits
// for, before the fixture's server shuts down.
func startStream(t *testing.T, c *httpapi.Client, deviceID string) *stream {
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{events: make(chan pylon.Event, 100), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.done)
		s.err = c.StreamEvents(ctx, deviceID, func(e pylon.Event) error {
			s.events <- e
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	return s
}

// wait returns StreamEvents' result, failing the test after limit.
func (s *stream) wait(t *testing.T, limit time.Duration) error {
	t.Helper()
	select {
	case <-s.done:
		return s.err
	case <-time.After(limit):
		t.Fatalf("StreamEvents still running after %s", limit)
		return nil
	}
}

func TestStreamEvents(t *testing.T) {
	f := newFixture(t)
	h := newHub()
	f.srv.Events = h
	url := f.start()
	c := f.client(url, pylon.RoleViewer)

	dev := startStream(t, c, devID)
	fleet := startStream(t, c, "")
	waitFor(t, "two subscriptions", func() bool { return reflect.DeepEqual(h.subscribers(), []string{"", devID}) })

	v := 21.5
	online := true
	published := []pylon.Event{
		{Type: pylon.EventReadings, DeviceID: devID, Time: t0, Readings: []pylon.Reading{{DeviceID: devID, Name: "temp", Time: t0, Value: &v}}},
		{Type: pylon.EventConnection, DeviceID: "cccccccccccccccc", Time: t0, Online: &online},
		{Type: pylon.EventConnection, DeviceID: devID, Time: t0.Add(time.Second), Online: &online},
		{Type: pylon.EventRejected, DeviceID: devID, Time: t0.Add(2 * time.Second), Reason: "bad\nsignature"},
		{Type: pylon.EventState, DeviceID: devID, Time: t0.Add(3 * time.Second), State: "suspended"},
	}
	for _, e := range published {
		h.PublishEvent(e)
	}
	check := func(name string, s *stream, want []pylon.Event) {
		t.Helper()
		for i, w := range want {
			select {
			case got := <-s.events:
				if !reflect.DeepEqual(got, w) {
					t.Errorf("%s event %d: got %+v, want %+v", name, i, got, w)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: timed out waiting for event %d", name, i)
			}
		}
	}
	check("fleet", fleet, published)
	check("device", dev, append(published[:1:1], published[2:]...))

	dev.cancel()
	if err := dev.wait(t, 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v after cancel, want context.Canceled", err)
	}
	waitFor(t, "the device subscription to end", func() bool { return reflect.DeepEqual(h.subscribers(), []string{""}) })
}

func TestStreamEvents_ShutdownClosesStreams(t *testing.T) {
	f := newFixture(t)
	h := newHub()
	f.srv.Events = h
	url := f.start()
	c := f.client(url, pylon.RoleViewer)
	streams := []*stream{startStream(t, c, ""), startStream(t, c, devID), startStream(t, f.client(url, pylon.RoleAdmin), "")}
	waitFor(t, "three subscriptions", func() bool { return len(h.subscribers()) == 3 })

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("shutdown took %s, want under 1s", d)
	}
	for i, s := range streams {
		if err := s.wait(t, time.Second); err != nil {
			t.Errorf("stream %d: got %v, want nil (the server ended it)", i, err)
		}
	}
	if got := h.subscribers(); len(got) != 0 {
		t.Errorf("got subscriptions %q after shutdown, want none", got)
	}
	// A stream asked for during shutdown is refused, not left hanging.
	w := f.serve("GET", "/api/v1/events", "", f.as(pylon.RoleViewer))
	checkError(t, w, 503, pylon.EUNAVAILABLE)
}

func TestStreamEvents_Limit(t *testing.T) {
	f := newFixture(t)
	h := newHub()
	f.srv.Events = h
	f.srv.MaxStreams = 2
	url := f.start()
	c := f.client(url, pylon.RoleViewer)

	a := startStream(t, c, "")
	startStream(t, c, devID)
	waitFor(t, "two subscriptions", func() bool { return len(h.subscribers()) == 2 })

	err := c.StreamEvents(context.Background(), "", func(pylon.Event) error { return nil })
	if pylon.ErrorCode(err) != pylon.EUNAVAILABLE {
		t.Fatalf("third stream: got %v, want unavailable", err)
	}
	a.cancel()
	if err := a.wait(t, 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
	// The slot is free again once the server has seen the client go.
	waitFor(t, "a stream slot", func() bool {
		s := startStream(t, c, "")
		select {
		case <-s.done:
			if pylon.ErrorCode(s.err) != pylon.EUNAVAILABLE {
				t.Fatalf("got %v, want unavailable or a stream", s.err)
			}
			return false
		case <-time.After(50 * time.Millisecond):
			return true
		}
	})
	waitFor(t, "two subscriptions again", func() bool { return len(h.subscribers()) == 2 })
}

// TestStreamEvents_Wire reads the raw stream: headers, pings, the event
// format and the note about dropped events.
func TestStreamEvents_Wire(t *testing.T) {
	f := newFixture(t)
	var (
		events  = make(chan pylon.Event)
		dropped atomic.Int64
		subs    = make(chan string, 1)
	)
	f.srv.Events = &mock.EventService{
		SubscribeFn: func(ctx context.Context, deviceID string) pylon.Subscription {
			subs <- deviceID
			return &mock.Subscription{
				CFn:       func() <-chan pylon.Event { return events },
				DroppedFn: dropped.Load,
			}
		},
	}
	f.srv.PingInterval = 10 * time.Millisecond
	url := f.start()
	c := f.client(url, pylon.RoleViewer)

	req, err := http.NewRequest("GET", url+"/api/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+f.secrets[pylon.RoleViewer])
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got := <-subs; got != "" {
		t.Errorf("got subscription for %q, want the fleet", got)
	}
	for k, want := range map[string]string{
		"Content-Type":      "text/event-stream",
		"Cache-Control":     "no-store",
		"X-Accel-Buffering": "no",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("got %s %q, want %q", k, got, want)
		}
	}
	lines := make(chan string, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("stream ended")
			}
			return l
		case <-time.After(5 * time.Second):
			t.Fatal("timed out waiting for a line")
		}
		return ""
	}
	// Pings come while nothing happens.
	for pings := 0; pings < 2; {
		if next() == ": ping" {
			pings++
		}
	}
	dropped.Store(4)
	events <- pylon.Event{Type: pylon.EventState, DeviceID: devID, Time: t0, State: "active"}
	events <- pylon.Event{Type: "bad\ntype", DeviceID: devID, Time: t0}
	var got []string
	for len(got) < 6 {
		// Skip pings and the blank lines that end them.
		if l := next(); l != ": ping" && (l != "" || len(got) > 0) {
			got = append(got, l)
		}
	}
	want := []string{
		": dropped 4",
		"event: state",
		`data: {"type":"state","device_id":"` + devID + `","time":"2030-01-02T03:04:05Z","state":"active"}`,
		"",
		"event: message",
		`data: {"type":"bad\ntype","device_id":"` + devID + `","time":"2030-01-02T03:04:05Z"}`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got lines\n%q\nwant\n%q", got, want)
	}
}

// TestStreamEvents_Parse feeds StreamEvents hand-written streams.
func TestStreamEvents_Parse(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    []pylon.Event
		wantErr string // substring; "" for nil
	}{
		{"comments, CRLF and multi-line data",
			": hello\r\nevent: state\r\ndata: {\"device_id\":\"d1\",\r\ndata: \"state\":\"active\"}\r\n\r\n" +
				"id: 7\nretry: 100\nevent: rejected\ndata:{\"type\":\"rejected\",\"reason\":\"x\"}\n\n",
			[]pylon.Event{{Type: "state", DeviceID: "d1", State: "active"}, {Type: "rejected", Reason: "x"}}, ""},
		{"event without data is skipped", "event: state\n\n: ping\n\n", nil, ""},
		{"bad JSON", "event: state\ndata: {nope\n\n", nil, "decode event"},
		{"line too long", "data: " + strings.Repeat("x", httpapi.MaxEventLine+1) + "\n\n", nil, "longer than"},
		{"data too long", strings.Repeat("data: "+strings.Repeat("x", 1<<16)+"\n", 17) + "\n", nil, "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if got := r.Header.Get("Accept"); got != "text/event-stream" {
					t.Errorf("got Accept %q, want text/event-stream", got)
				}
				w.Header().Set("Content-Type", "text/event-stream")
				fmt.Fprint(w, tt.body)
			}))
			defer ts.Close()
			c := &httpapi.Client{BaseURL: ts.URL, HTTP: ts.Client()}
			var got []pylon.Event
			err := c.StreamEvents(context.Background(), "", func(e pylon.Event) error {
				got = append(got, e)
				return nil
			})
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("got error %v, want %q", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got events %+v, want %+v", got, tt.want)
			}
		})
	}

	t.Run("callback error stops the stream", func(t *testing.T) {
		ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {\"type\":\"state\"}\n\ndata: {\"type\":\"state\"}\n\n")
		}))
		defer ts.Close()
		c := &httpapi.Client{BaseURL: ts.URL, HTTP: ts.Client()}
		stop := errors.New("enough")
		n := 0
		err := c.StreamEvents(context.Background(), "", func(pylon.Event) error { n++; return stop })
		if err != stop || n != 1 {
			t.Errorf("got %v after %d events, want %v after 1", err, n, stop)
		}
	})
	t.Run("not an event stream", func(t *testing.T) {
		ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprint(w, "<html>")
		}))
		defer ts.Close()
		c := &httpapi.Client{BaseURL: ts.URL, HTTP: ts.Client()}
		err := c.StreamEvents(context.Background(), "", func(pylon.Event) error { return nil })
		if pylon.ErrorCode(err) != pylon.EINTERNAL || err == nil {
			t.Errorf("got %v, want an unexpected-response error", err)
		}
	})
}

// TestStreamEvents_HTTP1 streams over HTTP/1.1, where the server's read
// and write deadlines apply to the connection.
func TestStreamEvents_HTTP1(t *testing.T) {
	f := newFixture(t)
	h := newHub()
	f.srv.Events = h
	url := f.start()
	c := f.client(url, pylon.RoleViewer)
	tr := c.HTTP.Transport.(*http.Transport)
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}

	s := startStream(t, c, devID)
	waitFor(t, "a subscription", func() bool { return len(h.subscribers()) == 1 })
	h.PublishEvent(pylon.Event{Type: pylon.EventState, DeviceID: devID, Time: t0, State: "active"})
	select {
	case e := <-s.events:
		if e.State != "active" {
			t.Errorf("got %+v, want the state event", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for the event")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if err := s.wait(t, time.Second); err != nil {
		t.Errorf("got %v, want nil (the server ended the stream)", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("shutdown took %s, want under 1s", d)
	}
}
