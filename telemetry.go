package pylon

import (
	"context"
	"time"
)

// Reading is one resolved SenML record (RFC 8428): a named measurement of a
// device at a time. Exactly one of Value, StringValue, BoolValue and
// DataValue is set.
type Reading struct {
	DeviceID    string    `json:"device_id"`
	Name        string    `json:"name"`           // resolved name (base name + name)
	Unit        string    `json:"unit,omitempty"` // from the SenML units registry
	Time        time.Time `json:"time"`           // resolved absolute time
	Value       *float64  `json:"v,omitempty"`
	StringValue *string   `json:"vs,omitempty"`
	BoolValue   *bool     `json:"vb,omitempty"`
	DataValue   []byte    `json:"vd,omitempty"`
	Sum         *float64  `json:"s,omitempty"`
}

// Limits on telemetry messages.
const (
	MaxReadingsPerMessage = 1000     // SenML records in one message
	MaxMessageBytes       = 64 << 10 // MQTT payload of one telemetry message
	MaxDecodedBytes       = 1 << 20  // a message after decompression
	MaxSenMLNameLen       = 128      // resolved name
	MaxStringValueLen     = 1024     // vs
	MaxDataValueLen       = 4096     // vd, decoded
)

// TelemetryMessage is one verified, decoded telemetry message of a device:
// the unit of deduplication (by DeviceID and Seq) and of acknowledgement.
type TelemetryMessage struct {
	DeviceID string
	Seq      uint64
	Received time.Time
	Readings []Reading
}

// ReplayWindow is how far below a device's highest stored sequence number a
// message may arrive and still be stored (late QoS 1 redeliveries after a
// reconnect). Anything older is refused as a replay.
const ReplayWindow = 4096

// WriteStatus is what became of one message in a write.
type WriteStatus int

// Write statuses.
const (
	WriteStored    WriteStatus = iota // stored now
	WriteDuplicate                    // (device, seq) was stored before; nothing written
	WriteReplay                       // seq is below the replay window; refused
)

// ReadingFilter selects readings of one device.
type ReadingFilter struct {
	DeviceID string
	Name     string // exact resolved name; "" for all
	From, To *time.Time
	Cursor   string // opaque, from a previous page
	Limit    int    // 1000 if 0, at most 10000
	Desc     bool   // newest first
}

// Aggregation names.
const (
	AggAvg   = "avg"
	AggMin   = "min"
	AggMax   = "max"
	AggCount = "count"
)

// AggregateFilter asks for numeric readings of one name grouped in time
// buckets.
type AggregateFilter struct {
	DeviceID string
	Name     string
	From, To time.Time
	Bucket   time.Duration // at least one second
	Agg      string        // AggAvg, AggMin, AggMax or AggCount
}

// Bucket is one aggregated time bucket.
type Bucket struct {
	Start time.Time `json:"start"`
	Value float64   `json:"value"`
	Count int64     `json:"count"`
}

// QuarantinedMessage is a refused telemetry message, kept for inspection.
type QuarantinedMessage struct {
	ID       int64     `json:"id"`
	DeviceID string    `json:"device_id"`
	Received time.Time `json:"received"`
	Reason   string    `json:"reason"` // what was wrong, as sent to the device
	// Code is the kind of error, as in the device's error report:
	// "invalid", "unauthorized" or "too_large" ("" for messages
	// quarantined before codes were kept).
	Code string `json:"code"`
	// Seq is the message's sequence number; 0 when it is not known, and
	// always 0 for a message whose signature did not verify (an
	// unverified number means nothing).
	Seq uint64 `json:"seq"`
	// Payload is the message as received, cut to its first
	// MaxQuarantinePayload bytes.
	Payload []byte `json:"payload"`
}

// MaxQuarantinePayload is how much of a refused message the quarantine
// keeps: an oversize message is kept as its first 64 KiB.
const MaxQuarantinePayload = 64 << 10

// MaxQuarantine is how many refused messages are kept; older ones are
// dropped first.
const MaxQuarantine = 10000

// TelemetryService stores readings.
type TelemetryService interface {
	// WriteMessages stores msgs in one transaction and durably commits it
	// before returning. Each (DeviceID, Seq) is stored at most once; the
	// status of each message is returned in order.
	WriteMessages(ctx context.Context, msgs []*TelemetryMessage) ([]WriteStatus, error)

	// FindReadings returns a page of readings and the next cursor ("" on
	// the last page). Returns EINVALID for a bad cursor.
	FindReadings(ctx context.Context, filter ReadingFilter) ([]*Reading, string, error)

	// LatestReadings returns the newest reading of each name of the device.
	LatestReadings(ctx context.Context, deviceID string) ([]*Reading, error)

	// AggregateReadings returns buckets in time order; empty buckets are
	// left out. Returns EINVALID for a bad aggregation or bucket.
	AggregateReadings(ctx context.Context, filter AggregateFilter) ([]*Bucket, error)

	// DeleteReadingsBefore removes readings older than t, and forgets the
	// sequence numbers of messages received before t, except each device's
	// latest ones (so that its replay window survives), and returns how
	// many readings went.
	DeleteReadingsBefore(ctx context.Context, t time.Time) (int64, error)

	// QuarantineMessage keeps a refused message, dropping the oldest beyond
	// MaxQuarantine.
	QuarantineMessage(ctx context.Context, m *QuarantinedMessage) error

	// FindQuarantine returns refused messages, newest first; deviceID ""
	// for all.
	FindQuarantine(ctx context.Context, deviceID string, limit int) ([]*QuarantinedMessage, error)
}
