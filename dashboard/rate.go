package dashboard

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/pylonhq/pylon"
)

// rateWindow is the span over which the overview's rates are averaged.
const rateWindow = 60 * time.Second

// rateMeter counts the fleet's telemetry messages and refused messages per
// second over the last rateWindow, in one-second slots. It costs a few
// hundred bytes and a mutex per event.
type rateMeter struct {
	mu       sync.Mutex
	start    time.Time
	slots    [int(rateWindow / time.Second)]rateSlot
	messages int64 // since start
	rejected int64
}

type rateSlot struct {
	sec                int64 // Unix second the counts belong to
	messages, rejected int64
}

func newRateMeter(start time.Time) *rateMeter {
	return &rateMeter{start: start}
}

// add counts messages and rejected messages at now.
func (m *rateMeter) add(now time.Time, messages, rejected int64) {
	sec := now.Unix()
	m.mu.Lock()
	defer m.mu.Unlock()
	sl := &m.slots[uint64(sec)%uint64(len(m.slots))]
	if sl.sec != sec {
		*sl = rateSlot{sec: sec}
	}
	sl.messages += messages
	sl.rejected += rejected
	m.messages += messages
	m.rejected += rejected
}

// fleetRates is what the overview shows of the fleet's traffic.
type fleetRates struct {
	Messages      float64 `json:"messages_per_second"`
	Rejected      float64 `json:"rejected_per_second"`
	MessagesTotal int64   `json:"messages_total"` // since the dashboard started counting
	RejectedTotal int64   `json:"rejected_total"`
	MessagesText  string  `json:"messages_text"`
	RejectedText  string  `json:"rejected_text"`
	Window        int     `json:"window_seconds"` // the span the rates average over
}

// rates returns the rates over the last rateWindow at now, or since the
// meter started if that is more recent (but at least one second).
func (m *rateMeter) rates(now time.Time) fleetRates {
	sec := now.Unix()
	m.mu.Lock()
	defer m.mu.Unlock()
	var msgs, rej int64
	for _, sl := range m.slots {
		if sl.sec > sec-int64(len(m.slots)) && sl.sec <= sec {
			msgs += sl.messages
			rej += sl.rejected
		}
	}
	span := min(max(now.Sub(m.start), time.Second), rateWindow)
	r := fleetRates{
		Messages: float64(msgs) / span.Seconds(), Rejected: float64(rej) / span.Seconds(),
		MessagesTotal: m.messages, RejectedTotal: m.rejected, Window: int(span / time.Second),
	}
	r.MessagesText, r.RejectedText = formatRate(r.Messages), formatRate(r.Rejected)
	return r
}

// startFleetMeter subscribes to the whole fleet's events for as long as
// ctx lasts (the process, or until Close) and feeds the rate meter. A
// subscriber that falls behind loses events; the meter then undercounts,
// and says so in the log.
func (s *Server) startFleetMeter(ctx context.Context) {
	sub := s.Events.Subscribe(ctx, "")
	go func() {
		var dropped int64
		for ev := range sub.C() {
			switch ev.Type {
			case pylon.EventReadings:
				s.meter.add(s.now(), 1, 0)
			case pylon.EventRejected:
				s.meter.add(s.now(), 0, 1)
			}
			if d := sub.Dropped(); d > dropped && d-dropped >= 1000 {
				s.log.Warn("fleet rate meter falls behind; rates undercount", "dropped", d)
				dropped = d
			}
		}
	}()
}

// fleetStats is the body of GET /stats.json: the fleet's message rates
// and its device counts.
type fleetStats struct {
	fleetRates
	Devices int `json:"devices"`
	Online  int `json:"online"`
	Offline int `json:"offline"`
}

// handleStatsJSON answers the fleet's message rates and device counts, for
// the overview's script to refresh them.
func (s *Server) handleStatsJSON(w http.ResponseWriter, r *http.Request, u *user) {
	if s.Events == nil {
		s.failJSON(w, r, errTelemetryOff)
		return
	}
	st, err := s.Devices.DeviceStats(r.Context())
	if err != nil {
		s.failJSON(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, fleetStats{fleetRates: s.meter.rates(s.now()), Devices: st.Total, Online: st.Online, Offline: st.Total - st.Online})
}
