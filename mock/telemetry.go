package mock

import (
	"context"
	"time"

	"github.com/pylonhq/pylon"
)

var _ pylon.TelemetryService = (*TelemetryService)(nil)

// TelemetryService is a fake pylon.TelemetryService.
type TelemetryService struct {
	WriteMessagesFn        func(ctx context.Context, msgs []*pylon.TelemetryMessage) ([]pylon.WriteStatus, error)
	FindReadingsFn         func(ctx context.Context, filter pylon.ReadingFilter) ([]*pylon.Reading, string, error)
	LatestReadingsFn       func(ctx context.Context, deviceID string) ([]*pylon.Reading, error)
	AggregateReadingsFn    func(ctx context.Context, filter pylon.AggregateFilter) ([]*pylon.Bucket, error)
	DeleteReadingsBeforeFn func(ctx context.Context, t time.Time) (int64, error)
	QuarantineMessageFn    func(ctx context.Context, m *pylon.QuarantinedMessage) error
	FindQuarantineFn       func(ctx context.Context, deviceID string, limit int) ([]*pylon.QuarantinedMessage, error)
}

// WriteMessages calls WriteMessagesFn.
func (s *TelemetryService) WriteMessages(ctx context.Context, msgs []*pylon.TelemetryMessage) ([]pylon.WriteStatus, error) {
	return s.WriteMessagesFn(ctx, msgs)
}

// FindReadings calls FindReadingsFn.
func (s *TelemetryService) FindReadings(ctx context.Context, filter pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
	return s.FindReadingsFn(ctx, filter)
}

// LatestReadings calls LatestReadingsFn.
func (s *TelemetryService) LatestReadings(ctx context.Context, deviceID string) ([]*pylon.Reading, error) {
	return s.LatestReadingsFn(ctx, deviceID)
}

// AggregateReadings calls AggregateReadingsFn.
func (s *TelemetryService) AggregateReadings(ctx context.Context, filter pylon.AggregateFilter) ([]*pylon.Bucket, error) {
	return s.AggregateReadingsFn(ctx, filter)
}

// DeleteReadingsBefore calls DeleteReadingsBeforeFn.
func (s *TelemetryService) DeleteReadingsBefore(ctx context.Context, t time.Time) (int64, error) {
	return s.DeleteReadingsBeforeFn(ctx, t)
}

// QuarantineMessage calls QuarantineMessageFn.
func (s *TelemetryService) QuarantineMessage(ctx context.Context, m *pylon.QuarantinedMessage) error {
	return s.QuarantineMessageFn(ctx, m)
}

// FindQuarantine calls FindQuarantineFn.
func (s *TelemetryService) FindQuarantine(ctx context.Context, deviceID string, limit int) ([]*pylon.QuarantinedMessage, error) {
	return s.FindQuarantineFn(ctx, deviceID, limit)
}
