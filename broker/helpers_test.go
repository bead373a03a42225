package broker_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/broker"
)

// testPKI is a throwaway CA with a server certificate.
type testPKI struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
	server tls.Certificate
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func randSerial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// MustNewPKI makes an ECDSA P-256 CA and a server certificate for
// localhost and 127.0.0.1.
func MustNewPKI(tb testing.TB) *testPKI {
	tb.Helper()
	caKey := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(tb),
		Subject:               pkix.Name{CommonName: "Test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(der)
	p := &testPKI{caCert: caCert, caKey: caKey, pool: x509.NewCertPool()}
	p.pool.AddCert(caCert)

	srvKey := newKey(tb)
	srv := &x509.Certificate{
		SerialNumber: randSerial(tb),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	sder, err := x509.CreateCertificate(rand.Reader, srv, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	p.server = tls.Certificate{Certificate: [][]byte{sder, der}, PrivateKey: srvKey}
	return p
}

// DeviceCert issues a client certificate with the given common name.
func (p *testPKI) DeviceCert(tb testing.TB, cn string) tls.Certificate {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(tb),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Pylon devices"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// fakeStore is an in-memory DeviceService, CertificateService,
// APITokenService and AuditService implementing what the broker uses.
type fakeStore struct {
	pylon.DeviceService
	pylon.CertificateService
	pylon.APITokenService
	pylon.AuditService

	mu        sync.Mutex
	online    map[string]bool
	events    []pylon.ConnectionEvent
	deny      map[string]error // AuthorizeConnection's answer per device
	authCalls []string         // "device/serial"
	tokens    map[string][]byte
	roles     map[string]pylon.Role
	audit     []*pylon.AuditRecord
	resets    int
	problems  []string // misuse seen by the fake (wrong principal, ...)

	// If gate is set, AuthorizeConnection sends the device id on entered
	// and waits for gate to be closed.
	gate    chan struct{}
	entered chan string
}

func newFakeStore() *fakeStore {
	return &fakeStore{
		online: map[string]bool{},
		deny:   map[string]error{},
		tokens: map[string][]byte{},
		roles:  map[string]pylon.Role{},
	}
}

func (s *fakeStore) RecordConnection(ctx context.Context, ev pylon.ConnectionEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := pylon.PrincipalFromContext(ctx); p.Kind != pylon.PrincipalDevice || p.ID != ev.DeviceID {
		s.problems = append(s.problems, fmt.Sprintf("RecordConnection(%s) with principal %s", ev.DeviceID, p.Actor()))
	}
	s.online[ev.DeviceID] = ev.Online
	s.events = append(s.events, ev)
	return nil
}

func (s *fakeStore) ResetConnections(ctx context.Context, at time.Time) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, on := range s.online {
		if on {
			n++
			s.online[id] = false
		}
	}
	s.resets++
	return n, nil
}

func (s *fakeStore) AuthorizeConnection(ctx context.Context, deviceID, serial string, now time.Time) (*pylon.Device, error) {
	if s.gate != nil {
		s.entered <- deviceID
		select {
		case <-s.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := pylon.PrincipalFromContext(ctx); p.Kind != pylon.PrincipalDevice || p.ID != deviceID {
		s.problems = append(s.problems, fmt.Sprintf("AuthorizeConnection(%s) with principal %s", deviceID, p.Actor()))
	}
	s.authCalls = append(s.authCalls, deviceID+"/"+serial)
	if err := s.deny[deviceID]; err != nil {
		return nil, err
	}
	return &pylon.Device{ID: deviceID, State: pylon.DeviceActive}, nil
}

func (s *fakeStore) AuthenticateAPIToken(ctx context.Context, id string, secretHash []byte) (*pylon.APIToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.tokens[id]
	if !ok || subtle.ConstantTimeCompare(h, secretHash) != 1 {
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "invalid credentials")
	}
	return &pylon.APIToken{ID: id, Role: s.roles[id]}, nil
}

func (s *fakeStore) AppendAudit(ctx context.Context, r *pylon.AuditRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := *r
	if c.Actor == "" {
		c.Actor = pylon.PrincipalFromContext(ctx).Actor()
	}
	s.audit = append(s.audit, &c)
	return nil
}

// SetDeny makes AuthorizeConnection fail for the device with err (nil
// allows).
func (s *fakeStore) SetDeny(id string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deny[id] = err
}

// AddToken creates an API token and returns its secret.
func (s *fakeStore) AddToken(role pylon.Role) string {
	secret, id, hash := pylon.NewSecret(pylon.APITokenPrefix)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[id], s.roles[id] = hash, role
	return secret
}

// RevokeToken forgets the API token with secret.
func (s *fakeStore) RevokeToken(secret string) {
	id, _, err := pylon.ParseSecret(pylon.APITokenPrefix, secret)
	if err != nil {
		panic(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, id)
}

func (s *fakeStore) Online(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.online[id]
}

func (s *fakeStore) Events(id string) []pylon.ConnectionEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []pylon.ConnectionEvent
	for _, ev := range s.events {
		if ev.DeviceID == id {
			out = append(out, ev)
		}
	}
	return out
}

func (s *fakeStore) AuthCalls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.authCalls)
}

func (s *fakeStore) Audit(action, object string) []*pylon.AuditRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*pylon.AuditRecord
	for _, r := range s.audit {
		if r.Action == action && r.Object == object {
			out = append(out, r)
		}
	}
	return out
}

func (s *fakeStore) Problems() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.problems)
}

// syncBuffer is a bytes.Buffer safe for concurrent use, for logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// env is a started broker with its fakes.
type env struct {
	t     *testing.T
	pki   *testPKI
	store *fakeStore
	b     *broker.Broker
	reg   *prometheus.Registry
	logs  *syncBuffer
}

// MustStart starts a broker on 127.0.0.1:0 and closes it when the test
// ends. setup may change the options and the store before Start.
func MustStart(t *testing.T, setup func(*broker.Options, *fakeStore)) *env {
	t.Helper()
	e := &env{t: t, pki: MustNewPKI(t), store: newFakeStore(), reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	opts := broker.Options{
		Addr:        "127.0.0.1:0",
		Certificate: e.pki.server,
		ClientCAs:   e.pki.pool,
		Devices:     e.store,
		Certs:       e.store,
		APITokens:   e.store,
		Audit:       e.store,
		Registerer:  e.reg,
		Logger:      slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if setup != nil {
		setup(&opts, e.store)
	}
	b, err := broker.New(opts)
	if err != nil {
		t.Fatalf("new broker: %v", err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("start broker: %v", err)
	}
	e.b = b
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close broker: %v", err)
		}
		if p := e.store.Problems(); len(p) > 0 {
			t.Errorf("store misuse: %v", p)
		}
	})
	return e
}

// NewDevice returns a fresh device id and a certificate for it.
func (e *env) NewDevice() (string, tls.Certificate) {
	id := pylon.NewID()
	return id, e.pki.DeviceCert(e.t, id)
}

// client is a paho MQTT 5 client that records what it receives.
type client struct {
	*paho.Client
	msgs chan *paho.Publish
	disc chan *paho.Disconnect
}

// DialTLS opens a TLS connection to the broker with cert (none if nil).
func (e *env) DialTLS(cert *tls.Certificate, roots *x509.CertPool) (*tls.Conn, error) {
	if roots == nil {
		roots = e.pki.pool
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	return tls.DialWithDialer(d, "tcp", e.b.Addr().String(), cfg)
}

// Connect connects an MQTT 5 client over TLS with cert and client id.
func (e *env) Connect(cert tls.Certificate, clientID string, edit ...func(*paho.Connect)) (*client, *paho.Connack, error) {
	conn, err := e.DialTLS(&cert, nil)
	if err != nil {
		return nil, nil, err
	}
	return e.mqttConnect(conn, clientID, edit...)
}

// ConnectPlain connects an MQTT 5 client to the plain listener with an
// API token as password ("" for none).
func (e *env) ConnectPlain(clientID, password string) (*client, *paho.Connack, error) {
	conn, err := net.DialTimeout("tcp", e.b.PlainAddr().String(), 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	return e.mqttConnect(conn, clientID, withToken(password))
}

// ConnectIntegration connects an MQTT 5 client to the integrations' TLS
// listener, without a client certificate, with an API token as password
// ("" for none).
func (e *env) ConnectIntegration(clientID, password string) (*client, *paho.Connack, error) {
	conn, err := e.dialIntegration(nil)
	if err != nil {
		return nil, nil, err
	}
	return e.mqttConnect(conn, clientID, withToken(password))
}

// withToken sets an integration's API token as the CONNECT password, if
// not "".
func withToken(password string) func(*paho.Connect) {
	return func(c *paho.Connect) {
		if password != "" {
			c.Username, c.UsernameFlag = "integration", true
			c.Password, c.PasswordFlag = []byte(password), true
		}
	}
}

// dialIntegration dials the integrations' TLS listener, trusting the
// test CA, with cert if not nil.
func (e *env) dialIntegration(cert *tls.Certificate) (*tls.Conn, error) {
	cfg := &tls.Config{RootCAs: e.pki.pool, ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	return tls.DialWithDialer(d, "tcp", e.b.IntegrationAddr().String(), cfg)
}

func (e *env) mqttConnect(conn net.Conn, clientID string, edit ...func(*paho.Connect)) (*client, *paho.Connack, error) {
	c := &client{msgs: make(chan *paho.Publish, 256), disc: make(chan *paho.Disconnect, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { c.disc <- d },
	})
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true}
	for _, f := range edit {
		f(cp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := c.Client.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		return nil, ack, err
	}
	e.t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	return c, ack, nil
}

// MustConnect connects a device and fails the test if it cannot.
func (e *env) MustConnect(cert tls.Certificate, clientID string) *client {
	e.t.Helper()
	c, ack, err := e.Connect(cert, clientID)
	if err != nil {
		e.t.Fatalf("connect %s: %v (connack %+v)", clientID, err, ack)
	}
	return c
}

// SubscribeCodes subscribes to each filter at QoS 1 and returns the SUBACK
// reason codes.
func (c *client) SubscribeCodes(t *testing.T, filters ...string) []byte {
	t.Helper()
	s := &paho.Subscribe{}
	for _, f := range filters {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: f, QoS: 1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, s)
	if sa == nil {
		t.Fatalf("subscribe %q: no SUBACK: %v", filters, err)
	}
	return sa.Reasons
}

// Publish1 publishes at QoS 1 and returns the PUBACK reason code.
func (c *client) Publish1(t *testing.T, topic string, payload []byte, retain bool) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload, Retain: retain})
	if pr == nil {
		t.Fatalf("publish %q: no PUBACK: %v", topic, err)
	}
	return pr.ReasonCode
}

// ExpectOnly publishes a marker to marker through the broker's inline
// client and fails unless it is the first message c receives: anything the
// broker had delivered before would have come first.
func (e *env) ExpectOnly(t *testing.T, c *client, marker string) {
	t.Helper()
	if err := e.b.Server().Publish(marker, []byte("marker"), false, 0); err != nil {
		t.Fatalf("inline publish: %v", err)
	}
	select {
	case m := <-c.msgs:
		if m.Topic != marker || string(m.Payload) != "marker" {
			t.Fatalf("received %q (%q) before the marker, want nothing", m.Topic, m.Payload)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("marker %q not received", marker)
	}
}

// ExpectDisconnect waits up to within for the broker's DISCONNECT and
// fails the test unless it comes with code; what names the wait.
func (c *client) ExpectDisconnect(t *testing.T, code byte, within time.Duration, what string) {
	t.Helper()
	select {
	case d := <-c.disc:
		if d.ReasonCode != code {
			t.Fatalf("%s: got DISCONNECT 0x%02x, want 0x%02x", what, d.ReasonCode, code)
		}
	case <-time.After(within):
		t.Fatalf("%s: no DISCONNECT within %v", what, within)
	}
}

// Receive waits for the next message.
func (c *client) Receive(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message received")
		return nil
	}
}

// waitFor polls cond until it holds or 5 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// metric returns the value of the counter or gauge name with the given
// labels, 0 if absent.
func (e *env) metric(name string, labels ...string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// auditDetails decodes the details of an aggregated record.
type auditDetails struct {
	Count       int            `json:"count"`
	Publish     int            `json:"publish"`
	Subscribe   int            `json:"subscribe"`
	Topics      []string       `json:"topics"`
	Reasons     map[string]int `json:"reasons"`
	RemoteAddrs []string       `json:"remote_addrs"`
}

func decodeDetails(t *testing.T, r *pylon.AuditRecord) auditDetails {
	t.Helper()
	var d auditDetails
	if err := json.Unmarshal(r.Details, &d); err != nil {
		t.Fatalf("details %s: %v", r.Details, err)
	}
	return d
}

// Minimal MQTT 3.1.1 client: just CONNECT, SUBSCRIBE and their acks.

func appendString(b []byte, s string) []byte {
	return append(append(b, byte(len(s)>>8), byte(len(s))), s...)
}

func appendPacket(b []byte, header byte, body []byte) []byte {
	b = append(b, header)
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			break
		}
	}
	return append(b, body...)
}

// v3Connect sends a clean-session CONNECT and returns the CONNACK return code.
// mustConnectV3 connects a device over TLS with an MQTT 3.1.1 CONNECT of
// its own; the connection is closed at the end of the test.
func (e *env) mustConnectV3(t *testing.T, cert tls.Certificate, id string) net.Conn {
	t.Helper()
	conn, err := e.DialTLS(&cert, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if rc := v3Connect(t, conn, id); rc != 0 {
		t.Fatalf("CONNACK: got %d, want 0", rc)
	}
	return conn
}

func v3Connect(t *testing.T, conn net.Conn, clientID string) byte {
	t.Helper()
	body := appendString(nil, "MQTT")
	body = append(body, 4, 0x02, 0, 30) // level 4, clean session, keepalive 30 s
	body = appendString(body, clientID)
	if _, err := conn.Write(appendPacket(nil, 0x10, body)); err != nil {
		t.Fatalf("write CONNECT: %v", err)
	}
	ack := make([]byte, 4)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, ack); err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 {
		t.Fatalf("CONNACK: got % x", ack)
	}
	return ack[3]
}

// v3Subscribe subscribes to filter at QoS 1 and returns the SUBACK code.
func v3Subscribe(t *testing.T, conn net.Conn, id uint16, filter string) byte {
	t.Helper()
	body := []byte{byte(id >> 8), byte(id)}
	body = appendString(body, filter)
	body = append(body, 1)
	if _, err := conn.Write(appendPacket(nil, 0x82, body)); err != nil {
		t.Fatalf("write SUBSCRIBE: %v", err)
	}
	ack := make([]byte, 5)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, ack); err != nil {
		t.Fatalf("read SUBACK: %v", err)
	}
	if ack[0] != 0x90 || ack[1] != 3 || ack[2] != byte(id>>8) || ack[3] != byte(id) {
		t.Fatalf("SUBACK: got % x", ack)
	}
	return ack[4]
}
