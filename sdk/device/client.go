package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/senml"
)

// Defaults of Options.
const (
	DefaultMaxQueued     = 10_000
	DefaultMaxQueueBytes = 64 << 20
	DefaultHeartbeat     = 60 * time.Second
	DefaultRenewAt       = 2.0 / 3
	DefaultMaxInflight   = 32
	DefaultKeepAlive     = 30 * time.Second
	DefaultSessionExpiry = 15 * time.Minute
	DefaultAckTimeout    = 30 * time.Second
	DefaultReconnectMin  = time.Second
	DefaultReconnectMax  = 2 * time.Minute
)

// Internal timing.
const (
	connectTimeout     = 15 * time.Second
	renewCheckInterval = time.Minute
	renewTimeout       = time.Minute
	retryDelay         = time.Second // resend of a message whose PUBLISH failed on a live connection
	maxErrorReport     = 4 << 10     // bytes of an errors-topic message
	reportedMemory     = 256         // refusals remembered to report each once
)

// processStart is when the program started, for the uptime heartbeat.
var processStart = time.Now()

// Options configure a Client. The zero value is usable: every zero field
// takes its default.
type Options struct {
	// MQTTAddr is the broker's host:port. Empty: ask the server
	// (GET /api/v1/info), remembering the answer in the directory for
	// when the server cannot be reached.
	MQTTAddr string
	// ServerName overrides the TLS server name checked in the broker's
	// certificate (default: the host of the broker address).
	ServerName string
	// DialContext opens the TCP connection to the broker (default: a
	// net.Dialer). TLS is done by the Client on top of it.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// NoWait makes Publish return once the message is durably queued
	// rather than when the platform acknowledged it.
	NoWait bool
	// BatchWindow > 0 collects the records published within the window
	// into one message: one signature, one PUBLISH, fewer bytes.
	BatchWindow time.Duration
	// Compression is envelope.EncodingNone (the default),
	// envelope.EncodingDeflate or envelope.EncodingZstd: worth it from
	// about ten readings per message.
	Compression string
	// ContentType is envelope.ContentTypeSenMLCBOR (the default) or
	// envelope.ContentTypeSenMLJSON.
	ContentType int

	// MaxQueued and MaxQueueBytes bound the outbox (defaults 10,000
	// messages and 64 MiB). When it is full, Publish returns ErrQueueFull.
	MaxQueued     int
	MaxQueueBytes int64
	// MaxInflight is how many messages may await their PUBACK at once
	// (default 32; the broker allows 64).
	MaxInflight int
	// AckTimeout is how long a PUBLISH waits for its PUBACK before it is
	// sent again (default 30 s).
	AckTimeout time.Duration

	// Heartbeat is the interval of the health message (sys/uptime,
	// sys/firmware and Health's readings). 0 means DefaultHeartbeat (60 s);
	// a negative value turns heartbeats off.
	Heartbeat time.Duration
	// Firmware is reported as sys/firmware in heartbeats.
	Firmware string
	// Health, if set, is called for each heartbeat.
	Health func() Health

	// RenewAt is the fraction of the certificate's lifetime (NotBefore to
	// NotAfter) after which it is renewed with a new key (default 2/3).
	// Renewals are at least max(1 s, lifetime/2000) apart.
	RenewAt float64

	// OnError receives each refusal of a message of this device once:
	// from a negative PUBACK or from devices/{id}/errors. It is called on
	// an internal goroutine and must not block.
	OnError func(PlatformError)

	// KeepAlive (default 30 s), SessionExpiry (default 15 min: the broker
	// keeps the MQTT session, and so in-flight messages, over drops that
	// short), ReconnectMin and ReconnectMax (exponential backoff with
	// jitter between reconnection attempts, default 1 s to 2 min).
	KeepAlive     time.Duration
	SessionExpiry time.Duration
	ReconnectMin  time.Duration
	ReconnectMax  time.Duration

	// Logger receives the Client's logs (default: none).
	Logger *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.MaxQueued <= 0 {
		o.MaxQueued = DefaultMaxQueued
	}
	if o.MaxQueueBytes <= 0 {
		o.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.RenewAt <= 0 || o.RenewAt >= 1 {
		o.RenewAt = DefaultRenewAt
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.SessionExpiry <= 0 {
		o.SessionExpiry = DefaultSessionExpiry
	}
	if o.ReconnectMin <= 0 {
		o.ReconnectMin = DefaultReconnectMin
	}
	if o.ReconnectMax <= 0 {
		o.ReconnectMax = DefaultReconnectMax
	}
	if o.ReconnectMax <= o.ReconnectMin {
		o.ReconnectMax = o.ReconnectMin + time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.DialContext == nil {
		var d net.Dialer
		o.DialContext = d.DialContext
	}
	if o.ContentType == 0 {
		o.ContentType = envelope.ContentTypeSenMLCBOR
	}
	switch {
	case o.ContentType != envelope.ContentTypeSenMLCBOR && o.ContentType != envelope.ContentTypeSenMLJSON:
		return pylon.Errorf(pylon.EINVALID, "content type %d: want 110 or 112", o.ContentType)
	case o.Compression != envelope.EncodingNone && o.Compression != envelope.EncodingDeflate && o.Compression != envelope.EncodingZstd:
		return pylon.Errorf(pylon.EINVALID, "compression %q: want deflate or zstd", o.Compression)
	case o.KeepAlive > 18*time.Hour:
		return pylon.Errorf(pylon.EINVALID, "keep-alive too long")
	}
	return nil
}

// Stats are counters of a Client.
type Stats struct {
	Connected   bool
	Connects    uint64 // connections made, the first included
	Queued      int    // messages in the outbox now
	QueuedBytes int64  // their size on disk
	Enqueued    uint64 // messages sealed and queued since Connect
	Sent        uint64 // PUBLISH packets sent, resends included
	Acked       uint64 // messages the platform acknowledged (stored now or before)
	Refused     uint64 // messages the platform refused (moved to outbox/rejected)
	Renewals    uint64 // certificate renewals
	LastSeq     uint64 // the last sequence number handed out
}

// Client is a connected device: it publishes signed telemetry through a
// durable outbox, keeps its connection and certificate alive, and sends
// heartbeats. Its methods are safe for concurrent use.
type Client struct {
	opts      Options
	log       *slog.Logger
	dir       string
	deviceID  string
	telemetry string // devices/{id}/telemetry
	errors    string // devices/{id}/errors
	seal      envelope.SealOptions

	box   *outbox
	seq   *seqStore
	cm    *autopaho.ConnectionManager
	batch *batcher

	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{} // closed by Close
	quiet     chan struct{} // closed by Shutdown: no more heartbeats
	hbDone    chan struct{} // closed when the heartbeat loop has ended
	quietOnce sync.Once
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup
	kick      chan struct{} // wakes the dispatcher
	renewNow  chan struct{} // wakes the renewal loop
	renewMu   sync.Mutex    // one renewal at a time

	identMu sync.RWMutex
	ident   *identity // the current key and certificate

	// mu guards the fields below. Lock order: mu before identMu and
	// before the outbox's and seqStore's locks; none of them calls back.
	mu            sync.Mutex
	connected     bool
	epoch         uint64   // connections made; flights remember theirs
	connFP        [32]byte // key of the live connection's certificate
	everConnected bool
	lastFP        [32]byte  // key of the last connection, to decide Clean Start
	dialIdent     *identity // identity of the connection being made
	dialFP        [32]byte
	rawConn       net.Conn // TCP connection under the live TLS connection
	addr          string   // broker address learnt from the server
	ready         []uint64 // queued seqs to send on this connection, in order
	inReady       map[uint64]bool
	inflight      map[uint64]*flight
	waiters       map[uint64]chan error
	changed       chan struct{} // closed and replaced when a message leaves the outbox
	reported      []uint64      // recently reported refusals
	stats         Stats
	oldKeys       map[[32]byte]any // public keys of previous certificates, by fingerprint
}

// flight is a PUBLISH awaiting its PUBACK.
type flight struct {
	epoch  uint64
	connFP [32]byte
	cancel context.CancelFunc
}

// Connect loads the identity in dir and starts the Client: it connects to
// the broker over mutual TLS (MQTT 5, client id = device id), keeps
// reconnecting with exponential backoff and jitter, resends the outbox
// after every (re)connection, renews the certificate and sends heartbeats.
// Connect does not wait for the connection: publishing works offline,
// into the outbox. The Client runs until Close or until ctx is cancelled.
//
// Errors: ErrNotEnrolled, EINVALID for bad options, and I/O errors of the
// directory.
func Connect(ctx context.Context, dir string, opts Options) (*Client, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	id, err := loadIdentity(dir)
	if err != nil {
		return nil, err
	}
	box, err := openOutbox(filepath.Join(dir, dirOutbox), opts.MaxQueued, opts.MaxQueueBytes)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	seq, err := openSeq(dir, box.maxSeq())
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	c := &Client{
		opts: opts, log: opts.Logger.With("device", id.deviceID), dir: dir, deviceID: id.deviceID,
		telemetry: "devices/" + id.deviceID + "/telemetry", errors: "devices/" + id.deviceID + "/errors",
		seal: envelope.SealOptions{ContentType: opts.ContentType, Encoding: opts.Compression},
		box:  box, seq: seq, ident: id,
		done: make(chan struct{}), quiet: make(chan struct{}), hbDone: make(chan struct{}), kick: make(chan struct{}, 1), renewNow: make(chan struct{}, 1),
		inReady: map[uint64]bool{}, inflight: map[uint64]*flight{}, waiters: map[uint64]chan error{},
		changed: make(chan struct{}), oldKeys: map[[32]byte]any{},
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	c.batch = &batcher{c: c}
	initial := min(max(4*opts.ReconnectMin, opts.ReconnectMin), opts.ReconnectMax)
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{{Scheme: "tls", Host: "pylon-broker"}}, // resolved in dial
		KeepAlive:                     uint16(opts.KeepAlive / time.Second),
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         uint32(opts.SessionExpiry / time.Second),
		ReconnectBackoff:              autopaho.NewExponentialBackoff(opts.ReconnectMin, opts.ReconnectMax, initial, 2),
		ConnectTimeout:                connectTimeout,
		AttemptConnection:             c.dial,
		ConnectPacketBuilder:          c.buildConnect,
		OnConnectionUp:                c.onConnectionUp,
		OnConnectionDown:              c.onConnectionDown,
		OnConnectError: func(err error) {
			c.log.Warn("mqtt connection attempt failed", "err", err)
		},
		Errors:     pahoLogger{c.log},
		PahoErrors: pahoLogger{c.log},
		ClientConfig: paho.ClientConfig{
			ClientID:          id.deviceID,
			PacketTimeout:     opts.AckTimeout,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){c.onPublishReceived},
			OnServerDisconnect: func(d *paho.Disconnect) {
				reason := ""
				if d.Properties != nil {
					reason = d.Properties.ReasonString
				}
				c.log.Warn("disconnected by the broker", "code", fmt.Sprintf("0x%02x", d.ReasonCode), "reason", reason)
			},
		},
	}
	cm, err := autopaho.NewConnection(c.ctx, cfg)
	if err != nil {
		c.cancel()
		return nil, fmt.Errorf("connect: %w", err)
	}
	c.cm = cm
	c.wg.Add(2)
	go c.dispatch()
	go c.renewLoop()
	if opts.Heartbeat > 0 {
		c.wg.Add(1)
		go c.heartbeatLoop()
	} else {
		close(c.hbDone)
	}
	go func() {
		select {
		case <-c.ctx.Done():
			c.Close()
		case <-c.done:
		}
	}()
	n, _ := box.size()
	c.log.Info("device client started", "queued", n, "next_seq", seq.last()+1)
	return c, nil
}

// DeviceID returns the device's id.
func (c *Client) DeviceID() string { return c.deviceID }

// Identity returns the device's current identity (it changes on renewal).
func (c *Client) Identity() *Identity { return c.identity().public(c.dir) }

func (c *Client) identity() *identity {
	c.identMu.RLock()
	defer c.identMu.RUnlock()
	return c.ident
}

// Publish sends SenML records as one signed telemetry message (or, with
// Options.BatchWindow, as part of one). The records get the next sequence
// number and are sealed with the device key; the message is written to the
// outbox before it is sent, at QoS 1. A record without a time, or with a
// relative one, is timed from the call, so that queued readings keep their
// time. Publish returns when the platform acknowledged the message, or
// with Options.NoWait when it is durably queued.
//
// Errors: EINVALID (a record the platform would refuse), ETOOLARGE,
// ErrQueueFull, a *PlatformError if the platform refused the message,
// ErrClosed, or ctx's error — in the last two cases the message stays
// queued and will be delivered.
func (c *Client) Publish(ctx context.Context, recs ...senml.Record) error {
	rs, err := resolve(recs, time.Now())
	if err != nil {
		return err
	}
	return c.publish(ctx, rs)
}

// ReportError publishes the device's own error as the reading
// "sys/error/<code>" with the message as its string value (truncated to
// pylon.MaxStringValueLen bytes), through the outbox like any reading.
// code is 1 to 64 letters, digits, '-', '_' or '.'.
func (c *Client) ReportError(ctx context.Context, code, message string) error {
	if code == "" || len(code) > 64 || strings.Trim(code, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "" {
		return pylon.Errorf(pylon.EINVALID, "error code: 1 to 64 letters, digits, '-', '_' or '.'")
	}
	return c.Publish(ctx, senml.Record{Name: "sys/error/" + code, StringValue: String(truncateUTF8(message, pylon.MaxStringValueLen))})
}

func (c *Client) publish(ctx context.Context, rs []reading) error {
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	if c.opts.BatchWindow > 0 {
		return c.batch.add(ctx, rs)
	}
	_, ack, err := c.enqueue(rs, !c.opts.NoWait)
	if err != nil || ack == nil {
		return err
	}
	return c.waitAck(ctx, ack)
}

func (c *Client) waitAck(ctx context.Context, ack chan error) error {
	select {
	case err := <-ack:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
}

// enqueue seals readings as one message and writes it to the outbox. With
// wantAck it returns a channel that receives the message's outcome.
func (c *Client) enqueue(rs []reading, wantAck bool) (uint64, chan error, error) {
	pack, err := encodePack(rs, c.opts.ContentType)
	if err != nil {
		return 0, nil, err
	}
	if c.box.full(len(pack)) {
		return 0, nil, ErrQueueFull
	}
	seq, err := c.seq.take()
	if err != nil {
		return 0, nil, err
	}
	id := c.identity()
	msg, err := envelope.Seal(id.key, seq, pack, c.seal)
	if err != nil {
		if errors.Is(err, envelope.ErrTooLarge) {
			return 0, nil, pylon.Errorf(pylon.ETOOLARGE, "message over %d bytes: publish fewer records at once", pylon.MaxMessageBytes)
		}
		return 0, nil, fmt.Errorf("seal: %w", err)
	}
	var ack chan error
	if wantAck {
		ack = make(chan error, 1)
		c.mu.Lock()
		c.waiters[seq] = ack
		c.mu.Unlock()
	}
	if err := c.box.put(seq, id.fp, msg); err != nil {
		c.mu.Lock()
		delete(c.waiters, seq)
		c.mu.Unlock()
		return 0, nil, err
	}
	c.mu.Lock()
	c.stats.Enqueued++
	if c.connected {
		c.insertReady(seq)
	}
	c.mu.Unlock()
	c.wake()
	return seq, ack, nil
}

// Flush returns once every message queued so far, and the records of a
// pending batch, have left the outbox (acknowledged or refused).
func (c *Client) Flush(ctx context.Context) error {
	c.batch.flushPending()
	for {
		c.mu.Lock()
		ch := c.changed
		c.mu.Unlock()
		if n, _ := c.box.size(); n == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return ErrClosed
		}
	}
}

// Stats returns the Client's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	s := c.stats
	s.Connected = c.connected
	c.mu.Unlock()
	s.Queued, s.QueuedBytes = c.box.size()
	s.LastSeq = c.seq.last()
	return s
}

// Shutdown stops the Client gracefully: it stops heartbeats, seals a
// pending batch, waits until the platform has acknowledged every queued
// message or ctx ends, and then closes the Client. Messages still queued
// when ctx ends stay in the outbox for the next Connect; Shutdown then
// returns ctx's error.
func (c *Client) Shutdown(ctx context.Context) error {
	c.quietOnce.Do(func() { close(c.quiet) })
	select { // a heartbeat being queued is part of what is flushed
	case <-c.hbDone:
	case <-ctx.Done():
	}
	err := c.Flush(ctx)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close stops the Client: records of a pending batch are sealed and queued
// first, then the connection is closed and every goroutine ends. Queued
// messages stay in the outbox for the next Connect.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.batch.flushPending()
		close(c.done)
		c.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.cm.Disconnect(ctx); err != nil {
			c.closeErr = fmt.Errorf("close: %w", err)
		}
		c.wg.Wait()
		c.log.Info("device client stopped")
	})
	return c.closeErr
}

func (c *Client) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// --- connection ---

// buildConnect runs before each connection attempt: it fixes the identity
// the attempt will present and asks for a clean session when the key
// changed, so that the broker and paho drop in-flight messages signed with
// the old key; the outbox sends them again, re-sealed.
func (c *Client) buildConnect(cp *paho.Connect, _ *url.URL) (*paho.Connect, error) {
	id := c.identity()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dialIdent = id
	if c.everConnected && id.fp != c.lastFP {
		cp.CleanStart = true
	}
	// Ask for reason strings: the platform says why it refused a message
	// [MQTT-3.1.2-29]. autopaho's properties would send 0.
	if cp.Properties == nil {
		cp.Properties = &paho.ConnectProperties{}
	}
	cp.Properties.RequestProblemInfo = true
	// The platform sends a device few QoS 1 messages at a time (error
	// reports); without a Receive Maximum paho reserves a 65,535-slot
	// queue, half a megabyte per connection.
	if cp.Properties.ReceiveMaximum == nil {
		rm := uint16(receiveMaximum)
		cp.Properties.ReceiveMaximum = &rm
	}
	return cp, nil
}

// receiveMaximum is how many QoS 1 and 2 messages the broker may have in
// flight to the device at once [MQTT-3.1.2.11.3].
const receiveMaximum = 16

// dial opens the mutual-TLS connection to the broker.
func (c *Client) dial(ctx context.Context, _ autopaho.ClientConfig, _ *url.URL) (net.Conn, error) {
	c.mu.Lock()
	id := c.dialIdent
	c.mu.Unlock()
	if id == nil {
		id = c.identity()
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	addr, err := c.brokerAddr(ctx, id)
	if err != nil {
		return nil, err
	}
	raw, err := c.opts.DialContext(ctx, "tcp", addr)
	if err != nil {
		c.forgetAddr()
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	serverName := c.opts.ServerName
	if serverName == "" {
		serverName, _, _ = net.SplitHostPort(addr)
	}
	tc := tls.Client(raw, &tls.Config{
		RootCAs:    id.caPool,
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.tlsCert, nil
		},
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	c.mu.Lock()
	c.rawConn, c.dialFP = raw, id.fp
	c.mu.Unlock()
	return &coalescingConn{Conn: tc}, nil
}

// brokerAddr returns Options.MQTTAddr, or the address the server
// announces, or the one it announced last time.
func (c *Client) brokerAddr(ctx context.Context, id *identity) (string, error) {
	if c.opts.MQTTAddr != "" {
		return c.opts.MQTTAddr, nil
	}
	c.mu.Lock()
	addr := c.addr
	c.mu.Unlock()
	if addr != "" {
		return addr, nil
	}
	addr, err := fetchMQTTAddr(ctx, id)
	if err != nil {
		b, rerr := readSmall(filepath.Join(c.dir, fileMQTTAddr))
		if rerr != nil {
			return "", err
		}
		c.log.Debug("server info unavailable; using the broker address learnt before", "err", err)
		return strings.TrimSpace(string(b)), nil
	}
	if err := writeAtomic(c.dir, fileMQTTAddr, []byte(addr+"\n"), publicPerm); err != nil {
		c.log.Warn("remember broker address", "err", err)
	}
	c.mu.Lock()
	c.addr = addr
	c.mu.Unlock()
	return addr, nil
}

func (c *Client) forgetAddr() {
	c.mu.Lock()
	c.addr = ""
	c.mu.Unlock()
}

// resolveMQTTAddr completes an announced broker address: a leading ':'
// means the host of the server URL.
func resolveMQTTAddr(addr, serverURL string) (string, error) {
	if strings.HasPrefix(addr, ":") {
		u, err := url.Parse(serverURL)
		if err != nil {
			return "", fmt.Errorf("server URL: %w", err)
		}
		addr = net.JoinHostPort(u.Hostname(), addr[1:])
	}
	if _, _, err := net.SplitHostPort(addr); err != nil || len(addr) > 300 {
		return "", fmt.Errorf("server announced no valid broker address (%q)", truncateUTF8(addr, 64))
	}
	return addr, nil
}

func (c *Client) onConnectionUp(cm *autopaho.ConnectionManager, ack *paho.Connack) {
	cur := c.identity()
	c.mu.Lock()
	c.epoch++
	c.connected = true
	c.connFP = c.dialFP
	c.everConnected, c.lastFP = true, c.dialFP
	c.stats.Connects++
	if !ack.SessionPresent {
		// paho dropped its session state: PUBLISHes still awaiting their
		// PUBACK will not be resent by it. Stop waiting; the outbox
		// resends them below.
		for _, f := range c.inflight {
			if f.epoch < c.epoch {
				f.cancel()
			}
		}
	}
	c.ready = c.ready[:0]
	clear(c.inReady)
	for _, seq := range c.box.seqs() {
		if c.inflight[seq] == nil {
			c.ready = append(c.ready, seq)
			c.inReady[seq] = true
		}
	}
	stale := c.connFP != cur.fp
	n := len(c.ready)
	c.mu.Unlock()
	c.log.Info("connected to the broker", "session_present", ack.SessionPresent, "resending", n)
	c.wake()
	if stale { // renewed while this connection was being made
		c.dropConnection()
	}
	go c.subscribeErrors(cm)
	select {
	case c.renewNow <- struct{}{}:
	default:
	}
}

func (c *Client) onConnectionDown() bool {
	c.mu.Lock()
	c.connected = false
	c.rawConn = nil
	c.ready = c.ready[:0]
	clear(c.inReady)
	c.mu.Unlock()
	c.log.Info("connection to the broker lost")
	return true
}

// dropConnection closes the live connection; autopaho reconnects at once.
func (c *Client) dropConnection() {
	c.mu.Lock()
	raw := c.rawConn
	c.mu.Unlock()
	if raw != nil {
		raw.Close()
	}
}

func (c *Client) subscribeErrors(cm *autopaho.ConnectionManager) {
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	sa, err := cm.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: c.errors, QoS: 1}}})
	if err != nil {
		c.log.Debug("subscribe to the errors topic", "err", err)
		return
	}
	if len(sa.Reasons) > 0 && sa.Reasons[0] >= 0x80 {
		c.log.Warn("subscription to the errors topic refused", "code", fmt.Sprintf("0x%02x", sa.Reasons[0]))
	}
}

// onPublishReceived handles the platform's reports on devices/{id}/errors.
func (c *Client) onPublishReceived(pr paho.PublishReceived) (bool, error) {
	if pr.Packet.Topic != c.errors {
		return false, nil
	}
	if len(pr.Packet.Payload) > maxErrorReport {
		c.log.Warn("oversized error report ignored", "bytes", len(pr.Packet.Payload))
		return true, nil
	}
	var r struct {
		Seq    uint64 `json:"seq"`
		Code   string `json:"code"`
		Reason string `json:"reason"`
		Time   string `json:"time"`
	}
	if err := json.Unmarshal(pr.Packet.Payload, &r); err != nil {
		c.log.Warn("malformed error report ignored", "err", err)
		return true, nil
	}
	t, _ := time.Parse(time.RFC3339, r.Time)
	c.report(PlatformError{Seq: r.Seq, Code: truncateUTF8(r.Code, 64), Reason: truncateUTF8(r.Reason, 512), Time: t})
	return true, nil
}

// report passes a refusal to the log and to Options.OnError, once per seq.
func (c *Client) report(e PlatformError) {
	c.mu.Lock()
	if e.Seq != 0 {
		if slices.Contains(c.reported, e.Seq) {
			c.mu.Unlock()
			return
		}
		if len(c.reported) >= reportedMemory {
			c.reported = c.reported[1:]
		}
		c.reported = append(c.reported, e.Seq)
	}
	c.mu.Unlock()
	c.log.Warn("message refused by the platform", "seq", e.Seq, "code", e.Code, "reason", e.Reason)
	if c.opts.OnError != nil {
		c.opts.OnError(e)
	}
}

// --- sending ---

// insertReady adds seq to the send queue in order. c.mu must be held.
func (c *Client) insertReady(seq uint64) {
	if c.inReady[seq] || c.inflight[seq] != nil {
		return
	}
	c.inReady[seq] = true
	if n := len(c.ready); n == 0 || c.ready[n-1] < seq {
		c.ready = append(c.ready, seq)
		return
	}
	i, _ := slices.BinarySearch(c.ready, seq)
	c.ready = slices.Insert(c.ready, i, seq)
}

// dispatch sends queued messages in sequence order, at most MaxInflight
// awaiting their PUBACK at a time.
func (c *Client) dispatch() {
	defer c.wg.Done()
	for {
		select {
		case <-c.kick:
		case <-c.ctx.Done():
			return
		}
		for {
			c.mu.Lock()
			if !c.connected || len(c.ready) == 0 || len(c.inflight) >= c.opts.MaxInflight || c.ctx.Err() != nil {
				c.mu.Unlock()
				break
			}
			seq := c.ready[0]
			c.ready = c.ready[1:]
			delete(c.inReady, seq)
			ctx, cancel := context.WithCancel(c.ctx)
			f := &flight{epoch: c.epoch, connFP: c.connFP, cancel: cancel}
			c.inflight[seq] = f
			c.wg.Add(1)
			c.mu.Unlock()
			go c.send(ctx, seq, f)
		}
	}
}

// send publishes one queued message and acts on the outcome.
func (c *Client) send(ctx context.Context, seq uint64, f *flight) {
	defer c.wg.Done()
	defer f.cancel()
	fp, msg, err := c.box.load(seq)
	if err != nil {
		if isNotExist(err) { // acknowledged meanwhile, or not yet written
			c.endFlight(seq)
			return
		}
		c.log.Error("unreadable outbox entry moved to rejected", "seq", seq, "err", err)
		c.refused(seq, &PlatformError{Seq: seq, Code: "corrupt", Reason: "the queued message could not be read", Time: time.Now()})
		return
	}
	if fp != f.connFP {
		cur := c.identity()
		if fp != cur.fp {
			if msg, err = c.reseal(seq, fp, msg, cur); err != nil {
				c.log.Error("queued message cannot be re-sealed: moved to rejected", "seq", seq, "err", err)
				c.refused(seq, &PlatformError{Seq: seq, Code: "unsealable", Reason: "sealed with a key that is no longer known", Time: time.Now()})
				return
			}
			fp = cur.fp
		}
		if fp != f.connFP { // sealed with a newer key than this connection's: wait for the reconnection
			c.endFlight(seq)
			return
		}
	}
	c.mu.Lock()
	c.stats.Sent++
	c.mu.Unlock()
	pr, err := c.cm.Publish(ctx, &paho.Publish{QoS: 1, Topic: c.telemetry, Payload: msg})
	switch {
	case pr != nil && pr.ReasonCode >= 0x80 && !retryable(pr.ReasonCode):
		reason := "refused with MQTT reason code " + fmt.Sprintf("0x%02x", pr.ReasonCode)
		if pr.Properties != nil && pr.Properties.ReasonString != "" {
			reason = truncateUTF8(pr.Properties.ReasonString, 512)
		}
		c.refused(seq, &PlatformError{Seq: seq, Code: refusalCode(pr.ReasonCode), Reason: reason, Time: time.Now(), ReasonCode: pr.ReasonCode})
	case err == nil && pr != nil:
		c.acked(seq)
	default:
		if pr != nil {
			c.log.Debug("publish not accepted now; will resend", "seq", seq, "code", fmt.Sprintf("0x%02x", pr.ReasonCode))
		} else if ctx.Err() == nil {
			c.log.Debug("publish failed; will resend", "seq", seq, "err", err)
		}
		c.retryLater(seq, f)
	}
}

// reseal signs a message that was sealed with a previous key again with
// the current key, keeping its sequence number and content.
func (c *Client) reseal(seq uint64, fp [32]byte, msg []byte, cur *identity) ([]byte, error) {
	c.mu.Lock()
	pub := c.oldKeys[fp]
	c.mu.Unlock()
	if pub == nil {
		p, err := loadOldPublicKey(c.dir, fp)
		if err != nil {
			return nil, err
		}
		pub = p
		c.mu.Lock()
		c.oldKeys[fp] = p
		c.mu.Unlock()
	}
	m, err := envelope.Open(msg, pub)
	if err != nil {
		return nil, err
	}
	out, err := envelope.Seal(cur.key, m.Seq, m.Payload, envelope.SealOptions{ContentType: m.ContentType, Encoding: m.Encoding})
	if err != nil {
		return nil, err
	}
	if err := c.box.replace(seq, cur.fp, out); err != nil {
		return nil, err
	}
	return out, nil
}

// endFlight forgets a flight without outcome.
func (c *Client) endFlight(seq uint64) {
	c.mu.Lock()
	delete(c.inflight, seq)
	c.mu.Unlock()
	c.wake()
}

func (c *Client) acked(seq uint64) {
	c.box.remove(seq)
	c.mu.Lock()
	delete(c.inflight, seq)
	ack := c.waiters[seq]
	delete(c.waiters, seq)
	c.stats.Acked++
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	if ack != nil {
		ack <- nil
	}
	c.wake()
}

func (c *Client) refused(seq uint64, e *PlatformError) {
	if err := c.box.reject(seq); err != nil {
		c.log.Error("move refused message", "seq", seq, "err", err)
	}
	c.mu.Lock()
	delete(c.inflight, seq)
	ack := c.waiters[seq]
	delete(c.waiters, seq)
	c.stats.Refused++
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.report(*e)
	if ack != nil {
		ack <- e
	}
	c.wake()
}

// retryLater puts a message that got no usable answer back in the send
// queue: at once if a new connection came up since it was sent, else after
// retryDelay. If the connection is down, the next one resends it anyway.
func (c *Client) retryLater(seq uint64, f *flight) {
	c.mu.Lock()
	delete(c.inflight, seq)
	now := c.epoch != f.epoch
	if now && c.connected && c.box.has(seq) {
		c.insertReady(seq)
	}
	c.mu.Unlock()
	if now {
		c.wake()
		return
	}
	time.AfterFunc(retryDelay, func() {
		if c.ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		if c.connected && c.box.has(seq) {
			c.insertReady(seq)
		}
		c.mu.Unlock()
		c.wake()
	})
}

// --- heartbeats and renewal ---

func (c *Client) heartbeatLoop() {
	defer c.wg.Done()
	defer close(c.hbDone)
	t := time.NewTicker(c.opts.Heartbeat)
	defer t.Stop()
	for {
		c.heartbeat()
		select {
		case <-t.C:
		case <-c.quiet:
			return
		case <-c.ctx.Done():
			return
		}
	}
}

func (c *Client) heartbeat() {
	var h Health
	if c.opts.Health != nil {
		h = c.opts.Health()
	}
	rs, err := resolve(healthRecords(time.Since(processStart), c.opts.Firmware, h), time.Now())
	if err != nil {
		c.log.Warn("heartbeat not sent: invalid health values", "err", err)
		return
	}
	if _, _, err := c.enqueue(rs, false); err != nil {
		c.log.Warn("heartbeat not queued", "err", err)
	}
}

// Renew renews the certificate now with a new key (EST simplereenroll over
// mutual TLS), stores key and certificate, and reconnects with them.
// Queued messages stay queued; those sealed with the old key are re-sealed
// before they are sent. The Client renews by itself at Options.RenewAt of
// the certificate's lifetime; Renew is for operators and tests.
//
// Errors: EFORBIDDEN (certificate revoked, expired or superseded, device
// not active), EUNAUTHORIZED, and network errors.
func (c *Client) Renew(ctx context.Context) error {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	old := c.identity()
	next, err := reenroll(ctx, c.dir, old)
	if err != nil {
		return err
	}
	c.identMu.Lock()
	c.ident = next
	c.identMu.Unlock()
	c.mu.Lock()
	c.stats.Renewals++
	c.mu.Unlock()
	c.log.Info("certificate renewed", "serial", next.cert.SerialNumber.Text(16), "not_after", next.cert.NotAfter)
	c.dropConnection()
	return nil
}

// renewAt returns when cert is due for renewal.
func renewAt(cert *x509.Certificate, frac float64) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotBefore.Add(time.Duration(float64(life) * frac))
}

// minRenewGap is the least time between two renewals.
func minRenewGap(cert *x509.Certificate) time.Duration {
	return max(time.Second, cert.NotAfter.Sub(cert.NotBefore)/2000)
}

func (c *Client) renewLoop() {
	defer c.wg.Done()
	var failures int
	var lastOK, lastTry time.Time
	for {
		cert := c.identity().cert
		due := renewAt(cert, c.opts.RenewAt)
		if !lastOK.IsZero() {
			due = maxTime(due, lastOK.Add(minRenewGap(cert)))
		}
		if failures > 0 {
			due = maxTime(due, lastTry.Add(renewBackoff(failures)))
		}
		t := time.NewTimer(min(max(time.Until(due), 0), renewCheckInterval))
		select {
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-c.renewNow:
			t.Stop()
		}
		if time.Now().Before(due) {
			continue
		}
		lastTry = time.Now()
		ctx, cancel := context.WithTimeout(c.ctx, renewTimeout)
		err := c.Renew(ctx)
		cancel()
		switch {
		case err == nil:
			failures, lastOK = 0, time.Now()
		case c.ctx.Err() != nil:
			return
		default:
			failures++
			level := slog.LevelWarn
			if pylon.ErrorCode(err) == pylon.EFORBIDDEN {
				level = slog.LevelError // only a new enrollment helps
			}
			c.log.Log(c.ctx, level, "certificate renewal failed", "err", err, "attempt", failures, "not_after", cert.NotAfter)
		}
	}
}

// renewBackoff is the wait after the n-th failed renewal: 10 s doubling
// up to 10 min, with ±20 % jitter.
func renewBackoff(n int) time.Duration {
	d := 10 * time.Second << min(n-1, 6)
	d = min(d, 10*time.Minute)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// pahoLogger passes paho's error logs to slog at debug level.
type pahoLogger struct{ l *slog.Logger }

func (p pahoLogger) Println(v ...any) {
	p.l.Debug("paho", "msg", strings.TrimSpace(fmt.Sprintln(v...)))
}

func (p pahoLogger) Printf(format string, v ...any) {
	p.l.Debug("paho", "msg", strings.TrimSpace(fmt.Sprintf(format, v...)))
}

// coalescingConn turns each MQTT packet into one TLS record. paho writes a
// packet as several small Writes (fixed header, variable header, payload)
// while holding the connection's lock (packets.ControlPacket.WriteTo uses
// a sync.Locker connection); each Write to a TLS connection would be a
// record of its own, with 22 bytes of overhead (TLS 1.3) and an AEAD
// operation. While locked, Writes are gathered and Unlock sends them at
// once. A failed send closes the connection, so the reader fails and
// paho reconnects; paho writes only under the lock.
type coalescingConn struct {
	net.Conn // the TLS connection

	mu      sync.Mutex
	locked  bool
	buf     []byte
	lastErr error
}

func (c *coalescingConn) Lock() {
	c.mu.Lock()
	c.locked = true
}

func (c *coalescingConn) Unlock() {
	if len(c.buf) > 0 && c.lastErr == nil {
		if _, err := c.Conn.Write(c.buf); err != nil {
			c.lastErr = err
			c.Conn.Close()
		}
	}
	if cap(c.buf) > 64<<10 {
		c.buf = nil
	}
	c.buf = c.buf[:0]
	c.locked = false
	c.mu.Unlock()
}

// Write must be called with the lock held (as paho does).
func (c *coalescingConn) Write(p []byte) (int, error) {
	if !c.locked {
		return 0, errors.New("device: unlocked write to the MQTT connection")
	}
	if c.lastErr != nil {
		return 0, c.lastErr
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}
