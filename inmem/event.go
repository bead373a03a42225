// Package inmem implements pylon.EventService as an in-process hub: the live
// feed that the dashboard and SSE clients watch.
//
// Events are not durable. PublishEvent never blocks: it offers each event to
// every matching subscriber's buffered channel and, when a buffer is full,
// drops the event for that subscriber and counts it (Subscription.Dropped).
// A slow subscriber therefore loses events instead of slowing down ingest.
//
// # Locking
//
// One RWMutex guards the subscriber index. Publishers hold the read lock
// while they offer an event (a few non-blocking channel sends), so many
// publish at once; Subscribe and the end of a subscription take the write
// lock. A subscription's channel is closed only under the write lock, after
// the subscription has left the index, so no publisher can send on a closed
// channel.
package inmem

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/pylonhq/pylon"
)

// DefaultBuffer is the channel capacity of a subscription when
// EventService.Buffer is not set.
const DefaultBuffer = 256

// maxBuffer bounds EventService.Buffer.
const maxBuffer = 1 << 16

// EventService is an in-process publish/subscribe hub for live events. The
// zero value is not ready for use; call NewEventService. It is safe for
// concurrent use.
type EventService struct {
	// Buffer is the channel capacity of subscriptions made after it is set:
	// DefaultBuffer if 0, at most 65536. Set it before sharing the service.
	Buffer int

	subscribers atomic.Int64 // how many subscriptions are in byDevice

	mu       sync.RWMutex
	byDevice map[string]map[*subscription]struct{} // device ID ("" for all) → subscriptions
}

var (
	_ pylon.EventService = (*EventService)(nil)
	_ pylon.Subscription = (*subscription)(nil)
)

// NewEventService returns an EventService with no subscribers.
func NewEventService() *EventService {
	return &EventService{byDevice: make(map[string]map[*subscription]struct{})}
}

// subscription is one Subscribe call's stream.
type subscription struct {
	deviceID string
	c        chan pylon.Event
	dropped  atomic.Int64
}

// C returns the event channel. It is closed when the subscription's
// context ends.
func (s *subscription) C() <-chan pylon.Event { return s.c }

// Dropped returns how many events this subscription has lost because its
// buffer was full.
func (s *subscription) Dropped() int64 { return s.dropped.Load() }

// PublishEvent offers e to the subscribers of e.DeviceID and to those of
// the whole fleet, without blocking. A subscriber whose buffer is full does
// not get e; its Dropped count goes up. Subscribers share e's Readings
// slice and must not modify it. With no subscribers, PublishEvent does not
// allocate and takes no lock.
func (s *EventService) PublishEvent(e pylon.Event) {
	if s.subscribers.Load() == 0 {
		return
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	offer(s.byDevice[""], &e)
	if e.DeviceID != "" {
		offer(s.byDevice[e.DeviceID], &e)
	}
}

// offer sends *e to each of subs that has room, counting drops.
func offer(subs map[*subscription]struct{}, e *pylon.Event) {
	for sub := range subs {
		select {
		case sub.c <- *e:
		default:
			sub.dropped.Add(1)
		}
	}
}

// Subscribe returns the events of deviceID ("" for every device) until ctx
// ends; then the subscription is removed and its channel closed. Every
// event published after Subscribe returns is offered to it.
func (s *EventService) Subscribe(ctx context.Context, deviceID string) pylon.Subscription {
	n := s.Buffer
	if n <= 0 {
		n = DefaultBuffer
	} else if n > maxBuffer {
		n = maxBuffer
	}
	sub := &subscription{deviceID: deviceID, c: make(chan pylon.Event, n)}

	s.mu.Lock()
	subs := s.byDevice[deviceID]
	if subs == nil {
		subs = make(map[*subscription]struct{})
		s.byDevice[deviceID] = subs
	}
	subs[sub] = struct{}{}
	s.subscribers.Add(1)
	s.mu.Unlock()

	context.AfterFunc(ctx, func() { s.unsubscribe(sub) })
	return sub
}

// unsubscribe removes sub from the index and closes its channel.
func (s *EventService) unsubscribe(sub *subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := s.byDevice[sub.deviceID]
	if _, ok := subs[sub]; !ok {
		return
	}
	delete(subs, sub)
	if len(subs) == 0 {
		delete(s.byDevice, sub.deviceID)
	}
	s.subscribers.Add(-1)
	close(sub.c)
}

// Subscribers returns how many subscriptions are open.
func (s *EventService) Subscribers() int {
	return int(s.subscribers.Load())
}
