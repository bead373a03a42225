package dashboard

import (
	"net/http"

	"github.com/pylonhq/pylon"
)

// overviewAuditLimit is how many audit records the fleet page shows.
const overviewAuditLimit = 10

// lifecycle lists the device states in lifecycle order.
var lifecycle = []pylon.DeviceState{pylon.DeviceRegistered, pylon.DeviceActive, pylon.DeviceSuspended, pylon.DeviceDecommissioned}

// stateCount is one row of the devices-by-state table.
type stateCount struct {
	State pylon.DeviceState
	Count int
}

type overviewData struct {
	Total, Online, Offline int
	ByState                []stateCount
	Audit                  []*pylon.AuditRecord

	Telemetry  bool        // a TelemetryService is set: refused messages are shown
	Live       bool        // an EventService is set: rates are shown
	Rates      *fleetRates // nil without Live
	Errors     []fleetError
	ErrorsFail string // why Errors could not be read
}

// handleOverview shows the fleet at a glance: device counts, message rates
// and the newest refused messages. It costs three indexed queries whatever
// the size of the fleet; the rates come from memory.
func (s *Server) handleOverview(w http.ResponseWriter, r *http.Request, u *user) {
	ctx := r.Context()
	stats, err := s.Devices.DeviceStats(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	recs, err := s.Audit.FindAuditRecords(ctx, pylon.AuditFilter{Desc: true, Limit: overviewAuditLimit})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d := overviewData{Total: stats.Total, Online: stats.Online, Offline: stats.Total - stats.Online, Audit: recs,
		Telemetry: s.Telemetry != nil, Live: s.Events != nil}
	for _, st := range lifecycle {
		d.ByState = append(d.ByState, stateCount{State: st, Count: stats.ByState[st]})
	}
	if d.Live {
		rates := s.meter.rates(s.now())
		d.Rates = &rates
	}
	d.Errors, d.ErrorsFail = s.fleetErrors(r)
	v := s.newView(u, "overview", "Fleet", d)
	v.Live = d.Live
	s.render(w, r, http.StatusOK, "overview", v)
}
