package broker

import (
	"context"
	"crypto"
	"crypto/tls"
	"encoding/json"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/ingest"
)

// Ingester stores telemetry messages; *ingest.Ingester implements it.
// Ingest returns once the message is durably stored, refused (Result.Err)
// or could not be stored now (Result.Retry).
type Ingester interface {
	Ingest(ctx context.Context, deviceID string, pub crypto.PublicKey, payload []byte) ingest.Result
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

// deviceKeys holds the public key of the verified certificate of each live
// device connection, keyed by the connection. The auth hook stores it at
// CONNECT; the listener wrapper deletes it when mochi is done with the
// connection, whatever the path that ended it.
type deviceKeys struct{ m sync.Map } // net.Conn → crypto.PublicKey

func (k *deviceKeys) set(c net.Conn, pub crypto.PublicKey) { k.m.Store(c, pub) }
func (k *deviceKeys) remove(c net.Conn)                    { k.m.Delete(c) }

func (k *deviceKeys) get(c net.Conn) crypto.PublicKey {
	if c == nil {
		return nil
	}
	v, _ := k.m.Load(c)
	pub, _ := v.(crypto.PublicKey)
	return pub
}

// telemetryHook hands each PUBLISH of a device to devices/{its id}/telemetry
// to the Ingester, before mochi acknowledges or routes it.
//
// mochi calls OnPublish on the client's read goroutine, after the ACL
// check and before it writes the PUBACK (or PUBREC) and routes the message
// (processPublish in server.go, v2.7.9). What mochi does with the error the
// hook returns decides the rest:
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
	pub := b.keys.get(cl.Net.Conn)
	if pub == nil { // cannot happen: every device connection has its key
		b.log.Error("telemetry from a connection without a certificate key", "device", cl.ID)
		b.telemetryUnavailable(cl)
		return pk, packets.ErrRejectPacket
	}
	ctx, cancel := context.WithCancel(pylon.NewContextWithPrincipal(b.base, devicePrincipal(cl.ID)))
	res := b.opts.Ingest.Ingest(ctx, cl.ID, pub, pk.Payload)
	cancel()
	switch {
	case res.Retry:
		b.telemetryUnavailable(cl)
		return pk, packets.ErrRejectPacket
	case res.Err != nil:
		return pk, b.telemetryRefused(cl, pk, res)
	}
	return pk, nil
}

// telemetryRefused reports a refused message to the device and answers the
// PUBLISH as the protocol version allows. It returns the error for mochi.
func (b *Broker) telemetryRefused(cl *mqtt.Client, pk packets.Packet, res ingest.Result) error {
	reason := truncate(pylon.ErrorMessage(res.Err), maxErrorReasonLen)
	b.metrics.telemetryRefused.WithLabelValues(res.Code()).Inc()
	b.publishError(cl.ID, ErrorReport{Seq: res.Seq, Code: res.Code(), Reason: reason, Time: b.now().UTC().Format(time.RFC3339)})
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
