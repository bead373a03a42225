package device

import (
	"errors"
	"fmt"
	"time"
)

// Errors.
var (
	// ErrNotEnrolled means the directory holds no device identity: call
	// Enroll first.
	ErrNotEnrolled = errors.New("device: not enrolled")

	// ErrQueueFull means the outbox holds Options.MaxQueued messages or
	// Options.MaxQueueBytes bytes. Nothing was queued and nothing queued
	// before was dropped: the SDK never discards accepted data to make
	// room. The caller decides: retry later, drop, or aggregate.
	ErrQueueFull = errors.New("device: outbox full")

	// ErrClosed means the Client was closed (or its context cancelled). A
	// Publish waiting for its acknowledgement gets it; its message stays
	// queued and is sent after the next Connect.
	ErrClosed = errors.New("device: client closed")
)

// PlatformError is a telemetry message the platform refused: reported on
// the device's errors topic (devices/{id}/errors) or by a negative MQTT 5
// PUBACK. Publish returns it (as *PlatformError) for a refused message,
// and Options.OnError receives each one once.
type PlatformError struct {
	Seq    uint64    `json:"seq"`    // the refused message's sequence number; 0 if unreadable
	Code   string    `json:"code"`   // "invalid", "unauthorized", "too_large" (or "mqtt_0xNN")
	Reason string    `json:"reason"` // what was wrong, for humans
	Time   time.Time `json:"time"`   // when the platform refused it
	// ReasonCode is the MQTT 5 PUBACK reason code (0x87, 0x97, 0x99, ...),
	// or 0 when the report came from the errors topic.
	ReasonCode byte `json:"-"`
}

// Error implements error.
func (e *PlatformError) Error() string {
	return fmt.Sprintf("device: message %d refused by the platform (%s): %s", e.Seq, e.Code, e.Reason)
}

// refusalCode maps a PUBACK reason code to the errors-topic code.
func refusalCode(rc byte) string {
	switch rc {
	case 0x87:
		return "unauthorized"
	case 0x97:
		return "too_large"
	case 0x99:
		return "invalid"
	}
	return fmt.Sprintf("mqtt_0x%02x", rc)
}

// retryable reports whether a negative PUBACK reason code means "not now"
// rather than "never": the message stays queued and is sent again.
// 0x80 (unspecified) and 0x91 (packet identifier in use) say nothing about
// the message; 0x97 (quota exceeded) is Pylon's "too large" and final.
func retryable(rc byte) bool {
	switch rc {
	case 0x83, 0x87, 0x90, 0x97, 0x99:
		return false
	}
	return true
}
