package dashboard_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/dashboard"
	"github.com/pylonhq/pylon/mock"
	"github.com/pylonhq/pylon/sqlite"
)

// Env is a dashboard over a real in-memory store, served over TLS.
type Env struct {
	t      testing.TB
	DB     *sqlite.DB
	Server *dashboard.Server
	TS     *httptest.Server

	Devices      *sqlite.DeviceService
	APITokens    *sqlite.APITokenService
	Certs        *sqlite.CertificateService
	EnrollTokens *sqlite.EnrollmentTokenService
	Audit        *sqlite.AuditService
	Enroll       *sqlite.EnrollmentStore

	mu          sync.Mutex
	now         time.Time
	disconnects []string
}

// MustNewEnv returns a running dashboard whose clock starts at the real
// time and moves only with Advance. Each opt may set fields of e.Server
// before it serves.
func MustNewEnv(t testing.TB, opts ...func(e *Env)) *Env {
	t.Helper()
	db := sqlite.NewDB(sqlite.MemoryDSN, nil)
	if err := db.Open(context.Background()); err != nil {
		t.Fatalf("open db: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	e := &Env{
		t: t, DB: db, now: time.Now(),
		Devices:      sqlite.NewDeviceService(db),
		APITokens:    sqlite.NewAPITokenService(db),
		Certs:        sqlite.NewCertificateService(db),
		EnrollTokens: sqlite.NewEnrollmentTokenService(db),
		Audit:        sqlite.NewAuditService(db),
		Enroll:       sqlite.NewEnrollmentStore(db),
	}
	e.Server = &dashboard.Server{
		Devices: e.Devices, APITokens: e.APITokens, Certs: e.Certs, EnrollTokens: e.EnrollTokens, Audit: e.Audit,
		Sessions: &mock.SessionService{DisconnectDeviceFn: func(ctx context.Context, id, reason string) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.disconnects = append(e.disconnects, id+":"+reason)
			return nil
		}},
		Now: e.Now,
	}
	for _, opt := range opts {
		opt(e)
	}
	e.TS = httptest.NewTLSServer(e.Server)
	t.Cleanup(e.TS.Close)
	t.Cleanup(e.Server.Close) // before TS.Close, which waits for open event streams
	return e
}

// Now is the dashboard's clock.
func (e *Env) Now() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

// Advance moves the dashboard's clock.
func (e *Env) Advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

// Disconnects returns the DisconnectDevice calls so far, as "id:reason".
func (e *Env) Disconnects() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.disconnects...)
}

// MustToken creates an API token with role and returns its secret and id.
func (e *Env) MustToken(role pylon.Role) (secret, id string) {
	e.t.Helper()
	secret, id, hash := pylon.NewSecret(pylon.APITokenPrefix)
	if err := e.APITokens.CreateAPIToken(context.Background(), &pylon.APIToken{ID: id, Name: "test " + string(role) + " " + id[:4], Role: role}, hash); err != nil {
		e.t.Fatalf("create api token: %v", err)
	}
	return secret, id
}

// MustDevice creates a device.
func (e *Env) MustDevice(name string, labels map[string]string) *pylon.Device {
	e.t.Helper()
	d := &pylon.Device{Name: name, Labels: labels}
	if err := e.Devices.CreateDevice(context.Background(), d); err != nil {
		e.t.Fatalf("create device %q: %v", name, err)
	}
	return d
}

// Browser is an HTTP client with a cookie jar that does not follow
// redirects.
type Browser struct {
	t      testing.TB
	e      *Env
	Client *http.Client
}

// NewBrowser returns a browser without a session.
func (e *Env) NewBrowser() *Browser {
	jar, _ := cookiejar.New(nil)
	c := e.TS.Client()
	return &Browser{t: e.t, e: e, Client: &http.Client{
		Transport:     c.Transport,
		Jar:           jar,
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// MustSignIn returns a browser signed in with token.
func (e *Env) MustSignIn(token string) *Browser {
	e.t.Helper()
	b := e.NewBrowser()
	if resp, body := b.SignIn(token, "/"); resp.StatusCode != http.StatusSeeOther {
		e.t.Fatalf("sign in: got status %d, want 303: %s", resp.StatusCode, body)
	}
	return b
}

// Do sends a request and reads the answer.
func (b *Browser) Do(req *http.Request) (*http.Response, string) {
	b.t.Helper()
	resp, err := b.Client.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// Get fetches path.
func (b *Browser) Get(path string) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest("GET", b.e.TS.URL+path, nil)
	return b.Do(req)
}

// Post sends form to path, with extra headers as "Name: value".
func (b *Browser) Post(path string, form url.Values, headers ...string) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.e.TS.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	return b.Do(req)
}

// SignIn loads the sign-in form and posts token.
func (b *Browser) SignIn(token, next string) (*http.Response, string) {
	b.t.Helper()
	resp, body := b.Get("/login")
	if resp.StatusCode != http.StatusOK {
		b.t.Fatalf("GET /login: got status %d, want 200", resp.StatusCode)
	}
	return b.Post("/login", url.Values{"token": {token}, "csrf": {CSRF(b.t, body)}, "next": {next}})
}

// MustCSRF returns the CSRF token of the page at path.
func (b *Browser) MustCSRF(path string) string {
	b.t.Helper()
	resp, body := b.Get(path)
	if resp.StatusCode != http.StatusOK {
		b.t.Fatalf("GET %s: got status %d, want 200", path, resp.StatusCode)
	}
	return CSRF(b.t, body)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// CSRF returns the first CSRF form value in a page.
func CSRF(t testing.TB, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no csrf field in page: %.300s", body)
	}
	return m[1]
}
