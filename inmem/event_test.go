package inmem_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/inmem"
)

// event returns an event of the device, numbered by n in Reason.
func event(deviceID string, n int) pylon.Event {
	return pylon.Event{Type: pylon.EventReadings, DeviceID: deviceID, Reason: fmt.Sprint(n)}
}

// receive returns the next event of sub, failing t if none comes within a
// few seconds or the channel is closed.
func receive(t *testing.T, sub pylon.Subscription) pylon.Event {
	t.Helper()
	select {
	case e, ok := <-sub.C():
		if !ok {
			t.Fatal("got a closed channel, want an event")
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("got no event within 5s")
	}
	return pylon.Event{}
}

// wantNone fails t if sub has an event waiting.
func wantNone(t *testing.T, sub pylon.Subscription) {
	t.Helper()
	select {
	case e, ok := <-sub.C():
		t.Fatalf("got event %+v (open %v), want none", e, ok)
	default:
	}
}

// waitClosed fails t unless sub's channel is closed within a few seconds;
// it discards any events still buffered.
func waitClosed(t *testing.T, sub pylon.Subscription) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-sub.C():
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("channel not closed within 5s")
		}
	}
}

func TestFanOutAndFilter(t *testing.T) {
	es := inmem.NewEventService()
	ctx := t.Context()
	fleet1, fleet2 := es.Subscribe(ctx, ""), es.Subscribe(ctx, "")
	devA1, devA2 := es.Subscribe(ctx, "aaaa"), es.Subscribe(ctx, "aaaa")
	devB := es.Subscribe(ctx, "bbbb")
	if got := es.Subscribers(); got != 5 {
		t.Fatalf("got %d subscribers, want 5", got)
	}

	es.PublishEvent(event("aaaa", 1))
	es.PublishEvent(event("bbbb", 2))
	es.PublishEvent(event("cccc", 3))

	tests := []struct {
		name string
		sub  pylon.Subscription
		want []string // Reason of each event, in order
	}{
		{"fleet 1", fleet1, []string{"1", "2", "3"}},
		{"fleet 2", fleet2, []string{"1", "2", "3"}},
		{"device a 1", devA1, []string{"1"}},
		{"device a 2", devA2, []string{"1"}},
		{"device b", devB, []string{"2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, want := range tt.want {
				if got := receive(t, tt.sub).Reason; got != want {
					t.Fatalf("got event %s, want %s", got, want)
				}
			}
			wantNone(t, tt.sub)
			if got := tt.sub.Dropped(); got != 0 {
				t.Fatalf("got %d dropped, want 0", got)
			}
		})
	}
}

func TestEventContent(t *testing.T) {
	es := inmem.NewEventService()
	sub := es.Subscribe(t.Context(), "aaaa")
	v, online := 21.5, true
	want := pylon.Event{
		Type: pylon.EventReadings, DeviceID: "aaaa", Time: time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC),
		Readings: []pylon.Reading{{DeviceID: "aaaa", Name: "temp", Unit: "Cel", Value: &v}},
		Online:   &online, Reason: "r", State: "active",
	}
	es.PublishEvent(want)
	got := receive(t, sub)
	if got.Type != want.Type || got.DeviceID != want.DeviceID || !got.Time.Equal(want.Time) ||
		len(got.Readings) != 1 || got.Readings[0].Name != "temp" || *got.Readings[0].Value != v ||
		got.Online != want.Online || got.Reason != want.Reason || got.State != want.State {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestDropCounting(t *testing.T) {
	tests := []struct {
		name        string
		buffer      int
		publish     int
		wantBuffer  int
		wantDropped int64
	}{
		{"fits", 8, 8, 8, 0},
		{"small buffer", 4, 10, 4, 6},
		{"default buffer", 0, inmem.DefaultBuffer + 44, inmem.DefaultBuffer, 44},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := inmem.NewEventService()
			es.Buffer = tt.buffer
			slow := es.Subscribe(t.Context(), "")
			for i := range tt.publish {
				es.PublishEvent(event("aaaa", i))
			}
			if got := slow.Dropped(); got != tt.wantDropped {
				t.Fatalf("got %d dropped, want %d", got, tt.wantDropped)
			}
			if got := len(slow.C()); got != tt.wantBuffer {
				t.Fatalf("got %d buffered, want %d", got, tt.wantBuffer)
			}
			// The oldest events are kept; later ones were dropped.
			for i := range tt.wantBuffer {
				if got, want := receive(t, slow).Reason, fmt.Sprint(i); got != want {
					t.Fatalf("got event %s, want %s", got, want)
				}
			}
			// Room again: the next event arrives.
			es.PublishEvent(event("aaaa", -1))
			if got := receive(t, slow).Reason; got != "-1" {
				t.Fatalf("got event %s, want -1", got)
			}
			if got := slow.Dropped(); got != tt.wantDropped {
				t.Fatalf("got %d dropped after draining, want %d", got, tt.wantDropped)
			}
		})
	}
}

func TestSlowSubscriberDoesNotBlockOthers(t *testing.T) {
	es := inmem.NewEventService()
	es.Buffer = 1
	slow := es.Subscribe(t.Context(), "")
	fast := es.Subscribe(t.Context(), "")
	for i := range 100 {
		es.PublishEvent(event("aaaa", i))
		if got := receive(t, fast).Reason; got != fmt.Sprint(i) {
			t.Fatalf("fast subscriber: got event %s, want %d", got, i)
		}
	}
	if got := slow.Dropped(); got != 99 {
		t.Fatalf("slow subscriber: got %d dropped, want 99", got)
	}
	if got := fast.Dropped(); got != 0 {
		t.Fatalf("fast subscriber: got %d dropped, want 0", got)
	}
}

func TestCloseOnCancel(t *testing.T) {
	es := inmem.NewEventService()
	ctx, cancel := context.WithCancel(context.Background())
	sub := es.Subscribe(ctx, "aaaa")
	other := es.Subscribe(t.Context(), "aaaa")
	es.PublishEvent(event("aaaa", 1))
	cancel()
	waitClosed(t, sub)
	// The channel is closed after the subscription left the index.
	if got := es.Subscribers(); got != 1 {
		t.Fatalf("got %d subscribers after cancel, want 1", got)
	}
	// Publishing after the end neither panics nor reaches the closed
	// subscription; the other one still gets events.
	es.PublishEvent(event("aaaa", 2))
	if got := receive(t, other).Reason; got != "1" {
		t.Fatalf("got event %s, want 1", got)
	}
	if got := receive(t, other).Reason; got != "2" {
		t.Fatalf("got event %s, want 2", got)
	}
	if got := sub.Dropped(); got != 0 {
		t.Fatalf("got %d dropped, want 0", got)
	}
}

func TestSubscribeCancelledContext(t *testing.T) {
	es := inmem.NewEventService()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sub := es.Subscribe(ctx, "")
	waitClosed(t, sub)
	es.PublishEvent(event("aaaa", 1)) // must not panic
}

func TestConcurrent(t *testing.T) {
	const (
		publishers = 8
		perPub     = 2000
		devices    = 4
	)
	es := inmem.NewEventService()
	es.Buffer = 64 // small, so that drops happen too

	type counted struct {
		sub      pylon.Subscription
		deviceID string
		got      int
	}
	var (
		subs []*counted
		wg   sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range devices + 2 {
		dev := ""
		if i < devices {
			dev = fmt.Sprintf("dev%d", i)
		}
		c := &counted{sub: es.Subscribe(ctx, dev), deviceID: dev}
		subs = append(subs, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range c.sub.C() {
				c.got++
			}
		}()
	}

	// Churn: subscriptions come and go while events are published.
	churnCtx, stopChurn := context.WithCancel(context.Background())
	var churn sync.WaitGroup
	for i := range 4 {
		churn.Add(1)
		go func() {
			defer churn.Done()
			for churnCtx.Err() == nil {
				sctx, scancel := context.WithCancel(churnCtx)
				sub := es.Subscribe(sctx, fmt.Sprintf("dev%d", i%devices))
				scancel()
				for range sub.C() {
				}
			}
		}()
	}

	var pubs sync.WaitGroup
	for p := range publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := range perPub {
				es.PublishEvent(event(fmt.Sprintf("dev%d", (p+i)%devices), i))
			}
		}()
	}
	pubs.Wait()
	stopChurn()
	churn.Wait()
	cancel()
	wg.Wait()

	total := publishers * perPub
	for _, c := range subs {
		want := total
		if c.deviceID != "" {
			want = total / devices
		}
		if got := int64(c.got) + c.sub.Dropped(); got != int64(want) {
			t.Errorf("subscriber %q: got %d received + %d dropped = %d, want %d", c.deviceID, c.got, c.sub.Dropped(), got, want)
		}
	}
	if got := es.Subscribers(); got != 0 {
		t.Fatalf("got %d subscribers at the end, want 0", got)
	}
}

func TestPublishDoesNotAllocate(t *testing.T) {
	e := event("aaaa", 1)
	tests := []struct {
		name  string
		setup func(t *testing.T, es *inmem.EventService)
	}{
		{"no subscribers", func(t *testing.T, es *inmem.EventService) {}},
		{"other devices' subscribers", func(t *testing.T, es *inmem.EventService) {
			for i := range 100 {
				es.Subscribe(t.Context(), fmt.Sprintf("dev%d", i))
			}
		}},
		{"full subscriber", func(t *testing.T, es *inmem.EventService) {
			es.Subscribe(t.Context(), "aaaa")
			for range inmem.DefaultBuffer {
				es.PublishEvent(e)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := inmem.NewEventService()
			tt.setup(t, es)
			if got := testing.AllocsPerRun(1000, func() { es.PublishEvent(e) }); got != 0 {
				t.Fatalf("got %v allocations per PublishEvent, want 0", got)
			}
		})
	}
}

func BenchmarkPublishEvent(b *testing.B) {
	e := event("aaaa", 1)
	for _, bc := range []struct {
		name  string
		setup func(b *testing.B, es *inmem.EventService)
	}{
		{"no subscribers", func(b *testing.B, es *inmem.EventService) {}},
		{"1000 other devices", func(b *testing.B, es *inmem.EventService) {
			for i := range 1000 {
				es.Subscribe(b.Context(), fmt.Sprintf("dev%d", i))
			}
		}},
		{"1 device and 1 fleet subscriber, full", func(b *testing.B, es *inmem.EventService) {
			es.Subscribe(b.Context(), "aaaa")
			es.Subscribe(b.Context(), "")
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			es := inmem.NewEventService()
			bc.setup(b, es)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					es.PublishEvent(e)
				}
			})
		})
	}
}
