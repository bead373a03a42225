package dashboard

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/ratelimit"
)

// ContentSecurityPolicy is sent with every response of the dashboard. It
// allows no inline script or style at all.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// Limits.
const (
	maxFormBytes = 64 << 10 // body of a POST
	maxParamLen  = 256      // a free-text query parameter
)

//go:embed static templates
var files embed.FS

// Server is the dashboard. Set its fields, then serve it; fields must not
// change afterwards. It implements http.Handler.
type Server struct {
	Devices      pylon.DeviceService
	APITokens    pylon.APITokenService
	Certs        pylon.CertificateService
	EnrollTokens pylon.EnrollmentTokenService
	Audit        pylon.AuditService
	Sessions     pylon.SessionService // drops live MQTT sessions; may be nil

	// Telemetry serves the latest values, chart history and refused
	// messages, and Events the live updates and fleet rates. Both may be
	// nil: the pages then say that telemetry is not enabled.
	Telemetry pylon.TelemetryService
	Events    pylon.EventService

	Logger *slog.Logger
	Now    func() time.Time // time.Now if nil

	// MaxStreams bounds the live event streams open at once over all
	// sessions (DefaultMaxStreams if 0); each session may have at most
	// MaxStreamsPerSession. PingInterval is the time between keep-alive
	// comments on a stream (DefaultPingInterval if 0).
	MaxStreams   int
	PingInterval time.Duration

	// StatePollInterval is how often a device page's live stream reads
	// the device's connection and lifecycle state, and sends what changed
	// (DefaultStatePollInterval if 0). The page so follows a device
	// coming online, going offline or being suspended from anywhere.
	StatePollInterval time.Duration

	// APIBase is the public URL of the server for the commands and links
	// that pages show, such as "https://pylon.example:8443". Empty means the
	// origin the browser used.
	APIBase string

	initOnce sync.Once
	log      *slog.Logger
	mux      *http.ServeMux
	pages    map[string]*template.Template
	assets   map[string]*asset // by path below static/
	sessions *sessionStore
	limiter  *ratelimit.Failures
	verify   verifyCache
	streams  *streamSet
	loads    chan struct{} // a slot per chart history being read
	meter    *rateMeter
	stop     context.CancelFunc // ends the fleet subscription and every stream
}

var _ http.Handler = (*Server)(nil)

// ServeHTTP serves the dashboard.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.initOnce.Do(s.init)
	h := w.Header()
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")

	next, pattern := s.mux.Handler(r)
	if pattern == "" {
		// No route: the mux's own handler answers 404 or 405 (with
		// Allow). Keep the status, answer with a page.
		rec := &statusRecorder{header: http.Header{}}
		next.ServeHTTP(rec, r)
		if rec.status == http.StatusMethodNotAllowed {
			h.Set("Allow", rec.header.Get("Allow"))
			s.renderError(w, r, http.StatusMethodNotAllowed, "Method "+r.Method+" is not allowed here.")
			return
		}
		s.renderError(w, r, http.StatusNotFound, "There is no such page.")
		return
	}
	s.mux.ServeHTTP(w, r) // sets the path values
}

// statusRecorder captures the status and headers of the mux's 404 and 405
// handlers.
type statusRecorder struct {
	header http.Header
	status int
}

func (rec *statusRecorder) Header() http.Header         { return rec.header }
func (rec *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (rec *statusRecorder) WriteHeader(status int)      { rec.status = status }

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// init loads the templates and assets and registers the routes. It runs
// once; the embedded files are part of the binary, so it cannot fail.
func (s *Server) init() {
	s.log = s.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.sessions = newSessionStore(MaxSessions)
	s.limiter = ratelimit.NewFailures(maxLoginFailures, loginFailureWindow, maxTrackedClients)
	s.assets = loadAssets()
	s.pages = s.loadTemplates()
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	maxStreams := s.MaxStreams
	if maxStreams <= 0 {
		maxStreams = DefaultMaxStreams
	}
	s.streams = newStreamSet(ctx, maxStreams, MaxStreamsPerSession)
	s.loads = make(chan struct{}, maxHistoryLoads)
	s.meter = newRateMeter(s.now())
	if s.Events != nil {
		s.startFleetMeter(ctx)
	}

	m := http.NewServeMux()
	m.HandleFunc("GET /static/{path...}", s.handleStatic)
	m.HandleFunc("GET /favicon.ico", s.handleFavicon)
	m.HandleFunc("GET /login", s.handleLoginForm)
	m.HandleFunc("POST /login", s.handleLogin)
	m.Handle("GET /logout", s.page(s.handleLogoutForm))
	m.Handle("POST /logout", s.action(pylon.PermRead, s.handleLogout))

	m.Handle("GET /{$}", s.page(s.handleOverview))
	m.Handle("GET /devices", s.page(s.handleDevices))
	m.Handle("GET /devices/{id}", s.page(s.handleDevice))
	m.Handle("GET /devices/{id}/decommission", s.page(s.handleDecommissionForm))
	m.Handle("GET /devices/{id}/readings.json", s.api(s.handleReadingsJSON))
	m.Handle("GET /devices/{id}/events", s.api(s.handleDeviceEvents))
	m.Handle("GET /stats.json", s.api(s.handleStatsJSON))
	m.Handle("POST /devices/{id}/suspend", s.action(pylon.PermOperate, s.handleTransition(pylon.DeviceSuspended)))
	m.Handle("POST /devices/{id}/resume", s.action(pylon.PermOperate, s.handleTransition(pylon.DeviceActive)))
	m.Handle("POST /devices/{id}/decommission", s.action(pylon.PermOperate, s.handleTransition(pylon.DeviceDecommissioned)))
	m.Handle("GET /tokens", s.page(s.handleTokens))
	m.Handle("POST /tokens", s.action(pylon.PermOperate, s.handleCreateToken))
	m.Handle("POST /tokens/{id}/revoke", s.action(pylon.PermOperate, s.handleRevokeToken))
	m.Handle("GET /audit", s.page(s.handleAudit))
	s.mux = m
}

// Close ends the open live event streams and the fleet subscription behind
// the rates of the overview. The dashboard goes on serving pages; new
// event streams are refused. Close is safe to call more than once, and
// before the first request.
func (s *Server) Close() {
	s.initOnce.Do(s.init)
	s.stop()
}

// asset is one embedded static file.
type asset struct {
	data  []byte
	ctype string
	etag  string // also the cache-busting version in asset URLs
}

// loadAssets reads every file under static/, vendor/ included when
// build-assets.sh has run.
func loadAssets() map[string]*asset {
	assets := map[string]*asset{}
	sub, _ := fs.Sub(files, "static")
	fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		data, err := fs.ReadFile(sub, p)
		if err != nil {
			return nil
		}
		sum := sha256.Sum256(data)
		ctype := mime.TypeByExtension(path.Ext(p))
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		assets[p] = &asset{data: data, ctype: ctype, etag: hex.EncodeToString(sum[:6])}
		return nil
	})
	return assets
}

// uPlotPath is the chart library, present once build-assets.sh has run.
const uPlotPath = "vendor/uPlot.iife.min.js"

// handleStatic serves an embedded asset. A URL carrying the asset's
// current version (?v=...) may be cached for good.
func (s *Server) handleStatic(w http.ResponseWriter, r *http.Request) {
	a, ok := s.assets[r.PathValue("path")]
	if !ok {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("ETag", `"`+a.etag+`"`)
	if r.URL.Query().Get("v") == a.etag {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		h.Set("Cache-Control", "no-cache")
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.data))
}

// handleFavicon answers browsers' automatic favicon request without a page.
func (s *Server) handleFavicon(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "public, max-age=86400")
	w.WriteHeader(http.StatusNoContent)
}

// assetURL returns the versioned URL of the static file name.
func (s *Server) assetURL(name string) string {
	if a, ok := s.assets[name]; ok {
		return "/static/" + name + "?v=" + a.etag
	}
	return "/static/" + name
}

// view is what every page template gets.
type view struct {
	Title    string
	Nav      string // the active nav entry
	User     *user  // nil when signed out
	Role     pylon.Role
	CSRF     string
	Notice   string // a one-line confirmation at the top
	Error    string // a one-line error at the top
	Chart    bool   // the page draws charts with uPlot
	HasChart bool   // uPlot is available
	Live     bool   // the page loads telemetry.js (live values, charts, rates)
	Data     any
}

// newView returns the view of a page for u (nil when signed out).
func (s *Server) newView(u *user, nav, title string, data any) *view {
	v := &view{Title: title, Nav: nav, User: u, Data: data}
	if u != nil {
		v.Role, v.CSRF = u.Role, u.CSRF
	}
	_, v.HasChart = s.assets[uPlotPath]
	return v
}

// loadTemplates parses each page with the shared layout.
func (s *Server) loadTemplates() map[string]*template.Template {
	base := template.Must(template.New("").Funcs(s.funcs()).ParseFS(files, "templates/layout.html", "templates/partials.html"))
	pages := map[string]*template.Template{}
	names, _ := fs.Glob(files, "templates/*.html")
	for _, name := range names {
		page := strings.TrimSuffix(path.Base(name), ".html")
		if page == "layout" || page == "partials" {
			continue
		}
		pages[page] = template.Must(template.Must(base.Clone()).ParseFS(files, name))
	}
	return pages
}

// render writes page with status. The page is rendered into memory first,
// so that a template error never sends half a page.
func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, page string, v *view) {
	t, ok := s.pages[page]
	var buf bytes.Buffer
	if !ok {
		s.log.Error("render page", "page", page, "err", "no such template")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		s.log.Error("render page", "page", page, "path", r.URL.Path, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// errorData is the data of the error page.
type errorData struct {
	Status  int
	Message string
}

// renderError writes the error page with a user-safe message.
func (s *Server) renderError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	u := userFromContext(r.Context())
	v := s.newView(u, "", http.StatusText(status), errorData{Status: status, Message: msg})
	s.render(w, r, status, "error", v)
}

// statusOf maps domain error codes to HTTP statuses.
var statusOf = map[string]int{
	pylon.EBADREQUEST:   http.StatusBadRequest,
	pylon.EUNAUTHORIZED: http.StatusUnauthorized,
	pylon.EFORBIDDEN:    http.StatusForbidden,
	pylon.ENOTFOUND:     http.StatusNotFound,
	pylon.ECONFLICT:     http.StatusConflict,
	pylon.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	pylon.EINVALID:      http.StatusUnprocessableEntity,
	pylon.ERATELIMITED:  http.StatusTooManyRequests,
	pylon.EUNAVAILABLE:  http.StatusServiceUnavailable,
}

// fail renders err: a *pylon.Error with its message and status, anything
// else logged in full and shown as "internal error".
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, ok := statusOf[pylon.ErrorCode(err)]
	if !ok {
		s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
		s.renderError(w, r, http.StatusInternalServerError, "Internal error. The details are in the server log.")
		return
	}
	s.renderError(w, r, status, pylon.ErrorMessage(err))
}

// userMessage returns the user-safe message of err, logging an internal
// error in full.
func (s *Server) userMessage(r *http.Request, err error) string {
	if _, ok := statusOf[pylon.ErrorCode(err)]; !ok {
		s.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	return pylon.ErrorMessage(err)
}

// serverURL is the public URL of the server, for commands shown on pages.
func (s *Server) serverURL(r *http.Request) string {
	if s.APIBase != "" {
		return strings.TrimSuffix(s.APIBase, "/")
	}
	return "https://" + r.Host
}

// redirect answers 303 See Other to a local path.
func redirect(w http.ResponseWriter, r *http.Request, to string) {
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// localPath returns p if it is a path on this site ("/..."), else "/".
func localPath(p string) string {
	if p == "" || p[0] != '/' || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n") {
		return "/"
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" {
		return "/"
	}
	return p
}

// sameOrigin reports whether a POST comes from a page of this site: its
// Origin header, when a real origin, must name the host the request was
// sent to, and its Sec-Fetch-Site header, when present, must say
// same-origin.
//
// Under our "Referrer-Policy: no-referrer" browsers send "Origin: null" with
// every form POST, even same-origin ones (Fetch standard, "serialize a
// request origin"); for those, Sec-Fetch-Site must vouch for the request.
// Requests without either header come from non-browser clients, which the
// CSRF token covers.
func sameOrigin(r *http.Request) bool {
	site := r.Header.Get("Sec-Fetch-Site")
	if site != "" && site != "same-origin" {
		return false
	}
	switch origin := r.Header.Get("Origin"); origin {
	case "":
		return true
	case "null":
		return site == "same-origin"
	default:
		u, err := url.Parse(origin)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return false
		}
		return strings.EqualFold(u.Host, r.Host)
	}
}

// parseForm reads a POST form of at most maxFormBytes.
func parseForm(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return pylon.Errorf(pylon.ETOOLARGE, "form larger than %d bytes", maxFormBytes)
		}
		return pylon.Errorf(pylon.EBADREQUEST, "malformed form")
	}
	return nil
}
