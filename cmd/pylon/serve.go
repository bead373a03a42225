package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/broker"
	"github.com/pylonhq/pylon/dashboard"
	"github.com/pylonhq/pylon/httpapi"
	"github.com/pylonhq/pylon/ingest"
	"github.com/pylonhq/pylon/inmem"
	"github.com/pylonhq/pylon/pki"
	"github.com/pylonhq/pylon/sqlite"
)

// Main is the running platform: `pylon serve`. Tests build one with
// DefaultConfig, call Run and then Close.
type Main struct {
	Config Config
	Logger *slog.Logger
	Stdout io.Writer // where the first admin token is announced

	DB        *sqlite.DB
	CA        *pki.CA
	Broker    *broker.Broker
	HTTP      *httpapi.Server
	Ingester  *ingest.Ingester
	Telemetry *sqlite.TelemetryService
	Events    *inmem.EventService

	debug *http.Server

	// stopBackground ends the background jobs (telemetry retention,
	// expired certificates); background waits for them.
	stopBackground context.CancelFunc
	background     sync.WaitGroup

	// AdminToken is the admin API token created on first start ("" on
	// later starts).
	AdminToken string
}

// NewMain returns a Main with the default configuration.
func NewMain() *Main {
	return &Main{Config: DefaultConfig(), Stdout: os.Stdout}
}

// Run starts everything and returns once the platform is ready. Call Close
// to stop it.
func (m *Main) Run(ctx context.Context) (err error) {
	cfg := &m.Config
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if m.Logger == nil {
		m.Logger = newLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	}
	if m.Stdout == nil {
		m.Stdout = io.Discard
	}
	log := m.Logger
	defer func() {
		if err != nil {
			m.Close()
		}
	}()

	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	if err := os.Chmod(cfg.Data, 0o700); err != nil {
		return fmt.Errorf("restrict data directory: %w", err)
	}

	now := time.Now()
	ca, created, err := pki.LoadOrCreateCA(cfg.Data, now)
	if err != nil {
		return fmt.Errorf("certificate authority: %w", err)
	}
	m.CA = ca
	if created {
		log.Info("created certificate authority", "cert", filepath.Join(cfg.Data, "ca.crt"), "subject", ca.Cert.Subject.CommonName)
	}
	serverCert, err := ca.ServerCertificate(cfg.Data, serverHosts(cfg.Hostnames), now)
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}

	m.DB = sqlite.NewDB(filepath.Join(cfg.Data, "pylon.db"), log.With("component", "sqlite"))
	if err := m.DB.Open(ctx); err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	var (
		devicesStore = sqlite.NewDeviceService(m.DB)
		apiTokens    = sqlite.NewAPITokenService(m.DB)
		certs        = sqlite.NewCertificateService(m.DB)
		enrollTokens = sqlite.NewEnrollmentTokenService(m.DB)
		audit        = sqlite.NewAuditService(m.DB)
	)
	if err := m.bootstrapAdmin(ctx, apiTokens); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(newGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Telemetry: the ingester stores what the broker's telemetry hook hands
	// it, and feeds the live events of the API and dashboard.
	m.Telemetry = sqlite.NewTelemetryService(m.DB)
	m.Events = inmem.NewEventService()
	// Lifecycle changes made through the API or the dashboard go to the
	// live feed too.
	devices := &stateEvents{DeviceService: devicesStore, events: m.Events, now: time.Now}
	m.Ingester = ingest.New(ingest.Options{
		Telemetry:  m.Telemetry,
		Events:     m.Events,
		Logger:     log.With("component", "ingest"),
		Registerer: reg,
	})
	m.Ingester.Start()
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.stopBackground = cancel
	if keep := time.Duration(cfg.Retention); keep > 0 {
		m.background.Go(func() { m.Telemetry.RunRetention(bctx, keep, time.Hour) })
	}
	m.background.Go(func() { pruneCertificates(bctx, certs, log, time.Hour) })

	m.Broker, err = broker.New(broker.Options{
		Addr:            cfg.MQTTAddr,
		Certificate:     serverCert,
		ClientCAs:       ca.CertPool(),
		PlainAddr:       cfg.MQTTPlainAddr,
		IntegrationAddr: cfg.MQTTIntegAddr,
		Devices:         devices,
		Certs:           certs,
		APITokens:       apiTokens,
		Audit:           audit,
		Registerer:      reg,
		Logger:          log.With("component", "broker"),
		Ingest:          m.Ingester,
		Events:          m.Events,
	})
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if err := m.Broker.Start(ctx); err != nil {
		return fmt.Errorf("start broker: %w", err)
	}

	m.HTTP = &httpapi.Server{
		Addr:         cfg.APIAddr,
		Certificate:  serverCert,
		ClientCAs:    ca.CertPool(),
		Devices:      devices,
		APITokens:    apiTokens,
		Certs:        certs,
		EnrollTokens: enrollTokens,
		Audit:        audit,
		Provisioning: &enrollEvents{ProvisioningService: &pki.Service{
			CA:       ca,
			Store:    sqlite.NewEnrollmentStore(m.DB),
			Certs:    certs,
			Lifetime: time.Duration(cfg.CertLifetime),
			Logger:   log.With("component", "pki"),
		}, events: m.Events, now: time.Now},
		Sessions:  m.Broker,
		Telemetry: m.Telemetry,
		Events:    m.Events,
		Gatherer:  reg,
		UI:        &dashboard.Server{Devices: devices, APITokens: apiTokens, Certs: certs, EnrollTokens: enrollTokens, Audit: audit, Sessions: m.Broker, Telemetry: m.Telemetry, Events: m.Events, Logger: log.With("component", "dashboard")},
		Logger:    log.With("component", "http"),
		MQTTAddr:  publicMQTTAddr(cfg.PublicMQTT, m.Broker.Addr()),
	}
	if a := m.Broker.IntegrationAddr(); a != nil {
		m.HTTP.MQTTIntegrationAddr = publicMQTTAddr("", a)
	}
	if err := m.HTTP.Start(ctx); err != nil {
		return fmt.Errorf("start https: %w", err)
	}
	if cfg.DebugAddr != "" {
		if err := m.startDebug(cfg.DebugAddr); err != nil {
			return fmt.Errorf("debug listener: %w", err)
		}
	}
	m.HTTP.SetReady(true)
	log.Info("pylon ready", "version", pylon.Version,
		"api", "https://"+m.HTTP.ListenAddr().String(), "mqtt", "mqtts://"+m.Broker.Addr().String(),
		"data", cfg.Data)
	return nil
}

// newGoCollector collects the Go runtime's metrics: client_golang's
// defaults, the scheduler's (go_sched_latencies_seconds: how long
// goroutines waited to run, which rises with the ingest latency when the
// server is short of CPU; go_sched_pauses_*: stop-the-world pauses) and
// the CPU time the garbage collector took (go_cpu_classes_gc_*).
func newGoCollector() prometheus.Collector {
	return collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
		collectors.MetricsScheduler,
		collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/cpu/classes/(gc/total|total|idle):cpu-seconds$`)},
	))
}

// startDebug serves net/http/pprof on a loopback address, for profiling a
// live server ("go tool pprof http://127.0.0.1:6060/debug/pprof/profile").
func (m *Main) startDebug(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	m.debug = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go m.debug.Serve(ln)
	m.Logger.Warn("pprof debug listener enabled", "addr", ln.Addr().String())
	return nil
}

// bootstrapAdmin creates the first admin API token when there is none,
// prints it once and saves it to DATA/admin.token (0600).
func (m *Main) bootstrapAdmin(ctx context.Context, tokens pylon.APITokenService) error {
	n, err := tokens.CountAPITokens(ctx)
	if err != nil {
		return fmt.Errorf("count api tokens: %w", err)
	} else if n > 0 {
		return nil
	}
	secret, id, hash := pylon.NewSecret(pylon.APITokenPrefix)
	path := filepath.Join(m.Config.Data, "admin.token")
	if err := writeFileAtomic(path, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("save admin token: %w", err)
	}
	t := &pylon.APIToken{ID: id, Name: "initial admin", Role: pylon.RoleAdmin}
	if err := tokens.CreateAPIToken(ctx, t, hash); err != nil {
		os.Remove(path)
		return fmt.Errorf("create admin token: %w", err)
	}
	m.AdminToken = secret
	fmt.Fprintf(m.Stdout, "\nFirst start: created the admin API token. It is shown only this once\nand saved (mode 0600) to %s:\n\n    %s\n\n", path, secret)
	m.Logger.Info("created initial admin API token", "token_id", id, "file", path)
	return nil
}

// Close stops accepting connections, finishes in-flight work and closes the
// store, in that order: HTTP, broker (its connections' last messages are
// still ingested), ingester (commits what is queued), retention, store.
func (m *Main) Close() error {
	var errs []error
	if m.HTTP != nil {
		m.HTTP.SetReady(false)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errs = append(errs, m.HTTP.Shutdown(ctx))
		cancel()
	}
	if m.debug != nil {
		errs = append(errs, m.debug.Close())
	}
	if m.Broker != nil {
		errs = append(errs, m.Broker.Close())
	}
	if m.Ingester != nil {
		errs = append(errs, m.Ingester.Close())
	}
	if m.stopBackground != nil {
		m.stopBackground()
		m.background.Wait()
	}
	if m.DB != nil {
		errs = append(errs, m.DB.Close())
	}
	return errors.Join(errs...)
}

// expiredCertKeep is how long an expired certificate stays in the store,
// for inspection, before pruneCertificates deletes it.
const expiredCertKeep = 30 * 24 * time.Hour

// pruneCertificates deletes the certificates that expired more than
// expiredCertKeep ago, now and then every interval, until ctx ends. They
// are of no use (not on the CRL, not usable), and without it every
// renewal and every deleted device would leave a row behind for good.
func pruneCertificates(ctx context.Context, certs pylon.CertificateService, log *slog.Logger, every time.Duration) {
	ctx = pylon.NewContextWithPrincipal(ctx, pylon.SystemPrincipal)
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		before := time.Now().Add(-expiredCertKeep)
		n, err := certs.DeleteExpiredCertificates(ctx, before)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Error("delete expired certificates", "before", before, "deleted", n, "err", err)
		case n > 0:
			log.Info("deleted expired certificates", "before", before, "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// serverHosts returns the names the server certificate covers.
func serverHosts(extra []string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		hosts = append(hosts, h)
	}
	for _, h := range extra {
		if h = strings.TrimSpace(h); h != "" && !contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// publicMQTTAddr is the broker address announced to devices: the configured
// one, or the bound one. An unspecified host is left empty (":8883"): clients
// then use the host of the server URL they already know.
func publicMQTTAddr(configured string, bound net.Addr) string {
	if configured != "" {
		return configured
	}
	host, port, err := net.SplitHostPort(bound.String())
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = ""
	}
	return net.JoinHostPort(host, port)
}

// writeFileAtomic writes data to a temporary file with mode perm and
// renames it over name.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	l, _ := parseLevel(level)
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
