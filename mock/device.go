package mock

import (
	"context"
	"time"

	"github.com/pylonhq/pylon"
)

var _ pylon.DeviceService = (*DeviceService)(nil)

// DeviceService is a fake pylon.DeviceService.
type DeviceService struct {
	FindDeviceByIDFn   func(ctx context.Context, id string) (*pylon.Device, error)
	FindDevicesFn      func(ctx context.Context, filter pylon.DeviceFilter) ([]*pylon.Device, string, error)
	CreateDeviceFn     func(ctx context.Context, d *pylon.Device) error
	UpdateDeviceFn     func(ctx context.Context, id string, upd pylon.DeviceUpdate) (*pylon.Device, error)
	DeleteDeviceFn     func(ctx context.Context, id string) error
	TransitionDeviceFn func(ctx context.Context, id string, next pylon.DeviceState) (*pylon.Device, error)
	RecordConnectionFn func(ctx context.Context, ev pylon.ConnectionEvent) error
	FindConnectionsFn  func(ctx context.Context, deviceID string, limit int) ([]*pylon.ConnectionEvent, error)
	ResetConnectionsFn func(ctx context.Context, at time.Time) (int, error)
	DeviceStatsFn      func(ctx context.Context) (pylon.DeviceStats, error)
}

// FindDeviceByID calls FindDeviceByIDFn.
func (s *DeviceService) FindDeviceByID(ctx context.Context, id string) (*pylon.Device, error) {
	return s.FindDeviceByIDFn(ctx, id)
}

// FindDevices calls FindDevicesFn.
func (s *DeviceService) FindDevices(ctx context.Context, filter pylon.DeviceFilter) ([]*pylon.Device, string, error) {
	return s.FindDevicesFn(ctx, filter)
}

// CreateDevice calls CreateDeviceFn.
func (s *DeviceService) CreateDevice(ctx context.Context, d *pylon.Device) error {
	return s.CreateDeviceFn(ctx, d)
}

// UpdateDevice calls UpdateDeviceFn.
func (s *DeviceService) UpdateDevice(ctx context.Context, id string, upd pylon.DeviceUpdate) (*pylon.Device, error) {
	return s.UpdateDeviceFn(ctx, id, upd)
}

// DeleteDevice calls DeleteDeviceFn.
func (s *DeviceService) DeleteDevice(ctx context.Context, id string) error {
	return s.DeleteDeviceFn(ctx, id)
}

// TransitionDevice calls TransitionDeviceFn.
func (s *DeviceService) TransitionDevice(ctx context.Context, id string, next pylon.DeviceState) (*pylon.Device, error) {
	return s.TransitionDeviceFn(ctx, id, next)
}

// RecordConnection calls RecordConnectionFn.
func (s *DeviceService) RecordConnection(ctx context.Context, ev pylon.ConnectionEvent) error {
	return s.RecordConnectionFn(ctx, ev)
}

// FindConnections calls FindConnectionsFn.
func (s *DeviceService) FindConnections(ctx context.Context, deviceID string, limit int) ([]*pylon.ConnectionEvent, error) {
	return s.FindConnectionsFn(ctx, deviceID, limit)
}

// ResetConnections calls ResetConnectionsFn.
func (s *DeviceService) ResetConnections(ctx context.Context, at time.Time) (int, error) {
	return s.ResetConnectionsFn(ctx, at)
}

// DeviceStats calls DeviceStatsFn.
func (s *DeviceService) DeviceStats(ctx context.Context) (pylon.DeviceStats, error) {
	return s.DeviceStatsFn(ctx)
}
