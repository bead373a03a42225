package httpapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/ratelimit"
)

// HTTP server limits.
const (
	DefaultAddr       = ":8443"
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 30 * time.Second
	WriteTimeout      = 60 * time.Second
	IdleTimeout       = 120 * time.Second
	MaxHeaderBytes    = 64 << 10
)

// Server is the HTTPS server of the REST API and EST. Set its fields, then
// call Handler (for httptest) or Start; fields must not change afterwards.
type Server struct {
	Addr        string          // listen address, e.g. ":8443", "127.0.0.1:0"; DefaultAddr if empty
	Certificate tls.Certificate // server certificate chain and key
	ClientCAs   *x509.CertPool  // Pylon CA: optional client certificates, for simplereenroll

	Devices      pylon.DeviceService
	APITokens    pylon.APITokenService
	Certs        pylon.CertificateService
	EnrollTokens pylon.EnrollmentTokenService
	Audit        pylon.AuditService
	Provisioning pylon.ProvisioningService
	Sessions     pylon.SessionService   // drops live MQTT sessions; may be nil
	Telemetry    pylon.TelemetryService // readings and quarantine; may be nil (503)
	Events       pylon.EventService     // live event streams; may be nil (503)
	Gatherer     prometheus.Gatherer    // served at /metrics; may be nil
	UI           http.Handler           // served at "/" and every non-API path when set

	Logger   *slog.Logger
	Now      func() time.Time // time.Now if nil
	MQTTAddr string           // public broker address for devices (GET /api/v1/info); may be ""

	// MQTTIntegrationAddr is the broker's TLS address for API-token
	// integrations (GET /api/v1/info); "" if there is none.
	MQTTIntegrationAddr string

	MaxStreams   int           // concurrent event streams; DefaultMaxStreams if 0
	PingInterval time.Duration // between ": ping" comments of event streams; DefaultPingInterval if 0

	ready    atomic.Bool
	inflight atomic.Int64 // requests being handled

	initOnce sync.Once
	handler  http.Handler
	mux      *http.ServeMux
	limiter  *ratelimit.Failures
	streams  *streamState
	log      *slog.Logger

	mu  sync.Mutex
	ln  net.Listener
	srv *http.Server
	// fresh holds accepted connections that have not yet begun a request.
	// http.Server.Shutdown waits five seconds before closing such a
	// connection (a client's transport often dials one it never uses), so
	// Shutdown closes them itself.
	fresh map[net.Conn]struct{}
}

// Handler returns the server's complete handler, middleware included. It
// can be served by httptest.NewTLSServer as well as by Start.
func (s *Server) Handler() http.Handler {
	s.initOnce.Do(s.init)
	return s.handler
}

// SetReady sets whether /healthz reports the server ready (200) or not
// (503). A new Server is not ready.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Start listens on Addr with TLS and serves in the background. It returns
// listen errors (such as an address in use); ctx bounds only the listening.
// Stop the server with Shutdown.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("httpapi: server already started")
	}
	if err := s.validate(); err != nil {
		return err
	}
	h := s.Handler()
	addr := s.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         s.tlsConfig(),
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ConnState:         s.trackConn,
	}
	s.ln, s.srv, s.fresh = ln, srv, make(map[net.Conn]struct{})
	go func() {
		// ServeTLS takes the certificate from TLSConfig and adds HTTP/2.
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("https server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	s.log.Info("https server listening", "addr", ln.Addr().String())
	return nil
}

// validate checks that the server has what it needs to start.
func (s *Server) validate() error {
	switch {
	case len(s.Certificate.Certificate) == 0 || s.Certificate.PrivateKey == nil:
		return errors.New("httpapi: no server certificate")
	case s.Devices == nil, s.APITokens == nil, s.Certs == nil, s.EnrollTokens == nil, s.Audit == nil, s.Provisioning == nil:
		return errors.New("httpapi: a required service is not set")
	}
	return nil
}

// tlsConfig returns the server's TLS configuration: TLS 1.2 at least (1.3
// is preferred by negotiation), and client certificates verified against
// ClientCAs when a client offers one. Without ClientCAs no client
// certificate is asked for, rather than trusting the system roots.
func (s *Server) tlsConfig() *tls.Config {
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{s.Certificate},
	}
	if s.ClientCAs != nil {
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		cfg.ClientCAs = s.ClientCAs
	}
	return cfg
}

// ListenAddr returns the address Start listens on (with the real port when
// Addr asked for port 0), or nil before Start.
func (s *Server) ListenAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown ends open event streams, stops accepting connections and waits,
// up to ctx's deadline, for in-flight requests to finish. Event streams end
// even if the handler is served by something other than Start; otherwise
// Shutdown is a no-op before Start.
func (s *Server) Shutdown(ctx context.Context) error {
	s.SetReady(false)
	s.initOnce.Do(s.init)
	s.streams.cancel()
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	// Shutdown has closed the listener by the time the first tick passes.
	// Connections that never sent a request hold no work and are closed
	// rather than waited for; once no request is being handled, the
	// remaining connections (HTTP/2 ones may linger after their last
	// stream) are closed too: in-flight work is what Shutdown waits for.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-tick.C:
			s.closeFresh()
			if s.inflight.Load() == 0 {
				srv.Close()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("shut down https server: %w", err)
	}
	return nil
}

// trackConn records which connections have not yet begun a request.
func (s *Server) trackConn(c net.Conn, state http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if state == http.StateNew {
		s.fresh[c] = struct{}{}
	} else {
		delete(s.fresh, c)
	}
}

// closeFresh closes every connection that has not yet begun a request.
func (s *Server) closeFresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.fresh {
		c.Close()
		delete(s.fresh, c)
	}
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// init builds the handler. It runs once.
func (s *Server) init() {
	s.log = s.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.limiter = ratelimit.NewFailures(maxAuthFailures, authFailureWindow, maxTrackedClients)
	maxStreams := s.MaxStreams
	if maxStreams <= 0 {
		maxStreams = DefaultMaxStreams
	}
	s.streams = newStreamState(maxStreams)
	s.mux = http.NewServeMux()
	s.routes()
	inner := s.middleware(http.HandlerFunc(s.route))
	s.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
		inner.ServeHTTP(w, r)
	})
}

// routes registers every API and EST endpoint.
func (s *Server) routes() {
	var (
		read    = func(h http.HandlerFunc) http.Handler { return s.authorize(pylon.PermRead, h) }
		operate = func(h http.HandlerFunc) http.Handler { return s.authorize(pylon.PermOperate, h) }
		admin   = func(h http.HandlerFunc) http.Handler { return s.authorize(pylon.PermAdmin, h) }
		m       = s.mux
	)
	// Unauthenticated.
	m.HandleFunc("GET /healthz", s.handleHealth)
	m.HandleFunc("GET /api/v1/info", s.handleInfo)
	m.HandleFunc("GET /api/v1/ca/cert", s.handleCACert)
	m.HandleFunc("GET /api/v1/ca/crl", s.handleCRL)

	// Admin.
	m.Handle("GET /metrics", admin(s.handleMetrics()))
	m.Handle("POST /api/v1/api-tokens", admin(s.handleCreateAPIToken))
	m.Handle("GET /api/v1/api-tokens", admin(s.handleListAPITokens))
	m.Handle("DELETE /api/v1/api-tokens/{id}", admin(s.handleRevokeAPIToken))

	// Devices.
	m.Handle("POST /api/v1/devices", operate(s.handleCreateDevice))
	m.Handle("GET /api/v1/devices", read(s.handleListDevices))
	m.Handle("GET /api/v1/devices/{id}", read(s.handleGetDevice))
	m.Handle("PATCH /api/v1/devices/{id}", operate(s.handleUpdateDevice))
	m.Handle("DELETE /api/v1/devices/{id}", operate(s.handleDeleteDevice))
	m.Handle("POST /api/v1/devices/{id}/suspend", operate(s.handleTransition(pylon.DeviceSuspended, "", "suspended")))
	m.Handle("POST /api/v1/devices/{id}/resume", operate(s.handleTransition(pylon.DeviceActive, pylon.DeviceSuspended, "")))
	m.Handle("POST /api/v1/devices/{id}/decommission", operate(s.handleTransition(pylon.DeviceDecommissioned, "", "decommissioned")))
	m.Handle("GET /api/v1/devices/{id}/connections", read(s.handleDeviceConnections))
	m.Handle("GET /api/v1/devices/{id}/certificates", read(s.handleDeviceCertificates))
	m.Handle("GET /api/v1/stats", read(s.handleStats))

	// Enrollment tokens and certificates.
	m.Handle("POST /api/v1/enrollment-tokens", operate(s.handleCreateEnrollmentToken))
	m.Handle("GET /api/v1/enrollment-tokens", read(s.handleListEnrollmentTokens))
	m.Handle("GET /api/v1/enrollment-tokens/{id}", read(s.handleGetEnrollmentToken))
	m.Handle("DELETE /api/v1/enrollment-tokens/{id}", operate(s.handleRevokeEnrollmentToken))
	m.Handle("GET /api/v1/certificates", read(s.handleListCertificates))
	m.Handle("GET /api/v1/certificates/{serial}", read(s.handleGetCertificate))
	m.Handle("POST /api/v1/certificates/{serial}/revoke", operate(s.handleRevokeCertificate))

	// Telemetry and live events.
	m.Handle("GET /api/v1/devices/{id}/readings", read(s.handleReadings))
	m.Handle("GET /api/v1/devices/{id}/readings/latest", read(s.handleLatestReadings))
	m.Handle("GET /api/v1/devices/{id}/quarantine", read(s.handleQuarantine(true)))
	m.Handle("GET /api/v1/quarantine", read(s.handleQuarantine(false)))
	m.Handle("GET /api/v1/devices/{id}/events", read(s.handleDeviceEvents))
	m.Handle("GET /api/v1/events", read(s.handleFleetEvents))

	// Audit.
	m.Handle("GET /api/v1/audit", read(s.handleListAudit))
	m.Handle("GET /api/v1/audit/verify", read(s.handleVerifyAudit))

	// EST (RFC 7030 §3.2.2); authenticated inside the handlers.
	m.HandleFunc("GET /.well-known/est/cacerts", s.handleESTCACerts)
	m.HandleFunc("POST /.well-known/est/simpleenroll", s.handleESTEnroll)
	m.HandleFunc("POST /.well-known/est/simplereenroll", s.handleESTReenroll)
}

// isAPIPath reports whether path belongs to the API rather than to the UI.
func isAPIPath(path string) bool {
	return path == "/healthz" || path == "/metrics" || path == "/api" || path == "/.well-known" ||
		strings.HasPrefix(path, "/api/") || strings.HasPrefix(path, "/.well-known/")
}

// route sends API paths to the mux, with JSON answers for unknown paths
// and methods, and everything else to the UI.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	if !isAPIPath(r.URL.Path) && s.UI != nil {
		s.UI.ServeHTTP(w, r)
		return
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")

	if next, pattern := s.mux.Handler(r); pattern == "" {
		// The mux has no route: next answers 404 or, with an Allow
		// header, 405. Keep its status and Allow, answer in JSON.
		rec := &headerRecorder{header: http.Header{}}
		next.ServeHTTP(rec, r)
		if rec.status == http.StatusMethodNotAllowed {
			if allow := rec.header.Get("Allow"); allow != "" {
				h.Set("Allow", allow)
			}
			writeError(w, http.StatusMethodNotAllowed, codeMethodNotAllowed, "method "+r.Method+" not allowed here")
			return
		}
		Error(w, r, pylon.Errorf(pylon.ENOTFOUND, "no such endpoint"))
		return
	}
	s.mux.ServeHTTP(w, r)
}

// headerRecorder captures the status and headers of the mux's own 404 and
// 405 handlers.
type headerRecorder struct {
	header http.Header
	status int
}

func (h *headerRecorder) Header() http.Header         { return h.header }
func (h *headerRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (h *headerRecorder) WriteHeader(status int)      { h.status = status }

// middleware wraps next with security headers, panic recovery and request
// logging.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Strict-Transport-Security", "max-age=63072000")
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				sw.reportInternal(fmt.Errorf("panic: %v", v))
				if sw.status == 0 {
					writeError(sw, http.StatusInternalServerError, pylon.EINTERNAL, "internal error")
				}
			}
			if sw.err != nil {
				s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "status", sw.status, "err", sw.err)
			}
			s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status,
				"duration", time.Since(start), "remote", r.RemoteAddr)
		}()
		next.ServeHTTP(sw, r)
	})
}

// statusWriter records the response status and the internal error a
// handler reported through Error.
type statusWriter struct {
	http.ResponseWriter
	status int
	err    error
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) reportInternal(err error) {
	w.err = errors.Join(w.err, err)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// handleHealth answers 200 once the server is ready and 503 before.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if !s.ready.Load() {
		Error(w, r, pylon.Errorf(pylon.EUNAVAILABLE, "not ready"))
		return
	}
	writeJSON(w, http.StatusOK, Health{Status: "ok"})
}

// Health is the body of GET /healthz.
type Health struct {
	Status string `json:"status"`
}

// Info is the body of GET /api/v1/info: what a device needs to know.
type Info struct {
	Version  string `json:"version"`
	MQTTAddr string `json:"mqtt_addr"` // a leading ':' means the host of the API URL

	// MQTTIntegrationAddr is where integrations connect with an API token
	// (MQTT over TLS, no client certificate), if the server has it.
	MQTTIntegrationAddr string `json:"mqtt_integration_addr,omitempty"`
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Info{Version: pylon.Version, MQTTAddr: s.MQTTAddr, MQTTIntegrationAddr: s.MQTTIntegrationAddr})
}

// handleMetrics serves the Gatherer's metrics, or 404 without one.
func (s *Server) handleMetrics() http.HandlerFunc {
	if s.Gatherer == nil {
		return func(w http.ResponseWriter, r *http.Request) {
			Error(w, r, pylon.Errorf(pylon.ENOTFOUND, "metrics are not enabled"))
		}
	}
	h := promhttp.HandlerFor(s.Gatherer, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
	return h.ServeHTTP
}
