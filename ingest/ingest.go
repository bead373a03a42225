// Package ingest turns telemetry messages received by the broker into
// stored readings: verify the device's signature, decompress, decode and
// validate the SenML, then store through a group committer, and only then
// let the broker acknowledge.
//
// # Pipeline
//
//	broker hook ──Ingest()──▶ envelope.Open (signature, size, decompression caps)
//	                          senml.Decode (names, units, values, times)
//	                          ──▶ committer queue ──▶ TelemetryService.WriteMessages
//	                                                  (one transaction for every
//	                                                   message queued meanwhile)
//	          ◀── Result ─────────────────────────── durable commit
//
// Ingest blocks its caller (the device's connection goroutine) until the
// message is durably stored, so the PUBACK the broker sends afterwards
// means "stored". Many devices' messages share each commit: while one
// transaction commits, the next batch gathers. A refused message is never
// stored as readings: it gets a reason, is kept in a bounded quarantine,
// and is reported to the device on devices/{id}/errors by the broker.
package ingest

import (
	"context"
	"crypto"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/senml"
)

// MQTT v5 reason codes of an ingest result, each one that a PUBACK (and
// PUBREC) may carry (MQTT 5 §3.4.2.1). 0x95 "packet too large" is not one of
// them: it is for DISCONNECT, when a whole packet exceeds the Maximum Packet
// Size; a payload over the telemetry limit is a quota (0x97).
const (
	ReasonSuccess        byte = 0x00
	ReasonUnspecified    byte = 0x80
	ReasonNotAuthorized  byte = 0x87 // bad signature, wrong key, replay
	ReasonTooLarge       byte = 0x97 // quota exceeded: over pylon.MaxMessageBytes or pylon.MaxDecodedBytes
	ReasonPayloadInvalid byte = 0x99 // malformed envelope or SenML
)

// Refusal codes: the "code" of the error report a device receives on
// devices/{id}/errors, and the values of Result.Code.
const (
	CodeInvalid      = "invalid"      // malformed envelope or invalid SenML (0x99)
	CodeUnauthorized = "unauthorized" // bad signature, wrong key or algorithm, replay (0x87)
	CodeTooLarge     = "too_large"    // over a size limit (0x97)
)

// RefusalCodes lists every refusal code.
var RefusalCodes = []string{CodeInvalid, CodeUnauthorized, CodeTooLarge}

// Result is what became of one message.
type Result struct {
	// Reason is the MQTT v5 PUBACK reason code.
	Reason byte
	// Status is set for accepted messages (stored or duplicate).
	Status pylon.WriteStatus
	// Seq is the message's sequence number, 0 if it could not be read.
	Seq uint64
	// Readings is how many readings were stored.
	Readings int
	// Err says why a message was refused (a *pylon.Error whose message is
	// safe to send to the device), or why it could not be stored.
	Err error
	// Retry is set when the message could not be stored through no fault of
	// its own: the broker must not acknowledge it, so that the device sends
	// it again.
	Retry bool
}

// Accepted reports whether the message is stored (now or before).
func (r Result) Accepted() bool { return r.Err == nil }

// Code returns the refusal code of a refused message (CodeInvalid,
// CodeUnauthorized or CodeTooLarge), and "" for an accepted message or one
// to retry.
func (r Result) Code() string {
	switch {
	case r.Err == nil || r.Retry:
		return ""
	case r.Reason == ReasonNotAuthorized:
		return CodeUnauthorized
	case r.Reason == ReasonTooLarge:
		return CodeTooLarge
	}
	return CodeInvalid
}

// Options configure an Ingester.
type Options struct {
	Telemetry  pylon.TelemetryService
	Events     pylon.EventService // may be nil
	Logger     *slog.Logger
	Registerer prometheus.Registerer // may be nil
	Now        func() time.Time
	Limits     senml.Limits

	// MaxBatch is how many messages one commit takes at most (256 if 0).
	MaxBatch int
}

// Ingester verifies, decodes and stores telemetry messages.
type Ingester struct {
	opts    Options
	log     *slog.Logger
	queue   chan *item
	quar    chan *pylon.QuarantinedMessage
	m       *metrics
	limiter logLimiter

	ctx     context.Context
	cancel  context.CancelFunc
	stopped chan struct{} // closed when the committer has drained and stopped
	wg      sync.WaitGroup
}

type item struct {
	msg    *pylon.TelemetryMessage
	queued time.Time
	done   chan writeResult
}

type writeResult struct {
	status pylon.WriteStatus
	err    error
}

// New returns an Ingester; call Start before Ingest and Close at the end.
func New(opts Options) *Ingester {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Ingester{
		opts:    opts,
		log:     opts.Logger,
		queue:   make(chan *item, 4*opts.MaxBatch),
		quar:    make(chan *pylon.QuarantinedMessage, 1024),
		m:       newMetrics(opts.Registerer),
		ctx:     ctx,
		cancel:  cancel,
		stopped: make(chan struct{}),
	}
}

// Start starts the committer and the quarantine writer.
func (in *Ingester) Start() {
	in.wg.Add(2)
	go in.commitLoop()
	go in.quarantineLoop()
}

// Close stops accepting messages, commits what is queued and waits.
func (in *Ingester) Close() error {
	in.cancel()
	in.wg.Wait()
	return nil
}

// errClosed answers messages that arrive during shutdown: not stored, so
// the device must send them again.
var errClosed = errors.New("ingest: shutting down")

// Ingest handles one telemetry message of deviceID, signed with the key of
// pub (the public key of the certificate the device connected with). It
// returns once the message is durably stored, or refused.
func (in *Ingester) Ingest(ctx context.Context, deviceID string, pub crypto.PublicKey, payload []byte) Result {
	start := time.Now()
	now := in.opts.Now()
	msg, err := envelope.Open(payload, pub)
	if err != nil {
		return in.refuse(deviceID, 0, payload, now, err)
	}
	readings, err := senml.Decode(deviceID, msg.ContentType, msg.Payload, now, in.opts.Limits)
	if err != nil {
		return in.refuse(deviceID, msg.Seq, payload, now, err)
	}
	tm := &pylon.TelemetryMessage{DeviceID: deviceID, Seq: msg.Seq, Received: now, Readings: readings}
	it := &item{msg: tm, queued: start, done: make(chan writeResult, 1)}
	select {
	case in.queue <- it:
	case <-in.ctx.Done():
		return in.retry(deviceID, msg.Seq, errClosed)
	case <-ctx.Done():
		return in.retry(deviceID, msg.Seq, ctx.Err())
	}
	// Once queued, the message will be committed or failed by the
	// committer, even if the device's connection goes away meanwhile.
	var wr writeResult
	select {
	case wr = <-it.done:
	case <-in.stopped:
		select {
		case wr = <-it.done:
		default: // queued after the final drain: never written
			return in.retry(deviceID, msg.Seq, errClosed)
		}
	}
	switch {
	case wr.err != nil:
		return in.retry(deviceID, msg.Seq, wr.err)
	case wr.status == pylon.WriteReplay:
		return in.refuse(deviceID, msg.Seq, payload, now, pylon.Errorf(pylon.EUNAUTHORIZED,
			"sequence number %d is a replay: it is more than %d below the highest stored", msg.Seq, pylon.ReplayWindow))
	}
	in.m.latency.Observe(time.Since(start).Seconds())
	if wr.status == pylon.WriteDuplicate {
		in.m.messages.WithLabelValues("duplicate").Inc()
		return Result{Reason: ReasonSuccess, Status: wr.status, Seq: msg.Seq}
	}
	in.m.messages.WithLabelValues("stored").Inc()
	in.m.readings.Add(float64(len(readings)))
	if in.opts.Events != nil {
		in.opts.Events.PublishEvent(pylon.Event{Type: pylon.EventReadings, DeviceID: deviceID, Time: now, Readings: readings})
	}
	return Result{Reason: ReasonSuccess, Status: wr.status, Seq: msg.Seq, Readings: len(readings)}
}

// refuse reports a message the device got wrong.
func (in *Ingester) refuse(deviceID string, seq uint64, payload []byte, now time.Time, err error) Result {
	reason := ReasonPayloadInvalid
	switch {
	case errors.Is(err, envelope.ErrBadSignature), pylon.ErrorCode(err) == pylon.EUNAUTHORIZED:
		reason = ReasonNotAuthorized
	case errors.Is(err, envelope.ErrTooLarge), pylon.ErrorCode(err) == pylon.ETOOLARGE:
		reason = ReasonTooLarge
	}
	msg := pylon.ErrorMessage(err)
	in.m.messages.WithLabelValues("refused").Inc()
	if in.limiter.allow(deviceID, now) {
		in.log.Warn("telemetry refused", "device", deviceID, "seq", seq, "reason", msg)
	}
	q := &pylon.QuarantinedMessage{DeviceID: deviceID, Received: now, Reason: msg, Payload: payload}
	select {
	case in.quar <- q:
	default:
		in.m.quarantineDropped.Inc()
	}
	if in.opts.Events != nil {
		in.opts.Events.PublishEvent(pylon.Event{Type: pylon.EventRejected, DeviceID: deviceID, Time: now, Reason: msg})
	}
	return Result{Reason: reason, Seq: seq, Err: pylon.Errorf(pylon.ErrorCode(err), "%s", msg)}
}

// retry reports a message that could not be stored now.
func (in *Ingester) retry(deviceID string, seq uint64, err error) Result {
	in.m.messages.WithLabelValues("failed").Inc()
	if in.limiter.allow(deviceID, in.opts.Now()) {
		in.log.Error("telemetry not stored; the device will resend", "device", deviceID, "seq", seq, "err", err)
	}
	return Result{Reason: ReasonUnspecified, Seq: seq, Err: err, Retry: true}
}

// commitLoop takes whatever is queued, up to MaxBatch messages, and stores
// it in one transaction. While it commits, the next batch gathers.
func (in *Ingester) commitLoop() {
	defer in.wg.Done()
	defer close(in.stopped)
	batch := make([]*item, 0, in.opts.MaxBatch)
	msgs := make([]*pylon.TelemetryMessage, 0, in.opts.MaxBatch)
	for {
		select {
		case it := <-in.queue:
			batch = append(batch[:0], it)
		case <-in.ctx.Done():
			in.drain()
			return
		}
	gather:
		for len(batch) < in.opts.MaxBatch {
			select {
			case it := <-in.queue:
				batch = append(batch, it)
			default:
				break gather
			}
		}
		in.commit(batch, msgs[:0])
		clear(batch)
	}
}

// drain commits what was queued before Close.
func (in *Ingester) drain() {
	for {
		var batch []*item
	gather:
		for len(batch) < in.opts.MaxBatch {
			select {
			case it := <-in.queue:
				batch = append(batch, it)
			default:
				break gather
			}
		}
		if len(batch) == 0 {
			return
		}
		in.commit(batch, nil)
	}
}

func (in *Ingester) commit(batch []*item, msgs []*pylon.TelemetryMessage) {
	for _, it := range batch {
		msgs = append(msgs, it.msg)
	}
	start := time.Now()
	statuses, err := in.opts.Telemetry.WriteMessages(context.Background(), msgs)
	in.m.commit.Observe(time.Since(start).Seconds())
	in.m.batch.Observe(float64(len(batch)))
	if err == nil && len(statuses) != len(batch) {
		err = errors.New("ingest: store returned a wrong number of statuses")
	}
	for i, it := range batch {
		if err != nil {
			it.done <- writeResult{err: err}
		} else {
			it.done <- writeResult{status: statuses[i]}
		}
	}
}

// quarantineLoop stores refused messages off the device's path.
func (in *Ingester) quarantineLoop() {
	defer in.wg.Done()
	for {
		select {
		case q := <-in.quar:
			if err := in.opts.Telemetry.QuarantineMessage(context.Background(), q); err != nil {
				in.log.Error("quarantine message", "device", q.DeviceID, "err", err)
			}
		case <-in.ctx.Done():
			for { // keep what was refused before Close
				select {
				case q := <-in.quar:
					if err := in.opts.Telemetry.QuarantineMessage(context.Background(), q); err != nil {
						in.log.Error("quarantine message", "device", q.DeviceID, "err", err)
					}
				default:
					return
				}
			}
		}
	}
}

// logLimiter allows one log line per device per second, for at most 4096
// devices at a time, so that a misbehaving fleet cannot flood the log.
type logLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (l *logLimiter) allow(deviceID string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil || len(l.last) >= 4096 {
		l.last = make(map[string]time.Time)
	}
	if t, ok := l.last[deviceID]; ok && now.Sub(t) < time.Second {
		return false
	}
	l.last[deviceID] = now
	return true
}
