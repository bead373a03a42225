package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/pylonhq/pylon"
)

// connectionHook records devices going online and offline.
//
// mochi's order for a new connection is OnConnect, OnConnectAuthenticate,
// OnSessionEstablish, then the takeover of an older client with the same id
// (which mochi disconnects with 0x8E, its OnDisconnect running later on
// its own goroutine), CONNACK, OnSessionEstablished. So the new client
// becomes the device's session in OnSessionEstablish, which records the
// older one's end ("taken over") and the new one online, back to back and
// before the new one is live; the older one's OnDisconnect then finds
// itself replaced and records nothing. Each device's records are written
// under its session lock, so they reach the store in order.
type connectionHook struct {
	mqtt.HookBase
	b *Broker
}

// ID implements mqtt.Hook.
func (h *connectionHook) ID() string { return "pylon-connection" }

// Provides implements mqtt.Hook.
func (h *connectionHook) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish || b == mqtt.OnDisconnect
}

// OnSessionEstablish makes cl the device's session, ending an older one,
// and records the device online. If DisconnectDevice ran while cl was being
// authorized, the store may have changed after the check: cl is closed
// instead (fail closed; no CONNACK has been sent yet).
func (h *connectionHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if cl.Net.Listener != listenerTLS {
		return
	}
	s := h.b.sessions.get(cl.ID)
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.cl
	s.cl = cl
	if prev != nil && prev != cl {
		reason := "taken over"
		if prev.Closed() || s.kicked == prev {
			reason = h.b.endReason(s, prev, prev.StopCause())
		}
		h.b.recordConnection(cl.ID, false, prev.Net.Remote, reason)
	}
	seq, ok := s.pending[cl]
	delete(s.pending, cl)
	if !ok || seq != s.kicks {
		s.kicked = cl
		h.b.log.Info("device refused: session ended while connecting", "device", cl.ID, "remote", cl.Net.Remote)
		closeClient(cl, false)
		return
	}
	h.b.recordConnection(cl.ID, true, cl.Net.Remote, "")
	h.b.log.Info("device connected", "device", cl.ID, "remote", cl.Net.Remote, "mqtt", cl.Properties.ProtocolVersion)
}

// OnDisconnect records the device offline, unless a newer connection has
// taken its session over.
func (h *connectionHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if cl.Net.Listener != listenerTLS {
		return
	}
	h.b.sessionEnded(cl, err)
}

// sessionEnded records the device of cl offline if cl is still its
// session.
func (b *Broker) sessionEnded(cl *mqtt.Client, err error) {
	s := b.sessions.lookup(cl.ID)
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cl != cl {
		b.log.Debug("device connection ended after takeover", "device", cl.ID, "remote", cl.Net.Remote)
		return
	}
	s.cl = nil
	reason := b.endReason(s, cl, err)
	if s.kicked == cl {
		s.kicked = nil
	}
	b.recordConnection(cl.ID, false, cl.Net.Remote, reason)
	b.log.Info("device disconnected", "device", cl.ID, "reason", reason)
}

// connectionClosed runs when mochi is done with a TLS connection. mochi
// calls no hook if it fails between OnSessionEstablish and reading packets
// (writing the CONNACK, say); the device is recorded offline here then.
func (b *Broker) connectionClosed(c *tls.Conn) {
	st := c.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return
	}
	s := b.sessions.lookup(st.PeerCertificates[0].Subject.CommonName)
	if s == nil {
		return
	}
	s.mu.Lock()
	cl := s.cl
	s.mu.Unlock()
	if cl != nil && cl.Net.Conn == net.Conn(c) {
		b.sessionEnded(cl, errors.New("connection failed"))
	}
}

// DisconnectDevice ends the device's live session, if any: an MQTT 5
// client gets DISCONNECT 0x98 (administrative action), an MQTT 3.1.1 client
// just has its connection closed, within kickWriteTimeout. A connection
// whose store check is under way is closed before its CONNACK. An unknown
// or offline device is not an error. It implements pylon.SessionService.
func (b *Broker) DisconnectDevice(ctx context.Context, deviceID, reason string) error {
	s := b.sessions.lookup(deviceID)
	if s == nil {
		return nil
	}
	if reason == "" {
		reason = "administrative action"
	}
	s.mu.Lock()
	s.kicks++
	s.kickReason = truncate(reason, maxReasonLen)
	cl := s.cl
	s.kicked = cl
	s.mu.Unlock()
	if cl == nil || cl.Closed() {
		return nil
	}
	closeClient(cl, true)
	b.log.Info("device session ended by the platform", "device", deviceID, "reason", reason)
	return nil
}

// closeClient closes the client's connection, first sending an MQTT 5
// client DISCONNECT 0x98 (administrative action) if disconnect is set. The
// socket is closed before the TLS connection so that a peer that does not
// read cannot hold the close_notify alert (and us) for long.
func closeClient(cl *mqtt.Client, disconnect bool) {
	conn := cl.Net.Conn
	if conn == nil {
		cl.Stop(packets.ErrAdministrativeAction)
		return
	}
	_ = conn.SetWriteDeadline(time.Now().Add(kickWriteTimeout))
	if disconnect && cl.Properties.ProtocolVersion == 5 {
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode:  packets.ErrAdministrativeAction.Code, // [MQTT-3.14.2-1]
			Properties:  packets.Properties{ReasonString: packets.ErrAdministrativeAction.Reason},
		})
	}
	if tc, ok := conn.(*tls.Conn); ok {
		_ = tc.NetConn().Close()
	}
	cl.Stop(packets.ErrAdministrativeAction)
}

// recordConnection appends a connection event for the device. Failures are
// logged: the session itself is not affected.
func (b *Broker) recordConnection(deviceID string, online bool, remote, reason string) {
	ctx, cancel := b.storeContext(devicePrincipal(deviceID))
	defer cancel()
	ev := pylon.ConnectionEvent{DeviceID: deviceID, Online: online, At: b.now(), RemoteAddr: remote, Reason: reason}
	if err := b.opts.Devices.RecordConnection(ctx, ev); err != nil {
		b.log.Error("record device connection", "device", deviceID, "online", online, "err", err)
	}
	if b.opts.Events != nil {
		b.opts.Events.PublishEvent(pylon.Event{Type: pylon.EventConnection, DeviceID: deviceID, Time: ev.At, Online: &online, Reason: reason})
	}
}

// session is a device's connection state. Entries are kept for the life of
// the broker: there is one per device that ever connected, and only a
// certificate from the Pylon CA creates one.
type session struct {
	mu         sync.Mutex
	cl         *mqtt.Client            // the live (or establishing) connection
	kicks      uint64                  // DisconnectDevice calls so far
	kicked     *mqtt.Client            // the connection DisconnectDevice ended last
	kickReason string                  // and why
	pending    map[*mqtt.Client]uint64 // authorized connections: kicks when their check began
}

// authStart returns the value of kicks to compare with when the session
// is established.
func (s *session) authStart() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kicks
}

// authorized notes that cl passed the store check that began at seq.
func (s *session) authorized(cl *mqtt.Client, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		s.pending = make(map[*mqtt.Client]uint64)
	}
	for c := range s.pending {
		if c.Closed() { // never reached OnSessionEstablished
			delete(s.pending, c)
		}
	}
	s.pending[cl] = seq
}

// endReason says why cl's session ended, err being what mochi reported.
// The caller holds s.mu.
func (b *Broker) endReason(s *session, cl *mqtt.Client, err error) string {
	if s.kicked == cl {
		return "revoked: " + s.kickReason
	}
	cause := cl.StopCause()
	dc := b.conns.get(cl.Net.Conn)
	switch {
	case errors.Is(cause, packets.ErrSessionTakenOver):
		return "taken over"
	case errors.Is(cause, packets.ErrServerUnavailable), dc != nil && dc.unavailable.Load():
		return "telemetry not stored; the device will resend"
	case b.closing.Load() || errors.Is(cause, packets.ErrServerShuttingDown):
		return "server shutting down"
	case err == nil || errors.Is(cause, packets.CodeDisconnect):
		return "client disconnect"
	case errors.Is(err, io.EOF):
		return "connection closed"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "keepalive timeout"
	}
	return truncate(err.Error(), maxReasonLen)
}

// sessions maps device ids to their session.
type sessions struct {
	mu sync.Mutex
	m  map[string]*session
}

func newSessions() *sessions {
	return &sessions{m: make(map[string]*session)}
}

// get returns the device's session, creating it.
func (ss *sessions) get(id string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.m[id]
	if !ok {
		s = &session{}
		ss.m[id] = s
	}
	return s
}

// lookup returns the device's session, or nil.
func (ss *sessions) lookup(id string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.m[id]
}
