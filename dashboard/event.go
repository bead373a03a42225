package dashboard

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/sse"
)

// Live event streams of the device page (Server-Sent Events).
const (
	DefaultMaxStreams    = 200              // streams open at once over all sessions
	MaxStreamsPerSession = 6                // streams open at once per session (a few tabs)
	DefaultPingInterval  = 15 * time.Second // a ": ping" comment keeps idle streams open through proxies
	StreamWriteTimeout   = 30 * time.Second // a client that takes longer to take one write is dropped
	streamRetry          = 5 * time.Second  // the browser's reconnection delay, sent as "retry:"

	// DefaultStatePollInterval is how often a stream reads its device's
	// connection and lifecycle state from the store, to send the changes.
	DefaultStatePollInterval = time.Second
)

// streamSet counts the open event streams, overall and per session, and
// ends them all when the HTTP server shuts down or the dashboard closes.
type streamSet struct {
	ctx    context.Context // done: every stream ends, new ones are refused
	cancel context.CancelFunc
	max    int
	perMax int

	mu        sync.Mutex
	open      int
	bySession map[[32]byte]int
	hooked    map[*http.Server]bool // servers whose Shutdown ends the streams
}

func newStreamSet(parent context.Context, max, perSession int) *streamSet {
	ctx, cancel := context.WithCancel(parent)
	return &streamSet{ctx: ctx, cancel: cancel, max: max, perMax: perSession, bySession: map[[32]byte]int{}, hooked: map[*http.Server]bool{}}
}

// acquire takes a stream slot for a session. It returns EUNAVAILABLE when
// the dashboard is shutting down or every slot is taken, ERATELIMITED when
// the session has its share.
func (st *streamSet) acquire(session [32]byte) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case st.ctx.Err() != nil:
		return pylon.Errorf(pylon.EUNAVAILABLE, "the server is shutting down")
	case st.bySession[session] >= st.perMax:
		return pylon.Errorf(pylon.ERATELIMITED, "too many live views open in this session; close some tabs")
	case st.open >= st.max:
		return pylon.Errorf(pylon.EUNAVAILABLE, "too many live views are open; retry later")
	}
	st.open++
	st.bySession[session]++
	return nil
}

func (st *streamSet) release(session [32]byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.open--
	if st.bySession[session]--; st.bySession[session] <= 0 {
		delete(st.bySession, session)
	}
}

// count returns how many streams are open.
func (st *streamSet) count() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.open
}

// hook makes the Shutdown of the HTTP server serving r end the streams:
// http.Server.Shutdown waits for active requests, which a stream never
// stops being on its own.
func (st *streamSet) hook(r *http.Request) {
	srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server)
	if !ok || srv == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.hooked[srv] {
		st.hooked[srv] = true
		srv.RegisterOnShutdown(st.cancel)
	}
}

// api wraps a GET endpoint of the pages' scripts (JSON or an event
// stream). It needs a session whose role allows reading, like page, but
// answers 401 or 403 instead of redirecting, and refuses requests from
// other origins.
func (s *Server) api(h func(w http.ResponseWriter, r *http.Request, u *user)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if !sameOrigin(r) {
			s.failJSON(w, r, pylon.Errorf(pylon.EFORBIDDEN, "cross-origin request refused"))
			return
		}
		u, err := s.authenticate(r)
		if err != nil {
			s.failJSON(w, r, err)
			return
		} else if u == nil {
			s.failJSON(w, r, pylon.Errorf(pylon.EUNAUTHORIZED, "not signed in"))
			return
		}
		r = withUser(r, u)
		if !u.Role.Allows(pylon.PermRead) {
			s.failJSON(w, r, pylon.Errorf(pylon.EFORBIDDEN, "your API token's role may not use the dashboard"))
			return
		}
		h(w, r, u)
	})
}

// apiError is the body of an error answer of an api endpoint.
type apiError struct {
	Error string `json:"error"`
}

// failJSON answers err as JSON: a *pylon.Error with its message and
// status, anything else logged in full and shown as "internal error".
func (s *Server) failJSON(w http.ResponseWriter, r *http.Request, err error) {
	status, ok := statusOf[pylon.ErrorCode(err)]
	if !ok {
		s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, apiError{Error: pylon.ErrorMessage(err)})
}

// minGzipBytes is the smallest JSON answer that writeJSONGzip compresses.
const minGzipBytes = 8 << 10

// writeJSONGzip answers v as JSON with status, gzip-compressed when it is
// large and the client accepts gzip. Only answers without secrets go
// through it (chart histories): compressing a secret next to text an
// attacker chose would leak it through the size (BREACH).
func writeJSONGzip(w http.ResponseWriter, r *http.Request, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Add("Vary", "Accept-Encoding")
	if len(data) < minGzipBytes || !acceptsGzip(r) {
		writeJSONBytes(w, status, data)
		return
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed) // a valid level
	zw.Write(data)
	zw.Close()
	h.Set("Content-Encoding", "gzip")
	writeJSONBytes(w, status, buf.Bytes())
}

// acceptsGzip reports whether the request's Accept-Encoding allows gzip.
func acceptsGzip(r *http.Request) bool {
	for _, field := range r.Header.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(field, ",") {
			coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			if strings.EqualFold(strings.TrimSpace(coding), "gzip") && strings.ReplaceAll(strings.TrimSpace(params), " ", "") != "q=0" {
				return true
			}
		}
	}
	return false
}

// writeJSON answers v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"internal error"}`, http.StatusInternalServerError)
		return
	}
	writeJSONBytes(w, status, data)
}

func writeJSONBytes(w http.ResponseWriter, status int, data []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(data)
}

// liveReading is one reading as the device page's script gets it.
type liveReading struct {
	Name     string   `json:"n"`
	Unit     string   `json:"u,omitempty"`
	UnitText string   `json:"ut,omitempty"` // the unit as shown
	Time     float64  `json:"t"`            // Unix seconds, to the millisecond
	TimeText string   `json:"time"`         // absolute, for titles
	Value    *float64 `json:"v,omitempty"`  // finite numbers only: what charts plot
	Text     string   `json:"text"`         // the value formatted with its unit
}

// liveEvent is the data of one event of a device's stream. Values that a
// device chose arrive as JSON strings; the script shows them as text.
type liveEvent struct {
	Time     float64       `json:"t"`
	TimeText string        `json:"time"` // absolute, for titles
	Readings []liveReading `json:"readings,omitempty"`
	Online   *bool         `json:"online,omitempty"`
	Reason   string        `json:"reason,omitempty"`
	Code     string        `json:"code,omitempty"`
	Seq      string        `json:"seq,omitempty"` // a string: JavaScript numbers lose integers above 2^53
	State    string        `json:"state,omitempty"`
}

// unixSeconds returns t as fractional Unix seconds, to the millisecond.
func unixSeconds(t time.Time) float64 {
	return float64(t.UnixMilli()) / 1000
}

// newLiveEvent converts a platform event for the script. ok is false for
// event types the page does not show.
func newLiveEvent(ev pylon.Event) (le liveEvent, ok bool) {
	le = liveEvent{Time: unixSeconds(ev.Time), TimeText: absTime(ev.Time)}
	switch ev.Type {
	case pylon.EventReadings:
		le.Readings = make([]liveReading, 0, len(ev.Readings))
		for i := range ev.Readings {
			le.Readings = append(le.Readings, newLiveReading(&ev.Readings[i]))
		}
	case pylon.EventConnection:
		le.Online = ev.Online
	case pylon.EventRejected:
		le.Reason, le.Code = shorten(ev.Reason, maxReasonLen), shorten(ev.Code, maxCodeLen)
		if ev.Seq != 0 {
			le.Seq = strconv.FormatUint(ev.Seq, 10)
		}
	case pylon.EventState:
		if !pylon.DeviceState(ev.State).Valid() {
			return le, false
		}
		le.State = ev.State
	default:
		return le, false
	}
	return le, true
}

func newLiveReading(rd *pylon.Reading) liveReading {
	lr := liveReading{
		Name: rd.Name, Unit: rd.Unit, UnitText: unitText(rd.Unit),
		Time: unixSeconds(rd.Time), TimeText: absTime(rd.Time), Text: readingText(rd),
	}
	if rd.Value != nil && !math.IsNaN(*rd.Value) && !math.IsInf(*rd.Value, 0) {
		lr.Value = rd.Value
	}
	return lr
}

// handleDeviceEvents streams the live events of one device as Server-Sent
// Events: "event: TYPE" (readings, connection, rejected, state) and
// "data: JSON" (a liveEvent) per event, and a ": ping" comment every
// PingInterval, at which the session is checked again. It starts with a
// "connection" and a "state" event of the device as it is, and sends them
// again whenever a poll of the store every StatePollInterval finds them
// changed: the broker records connections in the store, and lifecycle
// changes come from the API and the CLI as well as from here. It ends when
// the client goes away, the session ends, the device is deleted, the
// EventService closes the subscription, a write stalls for
// StreamWriteTimeout, or the server shuts down. This follows httpapi's
// event streams, with the session for authentication.
func (s *Server) handleDeviceEvents(w http.ResponseWriter, r *http.Request, u *user) {
	if s.Events == nil {
		s.failJSON(w, r, errTelemetryOff)
		return
	}
	id := r.PathValue("id")
	if !pylon.ValidID(id) {
		s.failJSON(w, r, pylon.Errorf(pylon.ENOTFOUND, "there is no such device"))
		return
	}
	dev, err := s.Devices.FindDeviceByID(r.Context(), id)
	if err != nil {
		s.failJSON(w, r, err)
		return
	}
	if err := s.streams.acquire(u.key); err != nil {
		w.Header().Set("Retry-After", "30")
		s.failJSON(w, r, err)
		return
	}
	defer s.streams.release(u.key)
	s.streams.hook(r)

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.streams.ctx, cancel)()
	// Subscribe before answering, so that nothing published after the
	// page has its 200 is missed.
	sub := s.Events.Subscribe(ctx, id)

	write := sse.Start(w, StreamWriteTimeout)
	if !write([]byte("retry: " + strconv.Itoa(int(streamRetry/time.Millisecond)) + "\n: connected\n\n")) {
		return
	}
	// The device's state as of now, for a page rendered a moment ago;
	// then its changes, polled.
	polled := deviceStatus{online: dev.Online, state: dev.State}
	if !write(polled.events(nil, s.now(), deviceStatus{})) {
		return
	}
	s.log.Debug("dashboard event stream opened", "device", id, "token_id", u.TokenID)
	defer s.log.Debug("dashboard event stream closed", "device", id, "token_id", u.TokenID)

	ping := time.NewTicker(s.pingInterval())
	defer ping.Stop()
	poll := time.NewTicker(s.statePollInterval())
	defer poll.Stop()
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
			// A session ends (sign-out, expiry, revoked token) for its
			// streams too.
			if v, err := s.authenticate(r); err != nil || v == nil || v.key != u.key {
				return
			}
			msg = []byte(": ping\n\n")
		case <-poll.C:
			d, err := s.Devices.FindDeviceByID(ctx, id)
			if pylon.ErrorCode(err) == pylon.ENOTFOUND {
				return // deleted
			} else if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("poll device state", "device", id, "err", err)
				}
				continue
			}
			cur := deviceStatus{online: d.Online, state: d.State}
			if cur == polled {
				continue
			}
			buf = cur.events(buf[:0], s.now(), polled)
			polled = cur
			msg = buf
		case ev, ok := <-sub.C():
			if !ok {
				return
			}
			if ev.DeviceID != id { // the hub's job, checked anyway
				continue
			}
			le, show := newLiveEvent(ev)
			if !show {
				continue
			}
			// What the feed has said, the poll need not say again.
			if le.Online != nil {
				polled.online = *le.Online
			}
			if le.State != "" {
				polled.state = pylon.DeviceState(le.State)
			}
			buf = buf[:0]
			if d := sub.Dropped(); d > dropped {
				// A comment: EventSource skips it; curl users see the gap.
				buf = append(buf, ": dropped "...)
				buf = strconv.AppendInt(buf, d-dropped, 10)
				buf = append(buf, '\n')
				dropped = d
			}
			buf = appendEvent(buf, ev.Type, le) // one of the four checked above
			msg = buf
		}
		if !write(msg) {
			return
		}
	}
}

func (s *Server) statePollInterval() time.Duration {
	if s.StatePollInterval > 0 {
		return s.StatePollInterval
	}
	return DefaultStatePollInterval
}

// deviceStatus is what a device stream polls: the connection and the
// lifecycle state. The live feed carries their changes too; the poll is
// for what it misses (a subscriber that fell behind, a change made by
// another instance).
type deviceStatus struct {
	online bool
	state  pylon.DeviceState
}

// events appends to buf the "connection" and "state" events of st that
// differ from prev (all of them when prev is the zero value), at time at.
func (st deviceStatus) events(buf []byte, at time.Time, prev deviceStatus) []byte {
	base := liveEvent{Time: unixSeconds(at), TimeText: absTime(at)}
	if prev.state == "" || st.online != prev.online {
		le := base
		le.Online = &st.online
		buf = appendEvent(buf, pylon.EventConnection, le)
	}
	if prev.state == "" || st.state != prev.state {
		le := base
		le.State = string(st.state)
		buf = appendEvent(buf, pylon.EventState, le)
	}
	return buf
}

// appendEvent appends one Server-Sent Event to buf. typ is one of ours;
// json.Marshal never writes a newline, and a liveEvent always encodes.
func appendEvent(buf []byte, typ string, le liveEvent) []byte {
	data, _ := json.Marshal(le)
	buf = append(buf, "event: "...)
	buf = append(buf, typ...)
	buf = append(buf, "\ndata: "...)
	buf = append(buf, data...)
	return append(buf, "\n\n"...)
}

func (s *Server) pingInterval() time.Duration {
	if s.PingInterval > 0 {
		return s.PingInterval
	}
	return DefaultPingInterval
}
