package dashboard_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/mock"
)

// Hub is a small in-process pylon.EventService for the tests. With
// Unfiltered set it gives every subscriber every event, as a broken hub
// would, to check that the dashboard filters anyway.
type Hub struct {
	Unfiltered bool

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

var _ pylon.EventService = (*Hub)(nil)

// PublishEvent delivers e without blocking.
func (h *Hub) PublishEvent(e pylon.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.device != "" && s.device != e.DeviceID && !h.Unfiltered {
			continue
		}
		select {
		case s.ch <- e:
		default:
			s.dropped.Add(1)
		}
	}
}

// Subscribe returns events of deviceID ("" for all) until ctx ends.
func (h *Hub) Subscribe(ctx context.Context, deviceID string) pylon.Subscription {
	s := &hubSub{device: deviceID, ch: make(chan pylon.Event, 256)}
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[*hubSub]bool{}
	}
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

// Subscribers returns how many subscriptions of deviceID are open.
func (h *Hub) Subscribers(deviceID string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for s := range h.subs {
		if s.device == deviceID {
			n++
		}
	}
	return n
}

// waitFor polls cond until it holds, failing the test after 5 seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not a wait for a result
	}
}

// Stream is an open event stream of the dashboard.
type Stream struct {
	t      testing.TB
	Resp   *http.Response
	cancel context.CancelFunc
	r      *bufio.Reader
}

// SSE is one event of a stream, or a comment.
type SSE struct {
	Event, Data string
	Comments    []string
}

// OpenStream opens path as an event stream with the browser's cookies and
// extra headers as "Name: value". The caller checks Resp.StatusCode.
func (b *Browser) OpenStream(path string, headers ...string) *Stream {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", b.e.TS.URL+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	c := *b.Client
	c.Timeout = 0 // the context bounds the stream
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		b.t.Fatalf("GET %s: %v", path, err)
	}
	s := &Stream{t: b.t, Resp: resp, cancel: cancel, r: bufio.NewReader(resp.Body)}
	b.t.Cleanup(s.Close)
	return s
}

// Close goes away, as a browser closing the tab.
func (s *Stream) Close() {
	s.cancel()
	s.Resp.Body.Close()
}

// Next reads the next event or comment block. ok is false at the end of
// the stream.
func (s *Stream) Next() (ev SSE, ok bool) {
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return ev, false
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev.Event != "" || ev.Data != "" || len(ev.Comments) > 0 {
				return ev, true
			}
		case strings.HasPrefix(line, ":"):
			ev.Comments = append(ev.Comments, strings.TrimSpace(line[1:]))
		case strings.HasPrefix(line, "event: "):
			ev.Event = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			ev.Data = line[len("data: "):]
		}
	}
}

// NextEvent skips comments and returns the next event, failing the test at
// the end of the stream.
func (s *Stream) NextEvent() SSE {
	s.t.Helper()
	for {
		ev, ok := s.Next()
		if !ok {
			s.t.Fatal("the stream ended, want an event")
		}
		if ev.Event != "" {
			return ev
		}
	}
}

// Ends reports whether the stream ends within a few seconds.
func (s *Stream) Ends() bool {
	done := make(chan bool, 1)
	go func() {
		for {
			if _, ok := s.Next(); !ok {
				done <- true
				return
			}
		}
	}()
	select {
	case <-done:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

// readingsStore is a fake TelemetryService holding n numeric readings of
// one name, one a second up to end, paged like a store. It records the
// calls.
type readingsStore struct {
	n   int
	end time.Time

	mu      sync.Mutex
	finds   []pylon.ReadingFilter
	aggs    []pylon.AggregateFilter
	rows    int // readings returned by FindReadings
	latest  []*pylon.Reading
	errors  []*pylon.QuarantinedMessage
	errCall []string // FindQuarantine device ids
}

func (st *readingsStore) service() *mock.TelemetryService {
	return &mock.TelemetryService{
		FindReadingsFn: func(ctx context.Context, f pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
			st.mu.Lock()
			defer st.mu.Unlock()
			st.finds = append(st.finds, f)
			start := 0
			if f.Cursor != "" {
				if _, err := fmt.Sscanf(f.Cursor, "c%d", &start); err != nil {
					return nil, "", pylon.Errorf(pylon.EINVALID, "cursor: invalid")
				}
			}
			limit := f.Limit
			if limit == 0 {
				limit = 1000
			}
			var page []*pylon.Reading
			for i := start; i < st.n && len(page) < limit; i++ {
				v := float64(i % 100)
				page = append(page, &pylon.Reading{
					DeviceID: f.DeviceID, Name: f.Name, Unit: "Cel", Value: &v,
					Time: st.end.Add(time.Duration(i-st.n+1) * time.Second),
				})
			}
			st.rows += len(page)
			next := ""
			if start+len(page) < st.n {
				next = fmt.Sprintf("c%d", start+len(page))
			}
			return page, next, nil
		},
		AggregateReadingsFn: func(ctx context.Context, f pylon.AggregateFilter) ([]*pylon.Bucket, error) {
			st.mu.Lock()
			defer st.mu.Unlock()
			st.aggs = append(st.aggs, f)
			var out []*pylon.Bucket
			for at := f.From.Truncate(f.Bucket); at.Before(f.To); at = at.Add(f.Bucket) {
				out = append(out, &pylon.Bucket{Start: at, Value: 20.5, Count: 3})
			}
			return out, nil
		},
		LatestReadingsFn: func(ctx context.Context, id string) ([]*pylon.Reading, error) {
			st.mu.Lock()
			defer st.mu.Unlock()
			return st.latest, nil
		},
		FindQuarantineFn: func(ctx context.Context, id string, limit int) ([]*pylon.QuarantinedMessage, error) {
			st.mu.Lock()
			defer st.mu.Unlock()
			st.errCall = append(st.errCall, id)
			if len(st.errors) > limit {
				return st.errors[:limit], nil
			}
			return st.errors, nil
		},
	}
}

// series is the body of readings.json.
type series struct {
	Name   string    `json:"name"`
	Unit   string    `json:"unit"`
	Range  string    `json:"range"`
	From   float64   `json:"from"`
	To     float64   `json:"to"`
	Mode   string    `json:"mode"`
	Bucket int64     `json:"bucket"`
	T      []float64 `json:"t"`
	V      []float64 `json:"v"`
}

func decodeJSON[T any](t testing.TB, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("decode %.200q: %v", body, err)
	}
	return v
}

func ptr[T any](v T) *T { return &v }
