package pylon

import (
	"context"
	"time"
)

// Event types of the live feed.
const (
	EventReadings   = "readings"   // a device's stored readings
	EventConnection = "connection" // a device came online or went offline
	EventRejected   = "rejected"   // a device's message was refused
	EventState      = "state"      // a device's lifecycle state changed
)

// Event is one item of the live feed that the dashboard and SSE clients
// watch. Events are not durable: a slow subscriber misses some.
type Event struct {
	Type     string    `json:"type"`
	DeviceID string    `json:"device_id"`
	Time     time.Time `json:"time"`
	Readings []Reading `json:"readings,omitempty"`
	Online   *bool     `json:"online,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Code     string    `json:"code,omitempty"` // of a rejected message: as in its error report
	Seq      uint64    `json:"seq,omitempty"`  // of a rejected message whose signature verified
	State    string    `json:"state,omitempty"`
}

// EventService is an in-process publish/subscribe hub for live events.
type EventService interface {
	// PublishEvent delivers e to current subscribers without blocking.
	PublishEvent(e Event)

	// Subscribe returns events for deviceID ("" for the whole fleet) until
	// ctx ends; the channel is then closed. A subscriber that falls behind
	// by more than its buffer loses events (counted in Dropped).
	Subscribe(ctx context.Context, deviceID string) Subscription
}

// Subscription is a live event stream.
type Subscription interface {
	C() <-chan Event
	Dropped() int64
}
