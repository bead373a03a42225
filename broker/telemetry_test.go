package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/broker"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/ingest"
)

// fakeIngester answers Submit with fn, at once, and records the calls.
type fakeIngester struct {
	mu    sync.Mutex
	fn    func(payload []byte) ingest.Result
	calls []ingestCall
}

type ingestCall struct {
	device  string
	key     *envelope.Key
	payload string
}

func (f *fakeIngester) Submit(ctx context.Context, deviceID string, key *envelope.Key, payload []byte, done func(ingest.Result)) {
	f.mu.Lock()
	f.calls = append(f.calls, ingestCall{deviceID, key, string(payload)})
	fn := f.fn
	f.mu.Unlock()
	done(fn(payload))
}

func (f *fakeIngester) Calls() []ingestCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ingestCall(nil), f.calls...)
}

func (f *fakeIngester) Set(fn func(payload []byte) ingest.Result) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fn = fn
}

func accept([]byte) ingest.Result {
	return ingest.Result{Reason: ingest.ReasonSuccess, Seq: 7, Readings: 1}
}

// refuseWith returns an Ingest answer refusing every message as the
// ingester would.
func refuseWith(reason byte, code, msg string) func([]byte) ingest.Result {
	return func([]byte) ingest.Result {
		return ingest.Result{Reason: reason, Seq: 42, Err: pylon.Errorf(code, "%s", msg)}
	}
}

func retry([]byte) ingest.Result {
	return ingest.Result{Reason: ingest.ReasonUnspecified, Seq: 9, Err: errors.New("disk full"), Retry: true}
}

// MustStartIngest starts a broker with a plain listener and a fake
// ingester that answers with fn.
func MustStartIngest(t *testing.T, fn func([]byte) ingest.Result) (*env, *fakeIngester) {
	t.Helper()
	ing := &fakeIngester{fn: fn}
	e := MustStart(t, func(o *broker.Options, _ *fakeStore) {
		o.Ingest = ing
		o.PlainAddr = "127.0.0.1:0"
	})
	return e, ing
}

// integration connects a plain-listener client subscribed to devices/#.
func (e *env) integration(t *testing.T) *client {
	t.Helper()
	in, _, err := e.ConnectPlain("integration-1", e.store.AddToken(pylon.RoleViewer))
	if err != nil {
		t.Fatalf("connect integration: %v", err)
	}
	if got := in.SubscribeCodes(t, "devices/#"); got[0] != 1 {
		t.Fatalf("integration subscribe: got 0x%02x", got[0])
	}
	return in
}

func decodeReport(t *testing.T, m *paho.Publish) broker.ErrorReport {
	t.Helper()
	var r broker.ErrorReport
	if err := json.Unmarshal(m.Payload, &r); err != nil {
		t.Fatalf("error report %q: %v", m.Payload, err)
	}
	if _, err := time.Parse(time.RFC3339, r.Time); err != nil {
		t.Errorf("error report time %q: %v", r.Time, err)
	}
	return r
}

// TestTelemetry_RoutedWithProperties: a stored message reaches subscribers
// with the MQTT 5 properties a broker forwards, at QoS 0 and 1.
func TestTelemetry_RoutedWithProperties(t *testing.T) {
	e, _ := MustStartIngest(t, accept)
	in := e.integration(t)
	id, cert := e.NewDevice()
	dev := e.MustConnect(cert, id)
	for _, qos := range []byte{0, 1} {
		expiry := uint32(3600)
		props := &paho.PublishProperties{
			MessageExpiry:   &expiry,
			ContentType:     "application/cose; cose-type=cose-sign1",
			ResponseTopic:   "devices/" + id + "/replies",
			CorrelationData: []byte{1, 2, qos},
			User:            paho.UserProperties{{Key: "firmware", Value: "1.4.2"}, {Key: "firmware", Value: "again"}},
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := dev.Publish(ctx, &paho.Publish{Topic: broker.TelemetryTopic(id), QoS: qos, Payload: []byte("sealed"), Properties: props})
		cancel()
		if err != nil {
			t.Fatalf("QoS %d: publish: %v", qos, err)
		}
		m := in.Receive(t)
		got := m.Properties
		switch {
		case string(m.Payload) != "sealed":
			t.Fatalf("QoS %d: integration received %q, want the telemetry message", qos, m.Payload)
		case got == nil || got.ContentType != props.ContentType || got.ResponseTopic != props.ResponseTopic ||
			!bytes.Equal(got.CorrelationData, props.CorrelationData) || !slices.Equal(got.User, props.User):
			t.Fatalf("QoS %d: routed with properties %+v, want %+v", qos, got, props)
		case got.MessageExpiry == nil || *got.MessageExpiry > expiry || *got.MessageExpiry < expiry-5:
			t.Fatalf("QoS %d: routed with message expiry %v, want what is left of %d s", qos, got.MessageExpiry, expiry)
		}
	}
}

func TestTelemetry_AcceptedIsAckedAndRouted(t *testing.T) {
	e, ing := MustStartIngest(t, accept)
	in := e.integration(t)
	id, cert := e.NewDevice()
	dev := e.MustConnect(cert, id)

	if got := dev.Publish1(t, broker.TelemetryTopic(id), []byte("sealed"), false); got != 0 {
		t.Fatalf("telemetry: got PUBACK 0x%02x, want 0x00", got)
	}
	if m := in.Receive(t); m.Topic != broker.TelemetryTopic(id) || string(m.Payload) != "sealed" {
		t.Fatalf("integration received %q %q, want the telemetry message", m.Topic, m.Payload)
	}
	if got := dev.Publish1(t, "devices/"+id+"/status", []byte("up"), false); got != 0 {
		t.Fatalf("status: got PUBACK 0x%02x, want 0x00", got)
	}
	calls := ing.Calls()
	if len(calls) != 1 || calls[0].device != id || calls[0].payload != "sealed" {
		t.Fatalf("Ingest calls: got %+v, want one for the telemetry message of %s", calls, id)
	}
	pub, ok := calls[0].key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.Leaf.PublicKey) {
		t.Fatalf("Ingest key: got %T, want the device certificate's key", calls[0].key.Public())
	}
	if got := broker.KeysHeld(e.b); got != 1 {
		t.Errorf("keys held while connected: got %d, want 1", got)
	}
	_ = dev.Disconnect(&paho.Disconnect{})
	waitFor(t, "key released", func() bool { return broker.KeysHeld(e.b) == 0 })
}

func TestTelemetry_RefusedMQTT5(t *testing.T) {
	tests := []struct {
		name   string
		qos    byte
		reason byte
		code   string
	}{
		{"bad signature QoS 1", 1, ingest.ReasonNotAuthorized, pylon.EUNAUTHORIZED},
		{"invalid QoS 1", 1, ingest.ReasonPayloadInvalid, pylon.EINVALID},
		{"malformed QoS 1", 1, ingest.ReasonPayloadInvalid, pylon.EBADREQUEST},
		{"too large QoS 1", 1, ingest.ReasonTooLarge, pylon.ETOOLARGE},
		{"invalid QoS 2", 2, ingest.ReasonPayloadInvalid, pylon.EINVALID},
		{"invalid QoS 0", 0, ingest.ReasonPayloadInvalid, pylon.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := MustStartIngest(t, refuseWith(tt.reason, tt.code, "senml: record 0: nope"))
			in := e.integration(t)
			id, cert := e.NewDevice()
			dev := e.MustConnect(cert, id)
			if got := dev.SubscribeCodes(t, broker.ErrorsTopic(id)); got[0] != 1 {
				t.Fatalf("subscribe errors: got 0x%02x", got[0])
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			pr, err := dev.Publish(ctx, &paho.Publish{Topic: broker.TelemetryTopic(id), QoS: tt.qos, Payload: []byte("bad")})
			switch {
			case tt.qos == 0 && err != nil:
				t.Fatalf("publish QoS 0: %v", err)
			case tt.qos > 0 && pr == nil:
				t.Fatalf("publish: no acknowledgement: %v", err)
			case tt.qos > 0 && pr.ReasonCode != tt.reason:
				t.Fatalf("acknowledgement: got 0x%02x, want 0x%02x", pr.ReasonCode, tt.reason)
			case tt.qos > 0 && (pr.Properties == nil || pr.Properties.ReasonString != "senml: record 0: nope"):
				t.Errorf("acknowledgement reason string: got %+v, want the refusal", pr.Properties)
			}
			m := dev.Receive(t)
			if m.Topic != broker.ErrorsTopic(id) || m.QoS != 1 {
				t.Fatalf("device received %q at QoS %d, want its errors topic at QoS 1", m.Topic, m.QoS)
			}
			r := decodeReport(t, m)
			wantCode := map[byte]string{ingest.ReasonNotAuthorized: "unauthorized", ingest.ReasonTooLarge: "too_large"}[tt.reason]
			if wantCode == "" {
				wantCode = "invalid"
			}
			if r.Seq != 42 || r.Code != wantCode || r.Reason != "senml: record 0: nope" {
				t.Fatalf("error report: got %+v, want seq 42, code %s and the reason", r, wantCode)
			}
			// The integration sees the error report but never the refused message.
			if m := in.Receive(t); m.Topic != broker.ErrorsTopic(id) {
				t.Fatalf("integration received %q, want only the error report", m.Topic)
			}
			e.ExpectOnly(t, in, "devices/"+id+"/marker")
			if got := e.metric("pylon_mqtt_telemetry_refused_total", "code", wantCode); got != 1 {
				t.Errorf("refusals counted: got %v, want 1", got)
			}
			// The session goes on.
			if got := dev.Publish1(t, "devices/"+id+"/status", []byte("ok"), false); got != 0 {
				t.Fatalf("publish after a refusal: got 0x%02x, want 0x00", got)
			}
		})
	}
}

func TestTelemetry_RefusedRetainedIsNotRetained(t *testing.T) {
	e, _ := MustStartIngest(t, refuseWith(ingest.ReasonNotAuthorized, pylon.EUNAUTHORIZED, "bad signature"))
	id, cert := e.NewDevice()
	dev := e.MustConnect(cert, id)
	if got := dev.Publish1(t, broker.TelemetryTopic(id), []byte("forged"), true); got != ingest.ReasonNotAuthorized {
		t.Fatalf("got PUBACK 0x%02x, want 0x87", got)
	}
	in := e.integration(t) // subscribes after: would get a retained message first
	e.ExpectOnly(t, in, "devices/"+id+"/marker")
}

// v3Packet reads one MQTT packet: its first byte and its body.
func v3Packet(t *testing.T, r *bufio.Reader) (byte, []byte) {
	t.Helper()
	h, err := r.ReadByte()
	if err != nil {
		t.Fatalf("read packet: %v", err)
	}
	n, shift := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			t.Fatalf("read length: %v", err)
		}
		n |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
		shift += 7
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("read body: %v", err)
	}
	return h, body
}

// v3Publish sends a QoS 1 PUBLISH with packet id 1.
func v3Publish(t *testing.T, conn net.Conn, topic string, payload []byte) {
	t.Helper()
	body := append(appendString(nil, topic), 0, 1)
	if _, err := conn.Write(appendPacket(nil, 0x32, append(body, payload...))); err != nil {
		t.Fatalf("write PUBLISH: %v", err)
	}
}

func TestTelemetry_RefusedMQTT311(t *testing.T) {
	e, _ := MustStartIngest(t, refuseWith(ingest.ReasonPayloadInvalid, pylon.EINVALID, "senml: pack: no records"))
	in := e.integration(t)
	id, cert := e.NewDevice()
	conn := e.mustConnectV3(t, cert, id)
	if rc := v3Subscribe(t, conn, 1, broker.ErrorsTopic(id)); rc != 1 {
		t.Fatalf("SUBACK: got 0x%02x, want 0x01", rc)
	}
	v3Publish(t, conn, broker.TelemetryTopic(id), []byte("bad"))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	var gotAck, gotReport bool
	for !gotAck || !gotReport {
		h, body := v3Packet(t, r)
		switch h & 0xf0 {
		case 0x40: // PUBACK: a normal one, 3.1.1 has no negative acknowledgement
			if len(body) != 2 || body[0] != 0 || body[1] != 1 {
				t.Fatalf("PUBACK: got % x, want packet id 1", body)
			}
			gotAck = true
		case 0x30:
			tl := int(body[0])<<8 | int(body[1])
			if topic := string(body[2 : 2+tl]); topic != broker.ErrorsTopic(id) {
				t.Fatalf("PUBLISH to %q, want the errors topic", topic)
			}
			var rep broker.ErrorReport
			if err := json.Unmarshal(body[2+tl+2:], &rep); err != nil || rep.Code != "invalid" || rep.Reason != "senml: pack: no records" {
				t.Fatalf("error report: got %+v (%v)", rep, err)
			}
			gotReport = true
		default:
			t.Fatalf("unexpected packet 0x%02x", h)
		}
	}
	if m := in.Receive(t); m.Topic != broker.ErrorsTopic(id) {
		t.Fatalf("integration received %q, want only the error report", m.Topic)
	}
	e.ExpectOnly(t, in, "devices/"+id+"/marker")
}

func TestTelemetry_RetryDisconnectsWithoutAck(t *testing.T) {
	e, ing := MustStartIngest(t, retry)
	in := e.integration(t)
	id, cert := e.NewDevice()
	dev := e.MustConnect(cert, id)
	waitFor(t, "online", func() bool { return e.store.Online(id) })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan *paho.PublishResponse, 1)
	go func() {
		pr, _ := dev.Publish(ctx, &paho.Publish{Topic: broker.TelemetryTopic(id), QoS: 1, Payload: []byte("m")})
		done <- pr
	}()
	dev.ExpectDisconnect(t, 0x88, 5*time.Second, "server unavailable")
	cancel() // no PUBACK came before the DISCONNECT, and none can come after it
	if pr := <-done; pr != nil {
		t.Fatalf("got an acknowledgement %+v, want none", pr)
	}
	waitFor(t, "offline", func() bool { return !e.store.Online(id) })
	evs := e.store.Events(id)
	if last := evs[len(evs)-1]; last.Reason != "telemetry not stored; the device will resend" {
		t.Errorf("offline reason: got %q", last.Reason)
	}
	e.ExpectOnly(t, in, "devices/"+id+"/marker")
	if got := e.metric("pylon_mqtt_telemetry_disconnects_total"); got != 1 {
		t.Errorf("disconnects counted: got %v, want 1", got)
	}

	// Once the store is back, the resent message is acknowledged.
	ing.Set(accept)
	dev = e.MustConnect(cert, id)
	if got := dev.Publish1(t, broker.TelemetryTopic(id), []byte("m"), false); got != 0 {
		t.Fatalf("resend: got PUBACK 0x%02x, want 0x00", got)
	}
	if m := in.Receive(t); string(m.Payload) != "m" {
		t.Fatalf("integration received %q, want the resent message", m.Payload)
	}
}

func TestTelemetry_RetryMQTT311ClosesConnection(t *testing.T) {
	e, _ := MustStartIngest(t, retry)
	id, cert := e.NewDevice()
	conn := e.mustConnectV3(t, cert, id)
	v3Publish(t, conn, broker.TelemetryTopic(id), []byte("m"))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 1)
	n, err := conn.Read(b)
	var ne net.Error
	if n > 0 || err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read: got %d bytes (% x), err %v; want the connection closed without a PUBACK", n, b[:n], err)
	}
}

func TestTelemetry_DeviceMayNotWriteErrorsTopic(t *testing.T) {
	e, _ := MustStartIngest(t, accept)
	id, cert := e.NewDevice()
	dev := e.MustConnect(cert, id)
	for _, topic := range []string{broker.ErrorsTopic(id), broker.ErrorsTopic(id) + "/x"} {
		if got := dev.Publish1(t, topic, []byte(`{"code":"fake"}`), false); got != 0x87 {
			t.Errorf("publish %s: got PUBACK 0x%02x, want 0x87", topic, got)
		}
	}
	if got := dev.Publish1(t, "devices/"+id+"/errorsx", []byte("ok"), false); got != 0 {
		t.Errorf("publish errorsx: got PUBACK 0x%02x, want 0x00", got)
	}
	if got := dev.SubscribeCodes(t, broker.ErrorsTopic(id)); got[0] != 1 {
		t.Errorf("subscribe errors: got 0x%02x, want 0x01", got[0])
	}
}

func TestTelemetry_WillTopicsRefused(t *testing.T) {
	e, _ := MustStartIngest(t, accept)
	id, cert := e.NewDevice()
	for _, topic := range []string{broker.TelemetryTopic(id), broker.ErrorsTopic(id)} {
		_, ack, err := e.Connect(cert, id, func(c *paho.Connect) {
			c.WillMessage = &paho.WillMessage{Topic: topic, QoS: 1, Payload: []byte("unverified")}
		})
		if err == nil || ack == nil || ack.ReasonCode != 0x87 {
			t.Errorf("will on %s: got err=%v ack=%+v, want CONNACK 0x87", topic, err, ack)
		}
	}
}

// heldIngester holds every Submit's callback until the test answers it.
type heldIngester struct {
	mu    sync.Mutex
	dones []func(ingest.Result)
}

func (h *heldIngester) Submit(ctx context.Context, deviceID string, key *envelope.Key, payload []byte, done func(ingest.Result)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dones = append(h.dones, done)
}

func (h *heldIngester) held() []func(ingest.Result) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.dones)
}

// TestTelemetry_Pipelined checks that a device's QoS 1 messages are all
// handed to the ingester before the first is answered (the connection's
// read goroutine does not wait for commits), and that the PUBACKs come
// in the order of the PUBLISHes [MQTT-4.6.0-2], refusals included (MQTT
// 3.1.1: a normal PUBACK).
func TestTelemetry_Pipelined(t *testing.T) {
	ing := &heldIngester{}
	e := MustStart(t, func(o *broker.Options, _ *fakeStore) { o.Ingest = ing })
	id, cert := e.NewDevice()
	conn := e.mustConnectV3(t, cert, id)
	const n = 5
	for pid := 1; pid <= n; pid++ {
		body := append(appendString(nil, broker.TelemetryTopic(id)), 0, byte(pid))
		if _, err := conn.Write(appendPacket(nil, 0x32, append(body, 'm'))); err != nil {
			t.Fatalf("write PUBLISH: %v", err)
		}
	}
	waitFor(t, "every message submitted before any answer", func() bool { return len(ing.held()) == n })
	r := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("got a packet before any message was answered, want none")
	}
	// Answer in order (the ingester's promise), the third refused.
	for i, done := range ing.held() {
		res := accept(nil)
		if i == 2 {
			res = refuseWith(ingest.ReasonPayloadInvalid, pylon.EINVALID, "senml: bad")(nil)
		}
		done(res)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for pid := 1; pid <= n; pid++ {
		h, body := v3Packet(t, r)
		if h&0xf0 != 0x40 || len(body) != 2 || int(body[1]) != pid {
			t.Fatalf("packet %d: got 0x%02x % x, want the PUBACK of packet id %d", pid, h, body, pid)
		}
	}
}

// TestTelemetry_InFlightBounded checks that a device that sends more
// telemetry than the Receive Maximum without waiting for PUBACKs gets no
// more than that many messages into the platform's hands, is not
// disconnected, and has every message answered once earlier ones are:
// each PUBACK and each routed copy belongs to its own message, although
// the broker reuses what it keeps of a message between Submit and answer.
func TestTelemetry_InFlightBounded(t *testing.T) {
	ing := &heldIngester{}
	e := MustStart(t, func(o *broker.Options, _ *fakeStore) {
		o.Ingest = ing
		o.PlainAddr = "127.0.0.1:0"
	})
	in := e.integration(t)
	id, cert := e.NewDevice()
	conn := e.mustConnectV3(t, cert, id)
	n := broker.ReceiveMaximum + 10
	payload := func(pid int) string { return "m" + strconv.Itoa(pid) }
	go func() {
		for pid := 1; pid <= n; pid++ {
			body := append(appendString(nil, broker.TelemetryTopic(id)), byte(pid>>8), byte(pid))
			if _, err := conn.Write(appendPacket(nil, 0x32, append(body, payload(pid)...))); err != nil {
				return
			}
		}
	}()
	waitFor(t, "the Receive Maximum held", func() bool { return len(ing.held()) == broker.ReceiveMaximum })
	time.Sleep(100 * time.Millisecond)
	if got := len(ing.held()); got != broker.ReceiveMaximum {
		t.Fatalf("%d messages submitted with none answered, want at most %d", got, broker.ReceiveMaximum)
	}
	answered := 0
	for answered < n {
		dones := ing.held()
		if len(dones) == answered {
			waitFor(t, "the next messages submitted", func() bool { return len(ing.held()) > answered })
			continue
		}
		for _, done := range dones[answered:] {
			done(accept(nil))
		}
		answered = len(dones)
	}
	r := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for pid := 1; pid <= n; pid++ {
		h, body := v3Packet(t, r)
		if h&0xf0 != 0x40 || len(body) != 2 || int(body[0])<<8|int(body[1]) != pid {
			t.Fatalf("packet %d: got 0x%02x % x, want the PUBACK of packet id %d", pid, h, body, pid)
		}
	}
	for pid := 1; pid <= n; pid++ {
		if m := in.Receive(t); string(m.Payload) != payload(pid) {
			t.Fatalf("routed message %d: got %q, want %q", pid, m.Payload, payload(pid))
		}
	}
}

// startAccepting starts a broker whose ingester stores every message, and
// connects a device to it.
func startAccepting(t *testing.T) (*env, string, *client) {
	t.Helper()
	e, _ := MustStartIngest(t, accept)
	id, cert := e.NewDevice()
	return e, id, e.MustConnect(cert, id)
}

// mustStore publishes payload as the device's telemetry at QoS 1 and
// wants it acknowledged as stored.
func mustStore(t *testing.T, dev *client, id, payload string, retain bool) {
	t.Helper()
	if got := dev.Publish1(t, broker.TelemetryTopic(id), []byte(payload), retain); got != 0 {
		t.Fatalf("%s: got PUBACK 0x%02x, want 0x00", payload, got)
	}
}

// TestTelemetry_RetainedWithoutSubscribers: a stored message to be
// retained is retained even though no one subscribed when it came (route
// skips mochi only for messages not retained and not subscribed to).
func TestTelemetry_RetainedWithoutSubscribers(t *testing.T) {
	e, id, dev := startAccepting(t)
	mustStore(t, dev, id, "kept", true)
	in := e.integration(t)
	if m := in.Receive(t); string(m.Payload) != "kept" || !m.Retain {
		t.Fatalf("got %q (retain %v), want the retained telemetry", m.Payload, m.Retain)
	}
}

// TestTelemetry_InlineSubscriberOnly: a subscription of the server's own
// (mochi's inline client) is a subscriber too: it gets stored telemetry;
// and a message no one subscribed to is not kept for later subscribers.
func TestTelemetry_InlineSubscriberOnly(t *testing.T) {
	e, id, dev := startAccepting(t)
	mustStore(t, dev, id, "unheard", false)
	got := make(chan string, 4)
	if err := e.b.Server().Subscribe("devices/+/telemetry", 7, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		got <- string(pk.Payload)
	}); err != nil {
		t.Fatal(err)
	}
	mustStore(t, dev, id, "live", false)
	select {
	case p := <-got:
		if p != "live" {
			t.Fatalf("inline subscriber got %q, want \"live\"", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("inline subscriber got nothing")
	}
	in := e.integration(t)
	e.ExpectOnly(t, in, "devices/"+id+"/marker")
}

// TestMetrics_MessagesReceivedOnce: pylon_mqtt_messages_received_total
// counts a device's PUBLISH once, whether it is routed to a subscriber or
// not, and refused or not: what the broker publishes itself (routed
// telemetry, error reports) is not "received".
func TestMetrics_MessagesReceivedOnce(t *testing.T) {
	e, ing := MustStartIngest(t, accept)
	id, cert := e.NewDevice()
	dev := e.MustConnect(cert, id)
	const name = "pylon_mqtt_messages_received_total"
	publish := func(what string, payload []byte) {
		t.Helper()
		before := e.metric(name)
		dev.Publish1(t, broker.TelemetryTopic(id), payload, false)
		if d := e.metric(name) - before; d != 1 {
			t.Errorf("%s: %s rose by %v, want 1", what, name, d)
		}
	}
	publish("no subscriber", []byte("a"))
	in := e.integration(t)
	publish("routed to a subscriber", []byte("b"))
	in.Receive(t)
	ing.Set(refuseWith(ingest.ReasonPayloadInvalid, pylon.EINVALID, "senml: nope"))
	publish("refused, with an error report", []byte("c"))
}
