package httpapi_test

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
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
	"github.com/pylonhq/pylon/mock"
)

// Identifiers used throughout the tests.
const (
	devID    = "aaaaaaaaaaaaaaaa"
	tokID    = "bbbbbbbbbbbbbbbb"
	serial   = "1a2b3c"
	remoteIP = "192.0.2.1"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// fixture is a Server over permissive mock services that record what they
// were called with.
type fixture struct {
	t   *testing.T
	srv *httpapi.Server

	devices  *mock.DeviceService
	apiToks  *mock.APITokenService
	certs    *mock.CertificateService
	enrolls  *mock.EnrollmentTokenService
	audit    *mock.AuditService
	prov     *mock.ProvisioningService
	sessions *mock.SessionService

	ca     *testCA
	logBuf *syncBuffer

	mu          sync.Mutex
	now         time.Time
	calls       []string // service methods called, in order
	audits      []*pylon.AuditRecord
	principals  []pylon.Principal // principal of every service call
	disconnects []string          // "deviceID reason"
	secrets     map[pylon.Role]string
	hashes      map[string][]byte // API token id → hash
	roles       map[string]pylon.Role
	clients     []*httpapi.Client // to close idle connections before Shutdown
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		t:       t,
		now:     t0,
		secrets: map[pylon.Role]string{},
		hashes:  map[string][]byte{},
		roles:   map[string]pylon.Role{},
		logBuf:  &syncBuffer{},
		ca:      newTestCA(t),
	}
	for _, role := range []pylon.Role{pylon.RoleAdmin, pylon.RoleOperator, pylon.RoleViewer} {
		secret, id, hash := pylon.NewSecret(pylon.APITokenPrefix)
		f.secrets[role], f.hashes[id], f.roles[id] = secret, hash, role
	}
	f.devices = &mock.DeviceService{
		FindDeviceByIDFn: func(ctx context.Context, id string) (*pylon.Device, error) {
			f.record(ctx, "FindDeviceByID")
			return sampleDevice(id), nil
		},
		FindDevicesFn: func(ctx context.Context, filter pylon.DeviceFilter) ([]*pylon.Device, string, error) {
			f.record(ctx, "FindDevices")
			return []*pylon.Device{sampleDevice(devID)}, "", nil
		},
		CreateDeviceFn: func(ctx context.Context, d *pylon.Device) error {
			f.record(ctx, "CreateDevice")
			d.ID, d.State, d.CreatedAt, d.UpdatedAt = devID, pylon.DeviceRegistered, t0, t0
			return nil
		},
		UpdateDeviceFn: func(ctx context.Context, id string, upd pylon.DeviceUpdate) (*pylon.Device, error) {
			f.record(ctx, "UpdateDevice")
			return sampleDevice(id), nil
		},
		DeleteDeviceFn: func(ctx context.Context, id string) error {
			f.record(ctx, "DeleteDevice")
			return nil
		},
		TransitionDeviceFn: func(ctx context.Context, id string, next pylon.DeviceState) (*pylon.Device, error) {
			f.record(ctx, "TransitionDevice")
			d := sampleDevice(id)
			d.State = next
			return d, nil
		},
		FindConnectionsFn: func(ctx context.Context, deviceID string, limit int) ([]*pylon.ConnectionEvent, error) {
			f.record(ctx, "FindConnections")
			return []*pylon.ConnectionEvent{{DeviceID: deviceID, Online: true, At: t0}}, nil
		},
		DeviceStatsFn: func(ctx context.Context) (pylon.DeviceStats, error) {
			f.record(ctx, "DeviceStats")
			return pylon.DeviceStats{Total: 3, Online: 1, ByState: map[pylon.DeviceState]int{pylon.DeviceActive: 3}}, nil
		},
	}
	f.apiToks = &mock.APITokenService{
		AuthenticateAPITokenFn: func(ctx context.Context, id string, hash []byte) (*pylon.APIToken, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			want, ok := f.hashes[id]
			if !ok || subtle.ConstantTimeCompare(want, hash) != 1 {
				return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "invalid credentials")
			}
			return &pylon.APIToken{ID: id, Name: "t", Role: f.roles[id]}, nil
		},
		CreateAPITokenFn: func(ctx context.Context, t *pylon.APIToken, hash []byte) error {
			f.record(ctx, "CreateAPIToken")
			return nil
		},
		FindAPITokensFn: func(ctx context.Context) ([]*pylon.APIToken, error) {
			f.record(ctx, "FindAPITokens")
			return []*pylon.APIToken{{ID: tokID, Name: "ci", Role: pylon.RoleViewer, CreatedAt: t0}}, nil
		},
		RevokeAPITokenFn: func(ctx context.Context, id string) error {
			f.record(ctx, "RevokeAPIToken")
			return nil
		},
	}
	f.certs = &mock.CertificateService{
		FindCertificateBySerialFn: func(ctx context.Context, s string) (*pylon.Certificate, error) {
			f.record(ctx, "FindCertificateBySerial")
			return f.sampleCert(s), nil
		},
		FindCertificatesFn: func(ctx context.Context, filter pylon.CertificateFilter) ([]*pylon.Certificate, error) {
			f.record(ctx, "FindCertificates")
			return []*pylon.Certificate{f.sampleCert(serial)}, nil
		},
		RevokeCertificateFn: func(ctx context.Context, s, reason string) (*pylon.Certificate, error) {
			f.record(ctx, "RevokeCertificate")
			c := f.sampleCert(s)
			c.Status, c.Reason, c.RevokedAt = pylon.CertRevoked, reason, &t0
			return c, nil
		},
	}
	f.enrolls = &mock.EnrollmentTokenService{
		CreateEnrollmentTokenFn: func(ctx context.Context, t *pylon.EnrollmentToken, hash []byte) error {
			f.record(ctx, "CreateEnrollmentToken")
			return nil
		},
		FindEnrollmentTokensFn: func(ctx context.Context, live bool) ([]*pylon.EnrollmentToken, error) {
			f.record(ctx, "FindEnrollmentTokens")
			return []*pylon.EnrollmentToken{{ID: tokID, Uses: 1, ExpiresAt: t0}}, nil
		},
		FindEnrollmentTokenByIDFn: func(ctx context.Context, id string) (*pylon.EnrollmentToken, error) {
			f.record(ctx, "FindEnrollmentTokenByID")
			return &pylon.EnrollmentToken{ID: id, Uses: 1, ExpiresAt: t0}, nil
		},
		RevokeEnrollmentTokenFn: func(ctx context.Context, id string) error {
			f.record(ctx, "RevokeEnrollmentToken")
			return nil
		},
	}
	f.audit = &mock.AuditService{
		AppendAuditFn: func(ctx context.Context, r *pylon.AuditRecord) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.audits = append(f.audits, r)
			return nil
		},
		FindAuditRecordsFn: func(ctx context.Context, filter pylon.AuditFilter) ([]*pylon.AuditRecord, error) {
			f.record(ctx, "FindAuditRecords")
			return []*pylon.AuditRecord{{Seq: 1, Time: t0, Actor: "system", Action: pylon.ActionDeviceCreate, Object: "device:" + devID}}, nil
		},
		VerifyAuditFn: func(ctx context.Context) (pylon.AuditVerification, error) {
			f.record(ctx, "VerifyAudit")
			return pylon.AuditVerification{OK: true, Records: 1}, nil
		},
	}
	f.prov = &mock.ProvisioningService{
		CACertificatesFn: func() []*x509.Certificate { return []*x509.Certificate{f.ca.cert} },
		EnrollFn: func(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error) {
			f.record(ctx, "Enroll")
			return f.ca.issue(t, devID, req.CSR.PublicKey), nil
		},
		ReenrollFn: func(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error) {
			f.record(ctx, "Reenroll")
			return f.ca.issue(t, req.Peer.Subject.CommonName, req.CSR.PublicKey), nil
		},
		CRLFn: func(ctx context.Context) ([]byte, error) {
			f.record(ctx, "CRL")
			return []byte{0x30, 0x03, 0x02, 0x01, 0x01}, nil
		},
	}
	f.sessions = &mock.SessionService{
		DisconnectDeviceFn: func(ctx context.Context, deviceID, reason string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.disconnects = append(f.disconnects, deviceID+" "+reason)
			return nil
		},
	}
	f.srv = &httpapi.Server{
		Addr:                "127.0.0.1:0",
		Certificate:         f.ca.serverCert(t),
		ClientCAs:           f.ca.pool(),
		Devices:             f.devices,
		APITokens:           f.apiToks,
		Certs:               f.certs,
		EnrollTokens:        f.enrolls,
		Audit:               f.audit,
		Provisioning:        f.prov,
		Sessions:            f.sessions,
		Gatherer:            prometheus.NewRegistry(),
		Logger:              slog.New(slog.NewTextHandler(f.logBuf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:                 f.clock,
		MQTTAddr:            ":8883",
		MQTTIntegrationAddr: ":8884",
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", f.logBuf.String())
		}
	})
	return f
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

func (f *fixture) record(ctx context.Context, call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	f.principals = append(f.principals, pylon.PrincipalFromContext(ctx))
}

func (f *fixture) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fixture) auditList() []*pylon.AuditRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pylon.AuditRecord(nil), f.audits...)
}

func (f *fixture) disconnectList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.disconnects...)
}

func (f *fixture) lastPrincipal() pylon.Principal {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.principals) == 0 {
		return pylon.Principal{}
	}
	return f.principals[len(f.principals)-1]
}

func sampleDevice(id string) *pylon.Device {
	return &pylon.Device{ID: id, Name: "sensor-1", Labels: map[string]string{"site": "lab"}, State: pylon.DeviceActive, CreatedAt: t0, UpdatedAt: t0}
}

func (f *fixture) sampleCert(s string) *pylon.Certificate {
	return &pylon.Certificate{Serial: s, DeviceID: devID, NotBefore: t0, NotAfter: t0.Add(time.Hour), Status: pylon.CertValid,
		KeyType: "ECDSA-P256", CreatedAt: t0, DER: f.ca.cert.Raw}
}

// reqOpt changes a test request.
type reqOpt func(*http.Request)

// as authenticates the request with the fixture's API token of role.
func (f *fixture) as(role pylon.Role) reqOpt {
	return withHeader("Authorization", "Bearer "+f.secrets[role])
}

func withHeader(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }

func fromAddr(addr string) reqOpt { return func(r *http.Request) { r.RemoteAddr = addr } }

// serve runs one request through the server's handler.
func (f *fixture) serve(method, target, body string, opts ...reqOpt) *httptest.ResponseRecorder {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, target, rd)
	r.RemoteAddr = remoteIP + ":40000"
	for _, o := range opts {
		o(r)
	}
	w := httptest.NewRecorder()
	f.srv.Handler().ServeHTTP(w, r)
	return w
}

// errorBody decodes a JSON error response.
func errorBody(t *testing.T, w *httptest.ResponseRecorder) httpapi.ErrorBody {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("got Content-Type %q, want application/json", ct)
	}
	var e httpapi.ErrorResponse
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("error body %q: %v", w.Body.String(), err)
	}
	return e.Error
}

// checkError checks a response's status and error code.
func checkError(t *testing.T, w *httptest.ResponseRecorder, wantStatus int, wantCode string) httpapi.ErrorBody {
	t.Helper()
	if w.Code != wantStatus {
		t.Errorf("got status %d, want %d (body %s)", w.Code, wantStatus, w.Body.String())
	}
	e := errorBody(t, w)
	if e.Code != wantCode {
		t.Errorf("got code %q, want %q (message %q)", e.Code, wantCode, e.Message)
	}
	return e
}

// decode decodes a JSON response body into v, checking the status.
func decode(t *testing.T, w *httptest.ResponseRecorder, wantStatus int, v any) {
	t.Helper()
	if w.Code != wantStatus {
		t.Fatalf("got status %d, want %d (body %s)", w.Code, wantStatus, w.Body.String())
	}
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatalf("decode %q: %v", w.Body.String(), err)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testCA is a throw-away certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Test Root CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func (ca *testCA) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// sign issues a certificate for pub from tmpl.
func (ca *testCA) sign(t *testing.T, tmpl *x509.Certificate, pub any) *x509.Certificate {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// issue signs a device client certificate.
func (ca *testCA) issue(t *testing.T, deviceID string, pub any) *x509.Certificate {
	return ca.sign(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: deviceID, Organization: []string{"Pylon devices"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, pub)
}

// serverCert returns a TLS server certificate for 127.0.0.1.
func (ca *testCA) serverCert(t *testing.T) tls.Certificate {
	key := newKey(t)
	cert := ca.sign(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, &key.PublicKey)
	return tls.Certificate{Certificate: [][]byte{cert.Raw, ca.cert.Raw}, PrivateKey: key, Leaf: cert}
}

// clientCert returns a TLS client certificate for a device.
func (ca *testCA) clientCert(t *testing.T, deviceID string) tls.Certificate {
	key := newKey(t)
	cert := ca.issue(t, deviceID, &key.PublicKey)
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// newCSR returns the DER of a P-256 certificate request for cn.
func newCSR(t *testing.T, cn string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// start starts the fixture's server on 127.0.0.1:0 and returns its URL.
func (f *fixture) start() string {
	f.t.Helper()
	if err := f.srv.Start(context.Background()); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		f.closeIdle()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.srv.Shutdown(ctx); err != nil {
			f.t.Errorf("shutdown: %v", err)
		}
	})
	f.srv.SetReady(true)
	return "https://" + f.srv.ListenAddr().String()
}

// client returns a Client of the started server with role's token.
func (f *fixture) client(url string, role pylon.Role) *httpapi.Client {
	f.t.Helper()
	c, err := httpapi.NewClient(url, f.secrets[role], f.ca.pem())
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.clients = append(f.clients, c)
	f.mu.Unlock()
	return c
}

// closeIdle closes the idle connections of the fixture's clients, so that
// Shutdown need not wait for HTTP/2 connections to go away.
func (f *fixture) closeIdle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.clients {
		c.HTTP.CloseIdleConnections()
	}
}
