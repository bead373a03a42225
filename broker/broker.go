package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pylonhq/pylon"
)

// Listener ids, as mochi knows them. The listener a client came in on
// decides what it is: a device (mutual TLS) or a platform integration
// with an API token (TLS with the server's certificate only, or plain TCP).
const (
	listenerTLS         = "pylon-tls"
	listenerIntegration = "pylon-integration"
	listenerPlain       = "pylon-plain"
)

// Limits. README.md explains each one.
const (
	maxPacketSize        = 256 << 10 // bytes of one MQTT packet, fixed header included
	maxClientIDLen       = 64        // bytes of a plain-listener client id (devices: pylon.IDLen)
	maxPasswordLen       = 256       // bytes of a CONNECT password (an API token)
	maxTopicLen          = 256       // bytes of a topic name or filter
	maxSubscriptions     = 64        // topic filters one client may hold
	receiveMaximum       = 64        // unacknowledged QoS 1/2 PUBLISHes a client may send
	maxInflight          = 1024      // QoS 1/2 messages stored for one client
	maxWritesPending     = 1024      // outbound packets queued for one client
	maxKeepalive         = 600       // seconds; 0 or more is replaced by this
	maxSessionExpiry     = 3600      // seconds a disconnected v5 session is kept
	maxReasonLen         = 256       // bytes of a disconnect reason stored with an event
	connectTimeout       = 10 * time.Second
	storeTimeout         = 5 * time.Second
	kickWriteTimeout     = 250 * time.Millisecond
	sysTopicInterval     = 30 // seconds between mochi's $SYS updates (not reachable by clients)
	defaultAuditInterval = time.Minute
)

// Options configure a Broker.
type Options struct {
	Addr        string          // TLS listener, e.g. ":8883" or "127.0.0.1:0"
	Certificate tls.Certificate // server certificate (chain incl. CA)
	ClientCAs   *x509.CertPool  // the Pylon CA; client certs must chain to it
	PlainAddr   string          // optional plain-TCP listener for API-token integrations; "" = none

	// IntegrationAddr is an optional TLS listener for API-token
	// integrations: the server's certificate, no client certificate.
	IntegrationAddr string

	// IntegrationRecheck is how often the token of a connected
	// integration is checked again; a revoked or expired one ends the
	// session. One minute if 0.
	IntegrationRecheck time.Duration

	Devices    pylon.DeviceService
	Certs      pylon.CertificateService
	APITokens  pylon.APITokenService // required with PlainAddr or IntegrationAddr
	Audit      pylon.AuditService
	Registerer prometheus.Registerer // may be nil
	Logger     *slog.Logger
	Now        func() time.Time // time.Now if nil
	AuditEvery time.Duration    // ACL-denial and refusal aggregation period, 1 min if 0

	// Ingest receives every PUBLISH of a device to devices/{its id}/telemetry
	// before it is acknowledged (see telemetryHook). nil: the telemetry topic
	// is a topic like any other in the device's namespace.
	Ingest Ingester

	// Events, if set, receives a connection event (pylon.EventConnection)
	// each time a device comes online or goes offline, for live views.
	Events pylon.EventService
}

// Broker is the embedded MQTT broker. Create it with New, then Start it;
// Close stops it.
type Broker struct {
	opts         Options
	log          *slog.Logger
	now          func() time.Time
	server       *mqtt.Server
	inline       *mqtt.Client // the server's inline client, which routes stored telemetry
	metrics      *metrics
	audit        *auditAggregator
	sessions     *sessions
	conns        deviceConns        // telemetry state of each live device connection, with its certificate key
	integrations integrationClients // the API token of each connected integration

	// base is the parent of the contexts of store calls made from hooks,
	// which mochi gives no context. Close cancels it last.
	base   context.Context
	cancel context.CancelFunc

	mu        sync.Mutex // guards the fields below
	started   bool
	closed    bool
	tlsLn     net.Listener
	integLn   net.Listener // nil if none
	plainLn   net.Listener // nil if none
	stopAudit chan struct{}

	closing   atomic.Bool
	wg        sync.WaitGroup // the audit flusher and the telemetry answer loops
	closeOnce sync.Once
}

var _ pylon.SessionService = (*Broker)(nil)

// New validates opts and builds a broker with its hooks. It binds nothing;
// see Start.
func New(opts Options) (*Broker, error) {
	switch {
	case opts.Addr == "":
		return nil, errors.New("tls listener address is required")
	case len(opts.Certificate.Certificate) == 0 || opts.Certificate.PrivateKey == nil:
		return nil, errors.New("server certificate and key are required")
	case opts.ClientCAs == nil:
		return nil, errors.New("client CA pool is required")
	case opts.Devices == nil:
		return nil, errors.New("device service is required")
	case opts.Certs == nil:
		return nil, errors.New("certificate service is required")
	case opts.Audit == nil:
		return nil, errors.New("audit service is required")
	case (opts.PlainAddr != "" || opts.IntegrationAddr != "") && opts.APITokens == nil:
		return nil, errors.New("api token service is required with an integration listener")
	case opts.AuditEvery < 0:
		return nil, errors.New("audit period must not be negative")
	case opts.IntegrationRecheck < 0:
		return nil, errors.New("integration recheck period must not be negative")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.AuditEvery == 0 {
		opts.AuditEvery = defaultAuditInterval
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = maxPacketSize
	caps.ReceiveMaximum = receiveMaximum
	caps.MaximumInflight = maxInflight
	caps.MaximumClientWritesPending = maxWritesPending
	caps.MaximumSessionExpiryInterval = maxSessionExpiry
	caps.MinimumProtocolVersion = 4 // MQTT 3.1.1 and 5
	// Inbound topic aliases are off: mochi checks the ACL before it resolves
	// an alias, so an aliased PUBLISH would be checked against "".
	caps.TopicAliasMaximum = 0
	caps.SharedSubAvailable = 0 // "$share/..." is refused by the ACL anyway

	server := mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		InlineClient:           true, // for server-side publishing (commands)
		SysTopicResendInterval: sysTopicInterval,
		Logger:                 mochiLogger(opts.Logger),
	})

	inline, ok := server.Clients.Get(mqtt.InlineClientId)
	if !ok {
		return nil, fmt.Errorf("mqtt server has no inline client")
	}

	m, err := newMetrics(opts.Registerer, server.Info)
	if err != nil {
		return nil, err
	}
	b := &Broker{
		opts:     opts,
		log:      opts.Logger,
		now:      opts.Now,
		server:   server,
		inline:   inline,
		metrics:  m,
		sessions: newSessions(),
	}
	b.base, b.cancel = context.WithCancel(context.Background())
	b.audit = newAuditAggregator(opts.Audit, opts.Logger, opts.Now, opts.AuditEvery)

	// Order matters: mochi calls hooks in the order they were added, and
	// auth must refuse a client before anything else sees it.
	hooks := []mqtt.Hook{
		&authHook{b: b},
		&aclHook{b: b},
		&connectionHook{b: b},
		&metricsHook{m: m},
	}
	if opts.Ingest != nil {
		hooks = append(hooks, &telemetryHook{b: b})
	}
	for _, h := range hooks {
		if err := server.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("add hook %s: %w", h.ID(), err)
		}
	}
	return b, nil
}

// Start binds the listeners (returning bind errors), marks every device
// offline (no session survives a restart) and serves in the background.
func (b *Broker) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("broker is closed")
	} else if b.started {
		return errors.New("broker already started")
	}

	var lc net.ListenConfig
	raw, err := lc.Listen(ctx, "tcp", b.opts.Addr)
	if err != nil {
		return fmt.Errorf("listen mqtt tls: %w", err)
	}
	tlsLn := tls.NewListener(corkListener{retryListener{Listener: raw, log: b.log}}, &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{b.opts.Certificate},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    b.opts.ClientCAs,
	})
	var integLn, plainLn net.Listener
	closeAll := func() { closeListeners(tlsLn, integLn, plainLn) }
	if b.opts.IntegrationAddr != "" {
		p, err := lc.Listen(ctx, "tcp", b.opts.IntegrationAddr)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen mqtt integration: %w", err)
		}
		integLn = tls.NewListener(retryListener{Listener: p, log: b.log}, &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{b.opts.Certificate},
			ClientAuth:   tls.NoClientCert, // the API token is the identity
		})
	}
	if b.opts.PlainAddr != "" {
		p, err := lc.Listen(ctx, "tcp", b.opts.PlainAddr)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen mqtt plain: %w", err)
		}
		plainLn = retryListener{Listener: p, log: b.log}
	}

	rctx, cancel := context.WithTimeout(pylon.NewContextWithPrincipal(context.WithoutCancel(ctx), pylon.SystemPrincipal), storeTimeout)
	n, err := b.opts.Devices.ResetConnections(rctx, b.now())
	cancel()
	if err != nil {
		closeAll()
		return fmt.Errorf("reset device connections: %w", err)
	} else if n > 0 {
		b.log.Info("marked devices offline at broker start", "devices", n)
	}

	if err := b.server.AddListener(&listener{Net: listeners.NewNet(listenerTLS, tlsLn), b: b}); err != nil {
		closeAll()
		return fmt.Errorf("add tls listener: %w", err)
	}
	if integLn != nil {
		if err := b.server.AddListener(&listener{Net: listeners.NewNet(listenerIntegration, integLn), b: b}); err != nil {
			closeAll()
			return fmt.Errorf("add integration listener: %w", err)
		}
		b.log.Info("mqtt integration listener", "addr", integLn.Addr().String(), "allowed", "API-token integrations, subscribe only")
	}
	if plainLn != nil {
		if err := b.server.AddListener(&listener{Net: listeners.NewNet(listenerPlain, plainLn), b: b}); err != nil {
			closeAll()
			return fmt.Errorf("add plain listener: %w", err)
		}
		b.log.Warn("plain-TCP MQTT listener enabled: traffic is not encrypted",
			"addr", plainLn.Addr().String(), "allowed", "API-token integrations, subscribe only")
	}
	if err := b.server.Serve(); err != nil {
		closeAll()
		return fmt.Errorf("serve mqtt: %w", err)
	}
	b.tlsLn, b.integLn, b.plainLn = tlsLn, integLn, plainLn
	b.started = true

	b.stopAudit = make(chan struct{})
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.audit.run(b.base, b.stopAudit)
	}()
	if integLn != nil || plainLn != nil {
		period := b.opts.IntegrationRecheck
		if period == 0 {
			period = defaultIntegrationRecheck
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.recheckIntegrations(period, b.stopAudit)
		}()
	}
	b.log.Info("mqtt broker listening", "addr", tlsLn.Addr().String())
	return nil
}

// Addr returns the bound TLS address, or nil before Start.
func (b *Broker) Addr() net.Addr { return b.addrOf(&b.tlsLn) }

// PlainAddr returns the bound plain-TCP address, or nil if there is none.
func (b *Broker) PlainAddr() net.Addr { return b.addrOf(&b.plainLn) }

// IntegrationAddr returns the bound address of the integrations' TLS
// listener, or nil if there is none.
func (b *Broker) IntegrationAddr() net.Addr { return b.addrOf(&b.integLn) }

// closeListeners closes those of lns that are not nil.
func closeListeners(lns ...net.Listener) {
	for _, ln := range lns {
		if ln != nil {
			ln.Close()
		}
	}
}

// addrOf returns the address of the listener *ln, one of b's, or nil.
func (b *Broker) addrOf(ln *net.Listener) net.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	if *ln == nil {
		return nil
	}
	return (*ln).Addr()
}

// Server returns the mochi server, for later hooks (ingest, commands) and
// its inline client.
func (b *Broker) Server() *mqtt.Server { return b.server }

// Connected returns how many clients have a live, authenticated connection.
func (b *Broker) Connected() int {
	return int(atomic.LoadInt64(&b.server.Info.ClientsConnected))
}

// Close stops the listeners, disconnects every client (recording its
// device offline), flushes the pending audit records and waits for all of
// it. It is safe to call more than once.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closing.Store(true)
		b.mu.Lock()
		b.closed = true
		started, tlsLn, integLn, plainLn, stop := b.started, b.tlsLn, b.integLn, b.plainLn, b.stopAudit
		b.mu.Unlock()

		if started {
			// Stop accepting first, so that no client arrives between mochi
			// disconnecting the clients and closing its listeners.
			closeListeners(tlsLn, integLn, plainLn)
		}
		// Every client is disconnected (v5: DISCONNECT 0x8B) and its
		// goroutine waited for, so every OnDisconnect hook has run. mochi's
		// Close would do it, but v2.7.9 lists a listener's clients with a
		// recursive read lock (Clients.GetByListener calls Len under RLock),
		// which deadlocks if a client connects or disconnects in between
		// (mochi-mqtt/server#488). Closing the listeners first with a closer
		// that lists the clients once marks them ended, so that mochi's
		// Close skips that step.
		b.server.Listeners.CloseAll(b.disconnectListenerClients)
		_ = b.server.Close()
		if started {
			close(stop)
			b.wg.Wait()
		}
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		b.audit.flush(ctx, true)
		cancel()
		b.cancel()
	})
	return nil
}

// disconnectListenerClients disconnects the clients of listener id, as
// mochi's closeListenerClients does, reading the client list once.
func (b *Broker) disconnectListenerClients(id string) {
	for _, cl := range b.server.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Closed() {
			_ = b.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// storeContext returns the context of a store call made for principal p
// from a hook.
func (b *Broker) storeContext(p pylon.Principal) (context.Context, context.CancelFunc) {
	return context.WithTimeout(pylon.NewContextWithPrincipal(b.base, p), storeTimeout)
}

// devicePrincipal is the principal of a device's own operations.
func devicePrincipal(id string) pylon.Principal {
	return pylon.Principal{Kind: pylon.PrincipalDevice, ID: id}
}

// listener is mochi's Net listener with a connect deadline and, on the TLS
// listener, the handshake done before mochi sees the connection, so that
// failed handshakes are counted and logged quietly.
type listener struct {
	*listeners.Net
	b *Broker
}

// Serve implements listeners.Listener.
func (l *listener) Serve(establish listeners.EstablishFn) {
	l.Net.Serve(func(id string, c net.Conn) error {
		// The TLS handshake and the CONNECT packet must arrive within
		// connectTimeout; mochi then sets the keepalive deadline.
		_ = c.SetDeadline(time.Now().Add(connectTimeout))
		if tc, ok := c.(*tls.Conn); ok {
			if err := tc.Handshake(); err != nil {
				l.b.metrics.refused.WithLabelValues(reasonTLS).Inc()
				l.b.log.Debug("mqtt tls handshake failed", "remote", c.RemoteAddr().String(), "err", err)
				_ = c.Close()
				return nil
			}
		}
		if l.b.closing.Load() {
			_ = c.Close()
			return nil
		}
		defer l.b.conns.remove(c)
		if err := establish(id, c); err != nil {
			l.b.log.Debug("mqtt connection ended", "listener", id, "remote", c.RemoteAddr().String(), "err", err)
		}
		if tc, ok := c.(*tls.Conn); ok {
			l.b.connectionClosed(tc)
		}
		return nil
	})
}

// retryListener keeps accepting after transient errors (such as running
// out of file descriptors), which would otherwise end mochi's accept loop
// for good.
type retryListener struct {
	net.Listener
	log *slog.Logger
}

// Accept implements net.Listener.
func (l retryListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		} else if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		delay = min(max(2*delay, 5*time.Millisecond), time.Second)
		l.log.Warn("mqtt accept failed, retrying", "err", err, "delay", delay)
		time.Sleep(delay)
	}
}

// mochiLogger returns the logger handed to mochi: ours, tagged, and quiet
// below Warn.
func mochiLogger(l *slog.Logger) *slog.Logger {
	return slog.New(minLevelHandler{Handler: l.Handler(), min: slog.LevelWarn}).With("component", "mochi")
}

// minLevelHandler drops records below min.
type minLevelHandler struct {
	slog.Handler
	min slog.Level
}

func (h minLevelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevelHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevelHandler{Handler: h.Handler.WithAttrs(attrs), min: h.min}
}

func (h minLevelHandler) WithGroup(name string) slog.Handler {
	return minLevelHandler{Handler: h.Handler.WithGroup(name), min: h.min}
}

// truncate returns s cut to at most n bytes of valid UTF-8.
func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "")
}
