package broker

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/ingest"
)

// Ingester stores telemetry messages; *ingest.Ingester implements it.
// Submit verifies and queues a message and returns; done is called once,
// when the message is durably stored, refused (Result.Err) or could not be
// stored now (Result.Retry), with a device's results in the order of its
// messages. done must not block for long.
type Ingester interface {
	Submit(ctx context.Context, deviceID string, key *envelope.Key, payload []byte, done func(ingest.Result))
}

var _ Ingester = (*ingest.Ingester)(nil)

// Topics of a device's telemetry (device → platform) and of the errors the
// platform reports back (platform → device).
const (
	telemetrySuffix = "/telemetry"
	errorsSuffix    = "/errors"
)

// maxErrorReasonLen bounds the reason of an error report (bytes).
const maxErrorReasonLen = 512

// TelemetryTopic returns the topic on which device id publishes telemetry.
func TelemetryTopic(id string) string { return devicesPrefix + id + telemetrySuffix }

// ErrorsTopic returns the topic on which the platform reports refused
// telemetry to device id.
func ErrorsTopic(id string) string { return devicesPrefix + id + errorsSuffix }

// ErrorReport is the JSON payload published on devices/{id}/errors for each
// refused telemetry message.
type ErrorReport struct {
	Seq    uint64 `json:"seq"`    // the message's sequence number, 0 if it could not be read
	Code   string `json:"code"`   // "invalid", "unauthorized" or "too_large"
	Reason string `json:"reason"` // what was wrong, user-safe
	Time   string `json:"time"`   // RFC 3339, when the platform refused it
}

// deviceConns holds what the telemetry hook needs of each live device
// connection, keyed by the connection. The auth hook adds it at CONNECT
// with the public key of the verified certificate; the listener wrapper
// removes it when mochi is done with the connection, whatever the path
// that ended it.
type deviceConns struct{ m sync.Map } // net.Conn → *deviceConn

// deviceConn is a live device connection, as the telemetry hook sees it.
type deviceConn struct {
	key *envelope.Key // of the certificate the device connected with (ingest.NewKey)

	// pending holds a token for each QoS 0/1 telemetry message between
	// its Submit and its answer: at most receiveMaximum, after which the
	// connection's read goroutine waits. answers queues the results to
	// answer, in order; it never fills, as each holds a token. It holds
	// pointers: a buffer of receiveMaximum packets by value would take
	// 55 KB a connection, all of it scanned by every garbage collection.
	pending chan struct{}
	answers chan *answer
	start   sync.Once     // starts answerLoop on the first message
	gone    chan struct{} // closed when the connection has ended

	// unavailable is set when telemetryUnavailable ends the connection,
	// before it does, so that the end's reason is known for sure.
	unavailable atomic.Bool
}

// answer is a telemetry message and its ingest result. They are reused
// (answerPool): a message's answer is an allocation of about 860 bytes.
type answer struct {
	pk  packets.Packet
	res ingest.Result
}

var answerPool = sync.Pool{New: func() any { return new(answer) }}

func (k *deviceConns) set(c net.Conn, key *envelope.Key) {
	k.m.Store(c, &deviceConn{
		key:     key,
		pending: make(chan struct{}, receiveMaximum),
		answers: make(chan *answer, receiveMaximum),
		gone:    make(chan struct{}),
	})
}

func (k *deviceConns) remove(c net.Conn) {
	if v, ok := k.m.LoadAndDelete(c); ok {
		close(v.(*deviceConn).gone)
	}
}

func (k *deviceConns) get(c net.Conn) *deviceConn {
	if c == nil {
		return nil
	}
	v, _ := k.m.Load(c)
	dc, _ := v.(*deviceConn)
	return dc
}

// telemetryHook hands each PUBLISH of a device to devices/{its id}/telemetry
// to the Ingester, before mochi acknowledges or routes it.
//
// mochi calls OnPublish on the client's read goroutine, after the ACL
// check and before it writes the PUBACK (or PUBREC) and routes the message
// (processPublish in server.go, v2.7.9).
//
// QoS 0 and 1: the hook submits the message and returns ErrRejectPacket at
// once, so that mochi neither acknowledges nor routes it and reads the
// connection's next packet while this one is verified and committed: a
// device may have up to receiveMaximum messages in flight, and they share
// commits. answerLoop, one per connection, then writes the PUBACK (QoS 1)
// in the order the messages came [MQTT-4.6.0-2] and routes accepted
// messages through the inline client; see answer.
//
// QoS 2 has a PUBREC/PUBREL/PUBCOMP flow that mochi keeps, so the hook waits
// for the result and leaves the answer to mochi. What mochi does with the
// error the hook returns decides the rest:
//
//   - nil: PUBACK 0x00 (PUBREC for QoS 2), retained if asked, routed to
//     subscribers. So the PUBACK leaves only after Ingest returned, which
//     is after the durable commit.
//   - packets.ErrRejectPacket: nothing at all — no acknowledgement, no
//     routing. Any PUBACK must be written by the hook.
//   - packets.CodeSuccessIgnore: acknowledged as usual but neither
//     retained nor routed.
//   - any other error: logged by mochi at Error with the whole packet,
//     then (for a packets.Code, MQTT 5, QoS > 0) a PUBACK of that code —
//     also for QoS 2, where a PUBREC is due — and for MQTT 3.1.1 the
//     message is routed as if nothing happened. So this hook never returns
//     one.
//
// Hence: accepted → nil. Refused, MQTT 5 → the hook writes PUBACK (PUBREC
// for QoS 2) with the ingest reason code and returns ErrRejectPacket;
// refused, MQTT 3.1.1 (no negative acknowledgement) → CodeSuccessIgnore;
// either way an ErrorReport goes to devices/{id}/errors. Retry → the hook
// closes the connection (MQTT 5: DISCONNECT 0x88 first) and returns
// ErrRejectPacket, so the message is never acknowledged and the device
// sends it again after reconnecting.
type telemetryHook struct {
	mqtt.HookBase
	b *Broker
}

// ID implements mqtt.Hook.
func (h *telemetryHook) ID() string { return "pylon-telemetry" }

// Provides implements mqtt.Hook.
func (h *telemetryHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish ingests a device's telemetry message; other messages pass.
func (h *telemetryHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || cl.Net.Listener != listenerTLS || pk.TopicName != TelemetryTopic(cl.ID) {
		return pk, nil
	}
	b := h.b
	dc := b.conns.get(cl.Net.Conn)
	if dc == nil { // cannot happen: every device connection has its key
		b.log.Error("telemetry from a connection without a certificate key", "device", cl.ID)
		b.telemetryUnavailable(cl)
		return pk, packets.ErrRejectPacket
	}
	ctx := pylon.NewContextWithPrincipal(b.base, devicePrincipal(cl.ID))
	if pk.FixedHeader.Qos < 2 {
		dc.pending <- struct{}{} // waits while receiveMaximum are in flight
		dc.start.Do(func() {
			b.wg.Add(1)
			go b.answerLoop(cl, dc)
		})
		a := answerPool.Get().(*answer)
		a.pk = pk
		b.opts.Ingest.Submit(ctx, cl.ID, dc.key, pk.Payload, func(res ingest.Result) {
			a.res = res
			dc.answers <- a
		})
		return pk, packets.ErrRejectPacket
	}
	done := make(chan ingest.Result, 1)
	b.opts.Ingest.Submit(ctx, cl.ID, dc.key, pk.Payload, func(res ingest.Result) { done <- res })
	res := <-done
	switch {
	case res.Retry:
		b.telemetryUnavailable(cl)
		return pk, packets.ErrRejectPacket
	case res.Err != nil:
		return pk, b.telemetryRefused(cl, pk, res)
	}
	return pk, nil
}

// answerLoop answers the QoS 0 and 1 telemetry messages of a connection,
// in order, until the connection has ended. Answers left then are of
// stored messages: the device sends them again and they are acknowledged
// as duplicates.
//
// The answers at hand are written as one: the connection is corked while
// they are answered, so that the PUBACKs of messages one commit completed
// leave in one write.
func (b *Broker) answerLoop(cl *mqtt.Client, dc *deviceConn) {
	defer b.wg.Done()
	cc := corkOf(cl.Net.Conn)
	for {
		select {
		case a := <-dc.answers:
			cc.cork()
			for more := true; more; {
				// An answer taken from answers is this loop's to put
				// back, zeroed so that the pool keeps no payload; those
				// left when the connection has ended are dropped.
				b.answer(cl, a.pk, a.res)
				*a = answer{}
				answerPool.Put(a)
				<-dc.pending
				select {
				case a = <-dc.answers:
				default:
					more = false
				}
			}
			if err := cc.uncork(); err != nil {
				// As for a failed PUBACK write in answer.
				b.log.Debug("write telemetry pubacks", "device", cl.ID, "err", err)
				cl.Stop(err)
			}
		case <-dc.gone:
			return
		}
	}
}

// answer answers a QoS 0 or 1 telemetry message as mochi would have, had
// the hook returned (see telemetryHook): accepted → PUBACK 0x00 (QoS 1),
// retained if asked and routed to subscribers (see route);
// refused → reported, and for QoS 1 a PUBACK with the reason code (MQTT
// 5) or a normal one (MQTT 3.1.1); retry → the connection is closed.
func (b *Broker) answer(cl *mqtt.Client, pk packets.Packet, res ingest.Result) {
	code, text := ingest.ReasonSuccess, ""
	switch {
	case res.Retry:
		b.telemetryUnavailable(cl)
		return
	case res.Err != nil:
		text = b.reportRefused(cl, res)
		if cl.Properties.ProtocolVersion == 5 {
			code = res.Reason
		} else {
			text = ""
		}
	default:
		if err := b.route(pk); err != nil {
			b.log.Error("route telemetry", "device", cl.ID, "err", err)
		}
	}
	if pk.FixedHeader.Qos == 0 {
		return
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    pk.PacketID,
		ReasonCode:  code,
		Properties:  packets.Properties{ReasonString: text},
	}
	if err := cl.WritePacket(ack); err != nil {
		// A failed write may leave TLS broken: end the connection, so that
		// the device reconnects and resends what it has not seen acked.
		b.log.Debug("write telemetry puback", "device", cl.ID, "err", err)
		cl.Stop(err)
	}
}

// route passes a stored telemetry message on to subscribers, and retains
// it if asked, through the inline client: as mochi would have, with the
// payload as sent and the PUBLISH's MQTT 5 properties that a broker
// forwards (payload format, message expiry, content type, response topic,
// correlation data, user properties [MQTT-3.3.2]). A message that is not
// to be retained and that no one subscribes to goes no further: mochi's
// publish path (its hooks, for the inline client) would cost about a fifth
// of the answer loop's work for nothing.
func (b *Broker) route(pk packets.Packet) error {
	if !pk.FixedHeader.Retain {
		subs := b.server.Topics.Subscribers(pk.TopicName)
		if len(subs.Subscriptions) == 0 && len(subs.Shared) == 0 && len(subs.InlineSubscriptions) == 0 {
			return nil
		}
	}
	return b.server.InjectPacket(b.inline, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain},
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		PacketID:    uint16(pk.FixedHeader.Qos), // as mochi's Publish: the inline client's QoS is not processed
		Properties:  pk.Properties.Copy(false),
	})
}

// reportRefused counts a refused message and reports it on the device's
// errors topic. It returns the reason, for a PUBACK.
func (b *Broker) reportRefused(cl *mqtt.Client, res ingest.Result) string {
	reason := truncate(pylon.ErrorMessage(res.Err), maxErrorReasonLen)
	b.metrics.telemetryRefused.WithLabelValues(res.Code()).Inc()
	b.publishError(cl.ID, ErrorReport{Seq: res.Seq, Code: res.Code(), Reason: reason, Time: b.now().UTC().Format(time.RFC3339)})
	return reason
}

// telemetryRefused reports a refused message to the device and answers the
// PUBLISH as the protocol version allows. It returns the error for mochi.
func (b *Broker) telemetryRefused(cl *mqtt.Client, pk packets.Packet, res ingest.Result) error {
	reason := b.reportRefused(cl, res)
	if pk.FixedHeader.Qos == 0 {
		return packets.ErrRejectPacket
	}
	if cl.Properties.ProtocolVersion != 5 {
		// MQTT 3.1.1 has no negative acknowledgement [MQTT-3.3.5-2]: a
		// normal PUBACK, and the errors topic tells the device.
		return packets.CodeSuccessIgnore
	}
	ackType := byte(packets.Puback)
	if pk.FixedHeader.Qos == 2 {
		ackType = packets.Pubrec // a reason ≥ 0x80 ends the QoS 2 flow [MQTT-4.3.3]
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: ackType},
		PacketID:    pk.PacketID,
		ReasonCode:  res.Reason, // [MQTT-3.4.2-1]
		Properties:  packets.Properties{ReasonString: reason},
	}
	if err := cl.WritePacket(ack); err != nil { // WritePacket drops the reason string if the client asked for no problem info [MQTT-3.1.2-29]
		b.log.Debug("write telemetry refusal", "device", cl.ID, "err", err)
	}
	return packets.ErrRejectPacket
}

// publishError sends r to the device's errors topic at QoS 1 through the
// inline client (which the ACL does not restrict).
func (b *Broker) publishError(id string, r ErrorReport) {
	payload, err := json.Marshal(r)
	if err == nil {
		err = b.server.Publish(ErrorsTopic(id), payload, false, 1)
	}
	if err != nil {
		b.log.Error("publish telemetry error report", "device", id, "err", err)
	}
}

// telemetryUnavailable ends the connection of a device whose message could
// not be stored, without acknowledging it: the device reconnects and sends
// it again (MQTT session state, DUP). MQTT 5 clients get DISCONNECT 0x88
// (server unavailable) first [MQTT-3.14.2-1]; MQTT 3.1.1 has no server
// DISCONNECT, so the connection is just closed.
func (b *Broker) telemetryUnavailable(cl *mqtt.Client) {
	b.metrics.telemetryDisconnects.Inc()
	b.log.Warn("device disconnected: telemetry could not be stored, the device will resend", "device", cl.ID)
	if dc := b.conns.get(cl.Net.Conn); dc != nil {
		dc.unavailable.Store(true)
	}
	conn := cl.Net.Conn
	if conn == nil {
		cl.Stop(packets.ErrServerUnavailable)
		return
	}
	_ = conn.SetWriteDeadline(time.Now().Add(kickWriteTimeout))
	if cl.Properties.ProtocolVersion == 5 {
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			ReasonCode:  packets.ErrServerUnavailable.Code,
			Properties:  packets.Properties{ReasonString: "telemetry could not be stored; send it again"},
		})
	}
	if tc, ok := conn.(*tls.Conn); ok {
		_ = tc.NetConn().Close()
	}
	cl.Stop(packets.ErrServerUnavailable)
}
