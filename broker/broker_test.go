package broker_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/broker"
)

func TestNew_ValidatesOptions(t *testing.T) {
	pki := MustNewPKI(t)
	store := newFakeStore()
	valid := func() broker.Options {
		return broker.Options{Addr: "127.0.0.1:0", Certificate: pki.server, ClientCAs: pki.pool,
			Devices: store, Certs: store, Audit: store}
	}
	tests := map[string]func(*broker.Options){
		"no address":                   func(o *broker.Options) { o.Addr = "" },
		"no certificate":               func(o *broker.Options) { o.Certificate = tls.Certificate{} },
		"no client CAs":                func(o *broker.Options) { o.ClientCAs = nil },
		"no device service":            func(o *broker.Options) { o.Devices = nil },
		"no certificate service":       func(o *broker.Options) { o.Certs = nil },
		"no audit service":             func(o *broker.Options) { o.Audit = nil },
		"plain without tokens":         func(o *broker.Options) { o.PlainAddr = "127.0.0.1:0" },
		"integration without tokens":   func(o *broker.Options) { o.IntegrationAddr = "127.0.0.1:0" },
		"negative integration recheck": func(o *broker.Options) { o.IntegrationRecheck = -time.Second },
		"negative audit period":        func(o *broker.Options) { o.AuditEvery = -time.Second },
	}
	for name, edit := range tests {
		t.Run(name, func(t *testing.T) {
			o := valid()
			edit(&o)
			if b, err := broker.New(o); err == nil {
				b.Close()
				t.Fatal("got nil error, want one")
			}
		})
	}
	b, err := broker.New(valid())
	if err != nil {
		t.Fatalf("valid options: got %v, want nil", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("close unstarted broker: %v", err)
	}
}

func TestStart_ReturnsBindError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pki, store := MustNewPKI(t), newFakeStore()
	b, err := broker.New(broker.Options{Addr: ln.Addr().String(), Certificate: pki.server, ClientCAs: pki.pool,
		Devices: store, Certs: store, Audit: store})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Start(context.Background()); err == nil {
		t.Fatal("start on a used port: got nil error, want a bind error")
	}
}

func TestDevice_PublishesInItsNamespace(t *testing.T) {
	e := MustStart(t, nil)
	id, cert := e.NewDevice()
	c, ack, err := e.Connect(cert, id, func(c *paho.Connect) { c.KeepAlive = 0 })
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if ack.Properties == nil || ack.Properties.ServerKeepAlive == nil || *ack.Properties.ServerKeepAlive != 600 {
		t.Errorf("keepalive 0: got CONNACK properties %+v, want Server Keep Alive 600", ack.Properties)
	}
	if got := c.SubscribeCodes(t, "devices/"+id+"/#"); got[0] != 1 {
		t.Fatalf("subscribe own namespace: got 0x%02x, want 0x01", got[0])
	}
	if got := c.Publish1(t, "devices/"+id+"/telemetry", []byte("21.5"), false); got != 0 {
		t.Fatalf("publish own telemetry: got PUBACK 0x%02x, want 0x00", got)
	}
	if m := c.Receive(t); m.Topic != "devices/"+id+"/telemetry" || string(m.Payload) != "21.5" {
		t.Fatalf("received %q %q, want own telemetry", m.Topic, m.Payload)
	}

	waitFor(t, "device online", func() bool { return e.store.Online(id) })
	evs := e.store.Events(id)
	if len(evs) != 1 || !evs[0].Online || evs[0].RemoteAddr == "" {
		t.Fatalf("events: got %+v, want one online event with a remote address", evs)
	}
	if got, want := e.store.AuthCalls(), []string{id + "/" + fmt.Sprintf("%x", cert.Leaf.SerialNumber)}; len(got) != 1 || got[0] != want[0] {
		t.Fatalf("AuthorizeConnection calls: got %v, want %v", got, want)
	}
	if got := e.b.Connected(); got != 1 {
		t.Errorf("Connected: got %d, want 1", got)
	}
	for _, m := range []struct {
		name string
		min  float64
	}{
		{"pylon_mqtt_connected_clients", 1},
		{"pylon_mqtt_connections_total", 1},
		{"pylon_mqtt_messages_received_total", 1},
		{"pylon_mqtt_messages_sent_total", 1},
	} {
		waitFor(t, fmt.Sprintf("%s >= %v", m.name, m.min), func() bool { return e.metric(m.name) >= m.min })
	}
}

// handshakeRefused dials with cert and fails unless the TLS handshake, or
// the first read after it (TLS 1.3 reports a refused client certificate
// only then), fails.
func handshakeRefused(t *testing.T, e *env, cert *tls.Certificate) {
	t.Helper()
	conn, err := e.DialTLS(cert, nil)
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		body := appendString(nil, "MQTT")
		body = append(body, 4, 0x02, 0, 30)
		body = appendString(body, "x")
		_, err = conn.Write(appendPacket(nil, 0x10, body))
		if err == nil {
			_, err = conn.Read(make([]byte, 4))
		}
		conn.Close()
	}
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("got %v, want the TLS handshake refused", err)
	}
	waitFor(t, "refusal counted", func() bool { return e.metric("pylon_mqtt_connect_refused_total", "reason", "tls") == 1 })
	if calls := e.store.AuthCalls(); len(calls) != 0 {
		t.Fatalf("store consulted: %v", calls)
	}
}

func TestTLS_NoClientCertificate(t *testing.T) {
	e := MustStart(t, nil)
	handshakeRefused(t, e, nil)
}

func TestTLS_ForeignCACertificate(t *testing.T) {
	e := MustStart(t, nil)
	id := pylon.NewID()
	foreign := MustNewPKI(t).DeviceCert(t, id)
	handshakeRefused(t, e, &foreign)
}

func TestConnect_ClientIDMustBeDeviceID(t *testing.T) {
	e := MustStart(t, func(o *broker.Options, _ *fakeStore) { o.AuditEvery = 300 * time.Millisecond })
	id, cert := e.NewDevice()
	tests := map[string]string{
		"another device": pylon.NewID(),
		"empty":          "",
		"prefix":         id[:8],
	}
	for name, clientID := range tests {
		t.Run(name, func(t *testing.T) {
			_, ack, err := e.Connect(cert, clientID)
			if err == nil || ack == nil || ack.ReasonCode != 0x87 {
				t.Fatalf("got err=%v ack=%+v, want CONNACK 0x87", err, ack)
			}
		})
	}
	if calls := e.store.AuthCalls(); len(calls) != 0 {
		t.Fatalf("store consulted for a mismatched client id: %v", calls)
	}
	if got := e.metric("pylon_mqtt_connect_refused_total", "reason", "client_id_mismatch"); got != 3 {
		t.Errorf("refused metric: got %v, want 3", got)
	}
	var recs []*pylon.AuditRecord
	waitFor(t, "refusal audit record", func() bool {
		recs = e.store.Audit(pylon.ActionMQTTRefused, "device:"+id)
		return len(recs) > 0
	})
	if len(recs) != 1 {
		t.Fatalf("refusal records: got %d, want 1", len(recs))
	}
	if d := decodeDetails(t, recs[0]); d.Count != 3 || d.Reasons["client_id_mismatch"] != 3 || len(d.RemoteAddrs) == 0 {
		t.Fatalf("details: got %+v, want 3 client_id_mismatch refusals", d)
	}
	if got := recs[0].Actor; got != "device:"+id {
		t.Errorf("actor: got %q, want device:%s", got, id)
	}
}

func TestConnect_RefusedByStore(t *testing.T) {
	e := MustStart(t, nil)
	tests := map[string]struct {
		err    error
		code   byte
		reason string
	}{
		"revoked certificate": {pylon.Errorf(pylon.EFORBIDDEN, "certificate revoked"), 0x87, "forbidden"},
		"suspended device":    {pylon.Errorf(pylon.EFORBIDDEN, "device suspended"), 0x87, "forbidden"},
		"superseded":          {pylon.Errorf(pylon.EUNAUTHORIZED, "certificate superseded"), 0x87, "unauthorized"},
		"store failure":       {errors.New("disk on fire"), 0x88, "store_error"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			id, cert := e.NewDevice()
			e.store.SetDeny(id, tc.err)
			before := e.metric("pylon_mqtt_connect_refused_total", "reason", tc.reason)
			_, ack, err := e.Connect(cert, id)
			if err == nil || ack == nil || ack.ReasonCode != tc.code {
				t.Fatalf("got err=%v ack=%+v, want CONNACK 0x%02x", err, ack, tc.code)
			}
			if got := e.metric("pylon_mqtt_connect_refused_total", "reason", tc.reason); got != before+1 {
				t.Errorf("refused{%s}: got %v, want %v", tc.reason, got, before+1)
			}
			if evs := e.store.Events(id); len(evs) != 0 {
				t.Errorf("events of a refused device: got %+v, want none", evs)
			}
			want := pylon.ErrorMessage(tc.err)
			if tc.reason == "store_error" {
				want = tc.err.Error()
			}
			if !strings.Contains(e.logs.String(), want) {
				t.Errorf("log: %q not found", want)
			}
		})
	}
}

func TestConnect_WillOutsideNamespaceRefused(t *testing.T) {
	e := MustStart(t, nil)
	id, cert := e.NewDevice()
	tests := map[string]struct {
		topic string
		code  byte
	}{
		"another device": {"devices/" + pylon.NewID() + "/status", 0x87},
		"root":           {"status", 0x87},
		"own namespace":  {"devices/" + id + "/status", 0x00},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, ack, _ := e.Connect(cert, id, func(c *paho.Connect) {
				c.WillMessage = &paho.WillMessage{Topic: tc.topic, Payload: []byte("gone")}
			})
			if ack == nil || ack.ReasonCode != tc.code {
				t.Fatalf("got ack=%+v, want CONNACK 0x%02x", ack, tc.code)
			}
			if c != nil {
				c.Disconnect(&paho.Disconnect{})
			}
		})
	}
}

func TestACL_PublishToAnotherDeviceDropped(t *testing.T) {
	e := MustStart(t, nil)
	a, certA := e.NewDevice()
	b, certB := e.NewDevice()
	ca := e.MustConnect(certA, a)
	if got := ca.SubscribeCodes(t, "devices/"+a+"/#"); got[0] != 1 {
		t.Fatalf("subscribe: got 0x%02x, want 0x01", got[0])
	}
	cb := e.MustConnect(certB, b)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cb.Publish(ctx, &paho.Publish{Topic: "devices/" + a + "/commands", QoS: 0, Payload: []byte("qos0")}); err != nil {
		t.Fatalf("QoS 0 publish: %v", err)
	}
	if got := cb.Publish1(t, "devices/"+a+"/commands", []byte("qos1"), false); got != 0x87 {
		t.Fatalf("QoS 1 publish to another device: got PUBACK 0x%02x, want 0x87", got)
	}
	if got := cb.Publish1(t, "devices/"+b+"/status", []byte("ok"), false); got != 0 {
		t.Fatalf("publish to own namespace after a denial: got PUBACK 0x%02x, want 0x00", got)
	}
	e.ExpectOnly(t, ca, "devices/"+a+"/marker")
	if got := e.metric("pylon_mqtt_acl_denied_total", "op", "publish"); got != 2 {
		t.Errorf("acl denied publish: got %v, want 2", got)
	}
}

func TestACL_SubscribeOutsideNamespaceRefused(t *testing.T) {
	e := MustStart(t, nil)
	id, cert := e.NewDevice()
	other := pylon.NewID()
	c := e.MustConnect(cert, id)
	tests := map[string]struct {
		filter string
		code   byte
	}{
		"everything":            {"#", 0x87},
		"any first level":       {"+/x", 0x87},
		"every device":          {"devices/+/telemetry", 0x87},
		"all devices":           {"devices/#", 0x87},
		"another device":        {"devices/" + other + "/#", 0x87},
		"sys":                   {"$SYS/#", 0x87},
		"shared own":            {"$share/g/devices/" + id + "/x", 0x87},
		"namespace root only":   {"devices/" + id, 0x87},
		"too long":              {"devices/" + id + "/" + strings.Repeat("x", 256), 0x87},
		"own commands":          {"devices/" + id + "/commands/#", 0x01},
		"own single level wild": {"devices/" + id + "/+", 0x01},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := c.SubscribeCodes(t, tc.filter); len(got) != 1 || got[0] != tc.code {
				t.Fatalf("subscribe %q: got % x, want 0x%02x", tc.filter, got, tc.code)
			}
		})
	}
	if got := e.metric("pylon_mqtt_acl_denied_total", "op", "subscribe"); got != 9 {
		t.Errorf("acl denied subscribe: got %v, want 9", got)
	}
}

func TestACL_SubscriptionLimit(t *testing.T) {
	e := MustStart(t, nil)
	id, cert := e.NewDevice()
	c := e.MustConnect(cert, id)
	var filters []string
	for i := range 65 {
		filters = append(filters, fmt.Sprintf("devices/%s/f%d", id, i))
	}
	got := c.SubscribeCodes(t, filters...)
	if len(got) != 65 || got[63] != 0x01 || got[64] != 0x8f {
		t.Fatalf("65 filters: got % x, want 64 granted and the last 0x8f", got)
	}
}

func TestACL_RetainedMessageNeverReachesAnotherDevice(t *testing.T) {
	e := MustStart(t, func(o *broker.Options, _ *fakeStore) { o.PlainAddr = "127.0.0.1:0" })
	a, certA := e.NewDevice()
	b, certB := e.NewDevice()
	ca := e.MustConnect(certA, a)
	if got := ca.Publish1(t, "devices/"+a+"/state", []byte("secret"), true); got != 0 {
		t.Fatalf("retained publish: got PUBACK 0x%02x, want 0x00", got)
	}

	cb := e.MustConnect(certB, b)
	for _, f := range []string{"devices/" + a + "/state", "devices/" + a + "/#", "devices/+/state", "devices/#", "#", "+/+/state"} {
		if got := cb.SubscribeCodes(t, f); got[0] != 0x87 {
			t.Errorf("subscribe %q: got 0x%02x, want 0x87", f, got[0])
		}
	}
	if got := cb.SubscribeCodes(t, "devices/"+b+"/#"); got[0] != 1 {
		t.Fatalf("subscribe own namespace: got 0x%02x, want 0x01", got[0])
	}
	e.ExpectOnly(t, cb, "devices/"+b+"/marker")

	// Control: the message was retained, and an integration sees it.
	in, _, err := e.ConnectPlain("dashboard", e.store.AddToken(pylon.RoleViewer))
	if err != nil {
		t.Fatalf("integration connect: %v", err)
	}
	if got := in.SubscribeCodes(t, "devices/#"); got[0] != 1 {
		t.Fatalf("integration subscribe: got 0x%02x, want 0x01", got[0])
	}
	if m := in.Receive(t); m.Topic != "devices/"+a+"/state" || string(m.Payload) != "secret" || !m.Retain {
		t.Fatalf("integration received %q %q retain=%v, want the retained state", m.Topic, m.Payload, m.Retain)
	}
}

func TestSession_TakeoverKeepsDeviceOnline(t *testing.T) {
	e := MustStart(t, nil)
	id, cert := e.NewDevice()
	first := e.MustConnect(cert, id)
	waitFor(t, "first online", func() bool { return e.store.Online(id) })
	second := e.MustConnect(cert, id)

	first.ExpectDisconnect(t, 0x8e, 5*time.Second, "first connection")
	waitFor(t, "old connection gone", func() bool { return e.b.Connected() == 1 })
	if !e.store.Online(id) {
		t.Fatal("device offline after takeover, want online")
	}
	evs := e.store.Events(id)
	if len(evs) != 3 || !evs[0].Online || evs[1].Online || evs[1].Reason != "taken over" || !evs[2].Online {
		t.Fatalf("events: got %+v, want online, offline (taken over), online", evs)
	}
	if got := second.Publish1(t, "devices/"+id+"/status", []byte("still here"), false); got != 0 {
		t.Fatalf("publish on the new session: got 0x%02x, want 0x00", got)
	}
}

func TestDisconnectDevice(t *testing.T) {
	e := MustStart(t, nil)
	id, cert := e.NewDevice()
	c := e.MustConnect(cert, id)
	waitFor(t, "online", func() bool { return e.store.Online(id) })

	e.store.SetDeny(id, pylon.Errorf(pylon.EFORBIDDEN, "device suspended"))
	start := time.Now()
	if err := e.b.DisconnectDevice(context.Background(), id, "suspended"); err != nil {
		t.Fatalf("DisconnectDevice: %v", err)
	}
	c.ExpectDisconnect(t, 0x98, time.Second, "session dropped")
	t.Logf("dropped after %v", time.Since(start))
	waitFor(t, "offline", func() bool { return !e.store.Online(id) })
	evs := e.store.Events(id)
	if last := evs[len(evs)-1]; last.Online || last.Reason != "revoked: suspended" {
		t.Fatalf("last event: got %+v, want offline, revoked: suspended", last)
	}
	if _, ack, err := e.Connect(cert, id); err == nil || ack == nil || ack.ReasonCode != 0x87 {
		t.Fatalf("reconnect: got err=%v ack=%+v, want CONNACK 0x87", err, ack)
	}

	for name, dev := range map[string]string{"offline device": id, "unknown device": pylon.NewID(), "not an id": "../x"} {
		if err := e.b.DisconnectDevice(context.Background(), dev, "test"); err != nil {
			t.Errorf("%s: got %v, want nil", name, err)
		}
	}
}

func TestDisconnectDevice_DuringConnect(t *testing.T) {
	gate, entered := make(chan struct{}), make(chan string, 1)
	e := MustStart(t, func(_ *broker.Options, s *fakeStore) { s.gate, s.entered = gate, entered })
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // before the broker's Close, even if the test fails
	id, cert := e.NewDevice()
	type result struct {
		ack *paho.Connack
		err error
	}
	done := make(chan result, 1)
	go func() {
		_, ack, err := e.Connect(cert, id)
		done <- result{ack, err}
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("AuthorizeConnection not called")
	}
	// The device is suspended after the store check began.
	if err := e.b.DisconnectDevice(context.Background(), id, "suspended"); err != nil {
		t.Fatal(err)
	}
	release()
	r := <-done
	if r.err == nil || r.ack != nil && r.ack.ReasonCode < 0x80 {
		t.Fatalf("connect: got err=%v ack=%+v, want the connection refused", r.err, r.ack)
	}
	waitFor(t, "connection gone", func() bool { return e.b.Connected() == 0 })
	for _, ev := range e.store.Events(id) {
		if ev.Online {
			t.Fatalf("device recorded online: %+v", ev)
		}
	}
}

func TestDisconnectDevice_MQTT311(t *testing.T) {
	e := MustStart(t, nil)
	id, cert := e.NewDevice()
	conn := e.mustConnectV3(t, cert, id)
	waitFor(t, "online", func() bool { return e.store.Online(id) })
	if err := e.b.DisconnectDevice(context.Background(), id, "revoked"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	_, err := conn.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read after DisconnectDevice: got %v, want the connection closed within 1s", err)
	}
}

func TestMQTT311(t *testing.T) {
	e := MustStart(t, nil)
	id, cert := e.NewDevice()
	tests := map[string]struct {
		clientID string
		rc       byte
	}{
		"client id mismatch": {pylon.NewID(), 5},
		"device id":          {id, 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			conn, err := e.DialTLS(&cert, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if rc := v3Connect(t, conn, tc.clientID); rc != tc.rc {
				t.Fatalf("CONNACK: got %d, want %d", rc, tc.rc)
			}
			if tc.rc != 0 {
				return
			}
			if rc := v3Subscribe(t, conn, 1, "#"); rc != 0x80 {
				t.Errorf("subscribe #: got 0x%02x, want 0x80", rc)
			}
			if rc := v3Subscribe(t, conn, 2, "devices/"+id+"/#"); rc != 0x01 {
				t.Errorf("subscribe own: got 0x%02x, want 0x01", rc)
			}
		})
	}
	suspended, scert := e.NewDevice()
	e.store.SetDeny(suspended, pylon.Errorf(pylon.EFORBIDDEN, "device suspended"))
	conn, err := e.DialTLS(&scert, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if rc := v3Connect(t, conn, suspended); rc != 5 {
		t.Fatalf("suspended device: got CONNACK %d, want 5", rc)
	}
}

func TestConnections_Recorded(t *testing.T) {
	stale := pylon.NewID()
	e := MustStart(t, func(_ *broker.Options, s *fakeStore) { s.online[stale] = true })
	if e.store.Online(stale) || e.store.resets != 1 {
		t.Fatalf("after start: stale online=%v resets=%d, want offline and 1 reset", e.store.Online(stale), e.store.resets)
	}
	id, cert := e.NewDevice()
	c := e.MustConnect(cert, id)
	waitFor(t, "online", func() bool { return e.store.Online(id) })
	if err := c.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "offline", func() bool { return !e.store.Online(id) })
	evs := e.store.Events(id)
	if len(evs) != 2 || !evs[0].Online || evs[1].Online || evs[1].Reason != "client disconnect" {
		t.Fatalf("events: got %+v, want online then offline (client disconnect)", evs)
	}

	// Close ends the remaining sessions and records them.
	id2, cert2 := e.NewDevice()
	e.MustConnect(cert2, id2)
	waitFor(t, "second online", func() bool { return e.store.Online(id2) })
	if err := e.b.Close(); err != nil {
		t.Fatal(err)
	}
	if e.store.Online(id2) {
		t.Fatal("device online after Close, want offline")
	}
	if evs := e.store.Events(id2); evs[len(evs)-1].Reason != "server shutting down" {
		t.Fatalf("last event: got %+v, want server shutting down", evs[len(evs)-1])
	}
}

func TestAudit_ACLDenialsAggregated(t *testing.T) {
	e := MustStart(t, func(o *broker.Options, _ *fakeStore) { o.AuditEvery = 300 * time.Millisecond })
	a := pylon.NewID()
	b, certB := e.NewDevice()
	cb := e.MustConnect(certB, b)
	for i := range 3 {
		if got := cb.Publish1(t, fmt.Sprintf("devices/%s/x%d", a, i), nil, false); got != 0x87 {
			t.Fatalf("publish: got 0x%02x, want 0x87", got)
		}
	}
	if got := cb.SubscribeCodes(t, "#", "devices/"+a+"/#"); len(got) != 2 || got[0] != 0x87 || got[1] != 0x87 {
		t.Fatalf("subscribe: got % x, want 87 87", got)
	}
	var recs []*pylon.AuditRecord
	waitFor(t, "acl audit record", func() bool {
		recs = e.store.Audit(pylon.ActionACLDenied, "device:"+b)
		return len(recs) > 0
	})
	if len(recs) != 1 {
		t.Fatalf("records: got %d, want 1", len(recs))
	}
	d := decodeDetails(t, recs[0])
	if d.Count != 5 || d.Publish != 3 || d.Subscribe != 2 || len(d.Topics) != 5 {
		t.Fatalf("details: got %+v, want 5 denials (3 publish, 2 subscribe) and 5 sample topics", d)
	}
	if recs[0].Actor != "device:"+b {
		t.Errorf("actor: got %q, want device:%s", recs[0].Actor, b)
	}
	if got := e.metric("pylon_mqtt_acl_denied_total", "op", "publish"); got != 3 {
		t.Errorf("metric publish: got %v, want 3", got)
	}
	if got := e.metric("pylon_mqtt_acl_denied_total", "op", "subscribe"); got != 2 {
		t.Errorf("metric subscribe: got %v, want 2", got)
	}
}

func TestAudit_FlushedOnClose(t *testing.T) {
	e := MustStart(t, func(o *broker.Options, _ *fakeStore) { o.AuditEvery = time.Hour })
	b, certB := e.NewDevice()
	cb := e.MustConnect(certB, b)
	for range 2 {
		if got := cb.Publish1(t, "elsewhere", nil, false); got != 0x87 {
			t.Fatalf("publish: got 0x%02x, want 0x87", got)
		}
	}
	if recs := e.store.Audit(pylon.ActionACLDenied, "device:"+b); len(recs) != 0 {
		t.Fatalf("records before Close: got %d, want 0", len(recs))
	}
	if err := e.b.Close(); err != nil {
		t.Fatal(err)
	}
	recs := e.store.Audit(pylon.ActionACLDenied, "device:"+b)
	if len(recs) != 1 || decodeDetails(t, recs[0]).Count != 2 {
		t.Fatalf("records after Close: got %d, want 1 with count 2", len(recs))
	}
}

func TestPlainListener(t *testing.T) {
	e := MustStart(t, func(o *broker.Options, _ *fakeStore) { o.PlainAddr = "127.0.0.1:0" })
	if !strings.Contains(e.logs.String(), "plain-TCP MQTT listener enabled: traffic is not encrypted") {
		t.Error("no warning about the plain listener in the log")
	}
	testIntegrationListener(t, e, e.ConnectPlain)
}

// TestIntegrationListener: the integrations' TLS listener admits the
// same clients as the plain one, over TLS without a client certificate;
// a device certificate shown there makes no device.
func TestIntegrationListener(t *testing.T) {
	e := MustStart(t, func(o *broker.Options, _ *fakeStore) { o.IntegrationAddr = "127.0.0.1:0" })
	if strings.Contains(e.logs.String(), "plain-TCP") {
		t.Error("the TLS integration listener logged a plain-TCP warning")
	}
	testIntegrationListener(t, e, e.ConnectIntegration)

	id, cert := e.NewDevice()
	conn, err := e.dialIntegration(&cert)
	if err != nil {
		t.Fatalf("TLS with a device certificate: %v", err)
	}
	if _, ack, err := e.mqttConnect(conn, id); err == nil || ack == nil || ack.ReasonCode != 0x85 {
		t.Fatalf("a device's identity on the integration listener: got err=%v ack=%+v, want CONNACK 0x85", err, ack)
	}
	raw, err := net.DialTimeout("tcp", e.b.IntegrationAddr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, ack, err := e.mqttConnect(raw, "svc", withToken(e.store.AddToken(pylon.RoleViewer))); err == nil {
		t.Fatalf("plain MQTT on the TLS integration listener: got CONNACK %+v, want a failed connection", ack)
	}
}

// TestIntegrationListener_TokenRevoked: revoking an integration's API
// token ends its live session at the next check (MQTT 5: DISCONNECT
// 0x98); a session with a valid token stays.
func TestIntegrationListener_TokenRevoked(t *testing.T) {
	for _, listener := range []string{"tls", "plain"} {
		t.Run(listener, func(t *testing.T) {
			e := MustStart(t, func(o *broker.Options, _ *fakeStore) {
				o.IntegrationAddr, o.PlainAddr, o.IntegrationRecheck = "127.0.0.1:0", "127.0.0.1:0", 20*time.Millisecond
			})
			connect := e.ConnectIntegration
			if listener == "plain" {
				connect = e.ConnectPlain
			}
			revoked, kept := e.store.AddToken(pylon.RoleViewer), e.store.AddToken(pylon.RoleViewer)
			gone, _, err := connect("historian", revoked)
			if err != nil {
				t.Fatal(err)
			}
			stays, _, err := connect("bridge", kept)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // checked several times, still valid
			e.store.RevokeToken(revoked)
			gone.ExpectDisconnect(t, 0x98, 5*time.Second, "the session of a revoked token")
			id, cert := e.NewDevice()
			dev := e.MustConnect(cert, id)
			if got := stays.SubscribeCodes(t, "devices/+/status"); got[0] >= 0x80 {
				t.Fatalf("valid token's subscribe: got 0x%02x", got[0])
			}
			if got := dev.Publish1(t, "devices/"+id+"/status", []byte("up"), false); got != 0 {
				t.Fatalf("device publish: got 0x%02x", got)
			}
			if m := stays.Receive(t); string(m.Payload) != "up" {
				t.Fatalf("valid token's session received %q, want up", m.Payload)
			}
			if !strings.Contains(e.logs.String(), "mqtt integration session ended") {
				t.Error("no log line for the ended session")
			}
		})
	}
}

// testIntegrationListener checks what an API-token integration may do,
// connecting with connect.
func testIntegrationListener(t *testing.T, e *env, connect func(clientID, password string) (*client, *paho.Connack, error)) {
	token := e.store.AddToken(pylon.RoleViewer)
	in, _, err := connect("dashboard-1", token)
	if err != nil {
		t.Fatalf("connect with API token: %v", err)
	}
	for _, tc := range []struct {
		filter string
		code   byte
	}{
		{"devices/#", 1},
		{"devices/+/telemetry", 1},
		{"#", 0x87},
		{"$SYS/#", 0x87},
		{"$share/g/devices/#", 0x87},
		{"other/#", 0x87},
	} {
		if got := in.SubscribeCodes(t, tc.filter); got[0] != tc.code {
			t.Errorf("subscribe %q: got 0x%02x, want 0x%02x", tc.filter, got[0], tc.code)
		}
	}
	id, cert := e.NewDevice()
	dev := e.MustConnect(cert, id)
	if got := dev.SubscribeCodes(t, "devices/"+id+"/#"); got[0] != 1 {
		t.Fatalf("device subscribe: got 0x%02x", got[0])
	}
	if got := in.Publish1(t, "devices/"+id+"/commands", []byte("reboot"), false); got != 0x87 {
		t.Fatalf("integration publish: got PUBACK 0x%02x, want 0x87", got)
	}
	e.ExpectOnly(t, dev, "devices/"+id+"/marker")
	if got := dev.Publish1(t, "devices/"+id+"/telemetry", []byte("1"), false); got != 0 {
		t.Fatalf("device publish: got 0x%02x", got)
	}
	for _, want := range []string{"marker", "1"} {
		if m := in.Receive(t); string(m.Payload) != want {
			t.Fatalf("integration received %q %q, want payload %q", m.Topic, m.Payload, want)
		}
	}

	refused := map[string]struct {
		clientID, password string
		code               byte
	}{
		"unknown token":       {"svc", pylon.APITokenPrefix + pylon.NewID() + "_" + strings.Repeat("a", 43), 0x86},
		"malformed token":     {"svc", "hunter2", 0x86},
		"no password":         {"svc", "", 0x86},
		"device id as client": {id, token, 0x85},
		"inline client id":    {"inline", token, 0x85},
		"client id too long":  {strings.Repeat("c", 65), token, 0x85},
	}
	for name, tc := range refused {
		t.Run(name, func(t *testing.T) {
			_, ack, err := connect(tc.clientID, tc.password)
			if err == nil || ack == nil || ack.ReasonCode != tc.code {
				t.Fatalf("got err=%v ack=%+v, want CONNACK 0x%02x", err, ack, tc.code)
			}
		})
	}
	if !e.store.Online(id) {
		t.Fatal("device lost its session to a plain-listener client")
	}
	if strings.Contains(e.logs.String(), token) {
		t.Fatal("API token written to the log")
	}
}

func TestClose_Idempotent(t *testing.T) {
	e := MustStart(t, nil)
	for i := range 2 {
		if err := e.b.Close(); err != nil {
			t.Fatalf("close %d: %v", i, err)
		}
	}
	if _, err := net.DialTimeout("tcp", e.b.Addr().String(), time.Second); err == nil {
		t.Fatal("listener still accepting after Close")
	}
	if err := e.b.Start(context.Background()); err == nil {
		t.Fatal("Start after Close: got nil error")
	}
}
