package mock

import (
	"context"

	"github.com/pylonhq/pylon"
)

var (
	_ pylon.EventService = (*EventService)(nil)
	_ pylon.Subscription = (*Subscription)(nil)
)

// EventService is a fake pylon.EventService.
type EventService struct {
	PublishEventFn func(e pylon.Event)
	SubscribeFn    func(ctx context.Context, deviceID string) pylon.Subscription
}

// PublishEvent calls PublishEventFn.
func (s *EventService) PublishEvent(e pylon.Event) {
	s.PublishEventFn(e)
}

// Subscribe calls SubscribeFn.
func (s *EventService) Subscribe(ctx context.Context, deviceID string) pylon.Subscription {
	return s.SubscribeFn(ctx, deviceID)
}

// Subscription is a fake pylon.Subscription.
type Subscription struct {
	CFn       func() <-chan pylon.Event
	DroppedFn func() int64
}

// C calls CFn.
func (s *Subscription) C() <-chan pylon.Event {
	return s.CFn()
}

// Dropped calls DroppedFn.
func (s *Subscription) Dropped() int64 {
	return s.DroppedFn()
}
