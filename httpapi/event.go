package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/sse"
)

// Live event streams (Server-Sent Events).
const (
	DefaultMaxStreams   = 1000             // concurrent event streams per server
	DefaultPingInterval = 15 * time.Second // a ": ping" comment keeps idle streams open through proxies
	StreamWriteTimeout  = 30 * time.Second // a stream whose client takes longer to take one write is dropped
	MaxEventLine        = 1 << 20          // longest SSE line the Client reads
)

// streamState is what the server knows of its open event streams.
type streamState struct {
	ctx    context.Context // cancelled by Shutdown: every stream ends
	cancel context.CancelFunc
	open   chan struct{} // one token per open stream; its capacity is the limit
}

func newStreamState(max int) *streamState {
	ctx, cancel := context.WithCancel(context.Background())
	return &streamState{ctx: ctx, cancel: cancel, open: make(chan struct{}, max)}
}

// acquire takes a stream slot, or reports that all are taken.
func (st *streamState) acquire() bool {
	select {
	case st.open <- struct{}{}:
		return true
	default:
		return false
	}
}

func (st *streamState) release() { <-st.open }

func (s *Server) handleFleetEvents(w http.ResponseWriter, r *http.Request) {
	s.serveEvents(w, r, "")
}

func (s *Server) handleDeviceEvents(w http.ResponseWriter, r *http.Request) {
	if s.Events == nil {
		Error(w, r, errTelemetryOff)
		return
	}
	id, err := s.deviceForTelemetry(r)
	if err != nil {
		Error(w, r, err)
		return
	}
	s.serveEvents(w, r, id)
}

// serveEvents streams the live events of deviceID ("" for the fleet) as
// Server-Sent Events: "event: TYPE" and "data: JSON" per event, and a
// ": ping" comment every PingInterval. It ends when the client goes away,
// the EventService closes the subscription, a write stalls for
// StreamWriteTimeout (sse.Start renews the deadline per write), or the
// server shuts down.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request, deviceID string) {
	if s.Events == nil {
		Error(w, r, errTelemetryOff)
		return
	}
	if s.streams.ctx.Err() != nil {
		Error(w, r, pylon.Errorf(pylon.EUNAVAILABLE, "server is shutting down"))
		return
	}
	if !s.streams.acquire() {
		w.Header().Set("Retry-After", "30")
		Error(w, r, pylon.Errorf(pylon.EUNAVAILABLE, "too many open event streams; retry later"))
		return
	}
	defer s.streams.release()

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.streams.ctx, cancel)()
	// Subscribe before answering, so that nothing published after the
	// client has its 200 is missed.
	sub := s.Events.Subscribe(ctx, deviceID)

	write := sse.Start(w, StreamWriteTimeout)
	if !write([]byte(": connected\n\n")) {
		return
	}
	s.log.Debug("event stream opened", "device", deviceID, "remote", r.RemoteAddr)
	defer s.log.Debug("event stream closed", "device", deviceID, "remote", r.RemoteAddr)

	ping := time.NewTicker(s.pingInterval())
	defer ping.Stop()
	var (
		dropped int64
		buf     []byte
	)
	for {
		var msg []byte
		select {
		case <-ctx.Done():
			return
		case <-ping.C:
			msg = []byte(": ping\n\n")
		case ev, ok := <-sub.C():
			if !ok {
				return
			}
			data, err := json.Marshal(ev)
			if err != nil {
				s.log.Error("encode event", "type", ev.Type, "device", ev.DeviceID, "err", err)
				continue
			}
			buf = buf[:0]
			if d := sub.Dropped(); d > dropped {
				// A comment: clients learn they missed events, parsers skip it.
				buf = append(buf, ": dropped "...)
				buf = strconv.AppendInt(buf, d-dropped, 10)
				buf = append(buf, '\n')
				dropped = d
			}
			buf = append(buf, "event: "...)
			buf = append(buf, eventName(ev.Type)...)
			buf = append(buf, "\ndata: "...)
			buf = append(buf, data...) // json.Marshal never writes a newline
			buf = append(buf, "\n\n"...)
			msg = buf
		}
		if !write(msg) {
			return
		}
	}
}

// eventName returns an event type fit for an SSE "event:" line.
func eventName(t string) string {
	if t == "" || strings.ContainsAny(t, "\r\n") || len(t) > 64 {
		return "message"
	}
	return t
}

func (s *Server) pingInterval() time.Duration {
	if s.PingInterval > 0 {
		return s.PingInterval
	}
	return DefaultPingInterval
}
