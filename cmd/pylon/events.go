package main

import (
	"context"
	"crypto/x509"
	"time"

	"github.com/pylonhq/pylon"
)

// stateEvents publishes a pylon.EventState on the live feed after every
// successful lifecycle transition, so that dashboards and SSE clients see
// suspensions, resumptions and decommissions as they happen.
type stateEvents struct {
	pylon.DeviceService
	events pylon.EventService
	now    func() time.Time
}

// TransitionDevice implements pylon.DeviceService.
func (s *stateEvents) TransitionDevice(ctx context.Context, id string, next pylon.DeviceState) (*pylon.Device, error) {
	d, err := s.DeviceService.TransitionDevice(ctx, id, next)
	if err == nil {
		s.events.PublishEvent(pylon.Event{Type: pylon.EventState, DeviceID: d.ID, Time: s.now(), State: string(d.State)})
	}
	return d, err
}

// enrollEvents publishes a pylon.EventState "active" after every
// successful enrollment: a registered device becomes active with its first
// certificate, and a fleet token creates an active device.
type enrollEvents struct {
	pylon.ProvisioningService
	events pylon.EventService
	now    func() time.Time
}

// Enroll implements pylon.ProvisioningService.
func (s *enrollEvents) Enroll(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error) {
	cert, err := s.ProvisioningService.Enroll(ctx, req)
	if err == nil {
		s.events.PublishEvent(pylon.Event{Type: pylon.EventState, DeviceID: cert.Subject.CommonName, Time: s.now(), State: string(pylon.DeviceActive)})
	}
	return cert, err
}
