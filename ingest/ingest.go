// Package ingest turns telemetry messages received by the broker into
// stored readings: verify the device's signature, decompress, decode and
// validate the SenML, then store through a group committer, and only then
// let the broker acknowledge.
//
// # Pipeline
//
//	broker hook ──Submit()──▶ envelope.Key.Parse (size, structure, header, algorithm)
//	  ──▶ verifier ──▶ signatures of all the messages waiting, in one batch
//	                   envelope.Signed.OpenVerified (decompression caps)
//	                   senml.Decode (names, units, values, times)
//	  ──▶ committer queue ──▶ TelemetryService.WriteMessages
//	                          (one transaction for every message queued meanwhile)
//	  ◀── Result ─────────── durable commit
//
// Submit parses the envelope on its caller's goroutine (the device's
// connection), hands the message to a verifier goroutine and returns; the
// result comes later, to a callback, once the message is durably stored,
// so the PUBACK the broker sends then means "stored". A connection can so
// have many messages in flight: while one transaction commits, the next
// batch gathers, with several messages of each busy device. The verifiers
// (one per CPU, each device's messages always to the same one) check the
// Ed25519 signatures of all the messages waiting for them at once
// (ed25519voi.Batch: about half the work of one by one), waiting up to
// VerifyLinger for a batch of eight under moderate load, then decompress
// and decode; messages with other signatures, which a batch does not
// speed up, Submit checks and decodes itself, and the verifier only keeps
// their place in line. Results are delivered by a few completion
// goroutines, each device's always by the same one and in the order of
// its Submit calls, refusals included. Ingest is Submit that
// waits for its result. A refused message is never stored as readings: it
// gets a reason, is kept in a bounded quarantine, and is reported to the
// device on devices/{id}/errors by the broker.
package ingest

import (
	"context"
	"crypto"
	"errors"
	"hash/maphash"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/ed25519voi"
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

	// MaxBatch is how many messages one commit takes at most (1024 if 0).
	MaxBatch int

	// Linger is how long the committer waits, after the first message of
	// a batch, for more to share its commit, unless MaxBatch are queued
	// (DefaultLinger if 0; none if negative). A commit has a fixed cost, so
	// under moderate load, when most would hold one message, lingering
	// saves CPU for a little latency.
	Linger time.Duration

	// VerifyLinger is how long a verifier waits, after the first message
	// of a batch was submitted, for more messages to check in one batch of
	// Ed25519 signatures, while it has fewer than minVerifyBatch
	// (DefaultVerifyLinger if 0; none if negative). A batch of 8 costs
	// about two thirds a signature of checks one by one (ed25519voi's
	// BenchmarkVerify); under moderate load a verifier would otherwise
	// check one or two at a time. A verifier with a backlog does not wait,
	// nor does one whose next Ed25519 message, expected as far after the
	// last as the last came after the one before, would come after the
	// wait, nor one that has had a single Ed25519 message so far: sparse
	// traffic (a lone device, a quiet fleet) would wait for nothing.
	VerifyLinger time.Duration

	// MaxHeld bounds the memory of the messages between Submit and their
	// result, in bytes (an estimate: payload, decoded SenML and readings);
	// 256 MiB if 0. Submit waits while it is reached.
	MaxHeld int64
}

// Defaults of Options.
const (
	DefaultLinger       = time.Millisecond
	DefaultVerifyLinger = 2 * time.Millisecond
)

// readingSize is what one decoded reading is counted for in MaxHeld.
const readingSize = 160

// Ingester verifies, decodes and stores telemetry messages.
type Ingester struct {
	opts    Options
	log     *slog.Logger
	queue   chan *item
	quar    chan *pylon.QuarantinedMessage
	m       *metrics
	limiter logLimiter

	// verifiers check signatures and decode, workers deliver results; a
	// device's messages always go to the same one of each.
	verifiers []chan *item
	verifyWG  sync.WaitGroup
	workers   []chan *item
	seed      maphash.Seed
	closeOnce sync.Once

	// mu guards closed: Submit queues under the read lock, so that once
	// Close has set closed, nothing more is queued and the committer's
	// final drain finds everything.
	mu     sync.RWMutex
	closed bool

	held budget // of MaxHeld

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// item is one submitted message on its way through the committer.
type item struct {
	device  string
	signed  *envelope.Signed        // parsed, for the verifier
	msg     *pylon.TelemetryMessage // nil for a refusal, which only keeps its place in line
	res     Result                  // the result of a refusal
	payload []byte                  // for the quarantine, if the store finds a replay
	queued  time.Time
	now     time.Time
	wr      writeResult // set by the committer
	done    func(Result)
	size    int64 // counted in Ingester.held
}

// batchable reports whether the item has a signature that a batch checks
// (Ed25519), still to be checked.
func (it *item) batchable() bool {
	return it.signed != nil && ed25519voi.Batchable(it.signed.Verifier)
}

// budget counts bytes up to a maximum; take waits for room.
type budget struct {
	mu         sync.Mutex
	cond       sync.Cond
	used       int64
	max        int64
	downstream int // messages sent to the committer, not yet answered
	closed     bool
}

// take waits until n more bytes fit and counts them; it returns the
// count, capped at the maximum so that one large message always fits
// alone. It returns false, counting nothing, once the budget is closed.
func (b *budget) take(n int64) (int64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n = min(n, b.max)
	for !b.closed && b.used+n > b.max {
		b.cond.Wait()
	}
	if b.closed {
		return 0, false
	}
	b.used += n
	return n, true
}

// grow counts n more bytes for a message held already, once decoded. It
// waits for room only while messages are on their way to the store
// (sent, not yet done), which will free some; with none, it counts them at
// once: the bytes held are then those of messages still to be decoded,
// whose decoders would wait on each other. So the budget is overshot by
// at most one message's decoding per decoder, and only when nothing is
// being stored.
func (b *budget) grow(n int64) {
	b.mu.Lock()
	for !b.closed && b.used+n > b.max && b.downstream > 0 {
		b.cond.Wait()
	}
	b.used += n
	b.mu.Unlock()
}

// sent counts a message handed to the committer.
func (b *budget) sent() {
	b.mu.Lock()
	b.downstream++
	b.mu.Unlock()
}

// done gives back the n bytes of a message that sent counted, now
// answered.
func (b *budget) done(n int64) {
	b.mu.Lock()
	b.downstream--
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// give gives back n bytes that take counted, of a message never sent.
func (b *budget) give(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// close makes every take, waiting or later, return false.
func (b *budget) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cond.Broadcast()
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
		opts.MaxBatch = 1024
	}
	if opts.Linger == 0 {
		opts.Linger = DefaultLinger
	}
	if opts.VerifyLinger == 0 {
		opts.VerifyLinger = DefaultVerifyLinger
	}
	if opts.MaxHeld <= 0 {
		opts.MaxHeld = 256 << 20
	}
	ctx, cancel := context.WithCancel(context.Background())
	workers := make([]chan *item, max(2, runtime.GOMAXPROCS(0)))
	for i := range workers {
		workers[i] = make(chan *item, 2*opts.MaxBatch)
	}
	verifiers := make([]chan *item, runtime.GOMAXPROCS(0))
	for i := range verifiers {
		verifiers[i] = make(chan *item, verifyQueue)
	}
	in := &Ingester{
		opts:      opts,
		log:       opts.Logger,
		queue:     make(chan *item, 4*opts.MaxBatch),
		quar:      make(chan *pylon.QuarantinedMessage, 1024),
		m:         newMetrics(opts.Registerer),
		workers:   workers,
		verifiers: verifiers,
		seed:      maphash.MakeSeed(),
		ctx:       ctx,
		cancel:    cancel,
	}
	in.held.max = opts.MaxHeld
	in.held.cond.L = &in.held.mu
	return in
}

// Start starts the verifiers, the committer, the completion goroutines and
// the quarantine writer.
func (in *Ingester) Start() {
	in.verifyWG.Add(len(in.verifiers))
	for _, v := range in.verifiers {
		go in.verifyLoop(v)
	}
	in.wg.Add(2 + len(in.workers))
	go in.commitLoop()
	go in.quarantineLoop()
	for _, w := range in.workers {
		go in.completeLoop(w)
	}
}

// Close stops accepting messages, verifies and commits what was submitted,
// delivers every result and waits.
func (in *Ingester) Close() error {
	in.held.close()
	in.mu.Lock()
	in.closed = true
	in.mu.Unlock()
	// No Submit sends to the verifiers any more: they finish what they
	// have, queue it for the committer, and end.
	in.closeOnce.Do(func() {
		for _, v := range in.verifiers {
			close(v)
		}
	})
	in.verifyWG.Wait()
	in.cancel()
	in.wg.Wait()
	return nil
}

// opener opens telemetry envelopes, checking Ed25519 signatures with
// curve25519-voi (see package ed25519voi; the verifiers batch them) and
// the others with go-cose.
var opener = envelope.Opener{NewVerifier: ed25519voi.NewVerifier}

// NewKey returns a device's public key (of the certificate it connected
// with) ready for Submit: its verifier is made once, here, and serves all
// the messages of the connection.
func NewKey(pub crypto.PublicKey) *envelope.Key { return opener.NewKey(pub) }

// errClosed answers messages that arrive during shutdown: not stored, so
// the device must send them again.
var errClosed = errors.New("ingest: shutting down")

// Ingest handles one telemetry message of deviceID, signed with the key of
// pub (the public key of the certificate the device connected with). It
// returns once the message is durably stored, or refused.
func (in *Ingester) Ingest(ctx context.Context, deviceID string, pub crypto.PublicKey, payload []byte) Result {
	ch := make(chan Result, 1)
	in.Submit(ctx, deviceID, NewKey(pub), payload, func(r Result) { ch <- r })
	return <-ch
}

// Submit handles one telemetry message of deviceID, as Ingest, without
// waiting: it parses the message, hands it to a verifier and returns (a
// message whose signature cannot be checked in a batch, not Ed25519, it
// checks and decodes itself).
// done is called exactly once with the result: once the message is
// durably stored, or refused, or could not be stored (Result.Retry). The
// results of a device's messages come in the order of its Submit calls,
// from one goroutine, so done must not block for long; only a Retry
// (shutdown, ctx ended before the message was queued) may come at once,
// on the caller's goroutine, ahead of earlier results. A queued message
// is committed even if ctx ends meanwhile. Submit blocks while the
// verifier's queue is full, or while the messages held reach MaxHeld.
func (in *Ingester) Submit(ctx context.Context, deviceID string, key *envelope.Key, payload []byte, done func(Result)) {
	it := &item{device: deviceID, payload: payload, queued: time.Now(), now: in.opts.Now(), done: done}
	if s, err := key.Parse(payload); err != nil {
		it.res = in.refuse(deviceID, 0, payload, it.now, err)
	} else {
		it.signed = s
	}
	var ok bool
	if it.size, ok = in.held.take(int64(len(payload))); !ok {
		done(in.retry(deviceID, 0, errClosed))
		return
	}
	if s := it.signed; s != nil && !ed25519voi.Batchable(s.Verifier) {
		// Only Ed25519 gains from a batch: check the others here, on
		// the connections' goroutines, in parallel, as their decoding.
		if err := s.Verify(); err != nil {
			in.refuseSigned(it, err)
		} else {
			in.decode(it)
		}
	}
	in.mu.RLock()
	defer in.mu.RUnlock()
	var seq uint64 // known if Submit decoded the message itself
	if it.msg != nil {
		seq = it.msg.Seq
	}
	if in.closed {
		in.held.give(it.size)
		done(in.retry(deviceID, seq, errClosed))
		return
	}
	select {
	case in.verifiers[in.shard(deviceID, len(in.verifiers))] <- it:
		// A verifier, the committer and a completion goroutine take it
		// from here.
	case <-ctx.Done():
		in.held.give(it.size)
		done(in.retry(deviceID, seq, ctx.Err()))
	}
}

const (
	// maxVerifyBatch is how many signatures a verifier checks at once at
	// most: past 64, a batch saves little more.
	maxVerifyBatch = 64

	// minVerifyBatch is how many Ed25519 signatures a verifier waits for,
	// up to Options.VerifyLinger, before it checks them.
	minVerifyBatch = 8

	// verifyQueue is the length of each verifier's queue.
	verifyQueue = 256
)

// verifyLoop takes the messages queued to v, as many as are waiting (up
// to maxVerifyBatch; see lingerVerify for when it waits for more), checks
// their signatures together, decodes them and queues them, in order, for
// the committer. It ends when v is closed.
func (in *Ingester) verifyLoop(v chan *item) {
	defer in.verifyWG.Done()
	var (
		batch   = ed25519voi.NewBatch()
		items   = make([]*item, 0, maxVerifyBatch)
		batched = make([]*item, 0, maxVerifyBatch)
		timer   = time.NewTimer(time.Hour)
	)
	timer.Stop()
	gaps := arrivals{gap: math.MaxInt64}
	for it := range v {
		items = append(items[:0], it)
	gather:
		for len(items) < maxVerifyBatch {
			select {
			case it, ok := <-v:
				if !ok {
					break gather
				}
				items = append(items, it)
			default:
				break gather
			}
		}
		items = in.lingerVerify(v, items, timer, &gaps)
		in.m.verifyBatch.Observe(float64(len(items)))
		batched = batched[:0]
		for _, it := range items {
			if s := it.signed; s == nil {
				continue // refused by Submit
			} else if batch.Add(s.Verifier, s.ToBeSigned, s.Signature) {
				batched = append(batched, it)
			} else if err := s.Verify(); err != nil {
				in.refuseSigned(it, err)
			}
		}
		for i, valid := range batch.Verify() {
			if !valid {
				in.refuseSigned(batched[i], envelope.ErrSignatureMismatch)
			}
		}
		for _, it := range items {
			if it.signed != nil {
				in.decode(it)
			}
			in.held.sent()
			in.queue <- it
		}
		clear(items)
		clear(batched)
	}
}

// arrivals follows the gap between the submissions of the last two
// Ed25519 messages (those a batch checks) a verifier took from its queue.
type arrivals struct {
	last time.Time
	gap  time.Duration // math.MaxInt64 until two messages came
}

func (a *arrivals) note(it *item) {
	switch {
	case !it.batchable():
		// Only these end a wait.
	case a.last.IsZero():
		a.gap = math.MaxInt64
		a.last = it.queued
	case it.queued.After(a.last):
		a.gap = it.queued.Sub(a.last)
		a.last = it.queued
	default:
		// Submitted before the last, by a concurrent Submit, but queued
		// after it: they came together.
		a.gap = 0
	}
}

// nextIn is how long from now the next Ed25519 message is expected, if
// it comes as far after the last as the last after the one before.
func (a *arrivals) nextIn() time.Duration {
	if a.gap == math.MaxInt64 {
		return a.gap
	}
	return a.gap - time.Since(a.last)
}

// lingerVerify notes the arrival of items and of every message it takes
// in gaps, and waits for more messages on v, adding them to items, while
// fewer than minVerifyBatch of them have signatures to check in a batch,
// until Options.VerifyLinger after the first of items was submitted. It
// does not wait if none has (other algorithms, refusals), nor if the first
// waited in the queue for that long already: a verifier with a backlog
// has its batches; nor if the next message, expected one last gap after
// the last, would come after the wait: it is unlikely to come in time.
func (in *Ingester) lingerVerify(v chan *item, items []*item, timer *time.Timer, gaps *arrivals) []*item {
	batchable := 0
	for _, it := range items {
		gaps.note(it)
		if it.batchable() {
			batchable++
		}
	}
	if batchable == 0 || batchable >= minVerifyBatch {
		return items
	}
	wait := in.opts.VerifyLinger - time.Since(items[0].queued)
	if wait <= 0 || gaps.nextIn() >= wait {
		return items
	}
	timer.Reset(wait)
	defer timer.Stop()
	for batchable < minVerifyBatch && len(items) < maxVerifyBatch {
		select {
		case it, ok := <-v:
			if !ok {
				return items
			}
			gaps.note(it)
			items = append(items, it)
			if it.batchable() {
				batchable++
			}
		case <-timer.C:
			return items
		}
	}
	return items
}

// refuseSigned refuses a parsed message whose signature did not verify.
func (in *Ingester) refuseSigned(it *item, err error) {
	it.signed = nil
	it.res = in.refuse(it.device, 0, it.payload, it.now, err)
}

// decode opens and decodes a message whose signature verified.
func (in *Ingester) decode(it *item) {
	s := it.signed
	it.signed = nil
	msg, err := s.OpenVerified()
	if err != nil {
		it.res = in.refuse(it.device, 0, it.payload, it.now, err)
		return
	}
	readings, err := senml.Decode(it.device, msg.ContentType, msg.Payload, it.now, in.opts.Limits)
	if err != nil {
		it.res = in.refuse(it.device, msg.Seq, it.payload, it.now, err)
		return
	}
	it.msg = &pylon.TelemetryMessage{DeviceID: it.device, Seq: msg.Seq, Received: it.now, Readings: readings}
	grown := int64(len(msg.Payload)) + readingSize*int64(len(readings))
	in.held.grow(grown)
	it.size += grown
}

// result returns the result of an item the committer is done with.
func (in *Ingester) result(it *item) Result {
	if it.msg == nil {
		return it.res
	}
	deviceID, seq, wr := it.device, it.msg.Seq, it.wr
	switch {
	case wr.err != nil:
		return in.retry(deviceID, seq, wr.err)
	case wr.status == pylon.WriteReplay:
		return in.refuse(deviceID, seq, it.payload, it.now, pylon.Errorf(pylon.EUNAUTHORIZED,
			"sequence number %d is a replay: it is more than %d below the highest stored", seq, pylon.ReplayWindow))
	}
	in.m.latency.Observe(time.Since(it.queued).Seconds())
	if wr.status == pylon.WriteDuplicate {
		in.m.messages.WithLabelValues("duplicate").Inc()
		return Result{Reason: ReasonSuccess, Status: wr.status, Seq: seq}
	}
	readings := it.msg.Readings
	in.m.messages.WithLabelValues("stored").Inc()
	in.m.readings.Add(float64(len(readings)))
	if in.opts.Events != nil {
		in.opts.Events.PublishEvent(pylon.Event{Type: pylon.EventReadings, DeviceID: deviceID, Time: it.now, Readings: readings})
	}
	return Result{Reason: ReasonSuccess, Status: wr.status, Seq: seq, Readings: len(readings)}
}

// completeLoop delivers the results of the items sent to w, in order.
func (in *Ingester) completeLoop(w chan *item) {
	defer in.wg.Done()
	for it := range w {
		it.done(in.result(it))
		in.held.done(it.size)
	}
}

// worker returns the completion goroutine's queue for deviceID.
func (in *Ingester) worker(deviceID string) chan *item {
	return in.workers[in.shard(deviceID, len(in.workers))]
}

// shard returns which of n goroutines handles deviceID's messages.
func (in *Ingester) shard(deviceID string, n int) int {
	return int(maphash.String(in.seed, deviceID) % uint64(n))
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
	res := Result{Reason: reason, Seq: seq, Err: pylon.Errorf(pylon.ErrorCode(err), "%s", msg)}
	code := res.Code()
	// q belongs to the quarantine loop once sent (the store sets its
	// fields): nothing here reads it after.
	q := &pylon.QuarantinedMessage{DeviceID: deviceID, Received: now, Reason: msg, Code: code, Seq: seq, Payload: payload}
	select {
	case in.quar <- q:
	default:
		in.m.quarantineDropped.Inc()
	}
	if in.opts.Events != nil {
		in.opts.Events.PublishEvent(pylon.Event{Type: pylon.EventRejected, DeviceID: deviceID, Time: now, Reason: msg, Code: code, Seq: seq})
	}
	return res
}

// retry reports a message that could not be stored now.
func (in *Ingester) retry(deviceID string, seq uint64, err error) Result {
	in.m.messages.WithLabelValues("failed").Inc()
	if in.limiter.allow(deviceID, in.opts.Now()) {
		in.log.Error("telemetry not stored; the device will resend", "device", deviceID, "seq", seq, "err", err)
	}
	return Result{Reason: ReasonUnspecified, Seq: seq, Err: err, Retry: true}
}

// commitLoop takes the first queued message, waits up to Linger for more,
// takes whatever else is queued, up to MaxBatch messages, and stores the
// batch in one transaction. While it commits, the next batch gathers.
func (in *Ingester) commitLoop() {
	defer in.wg.Done()
	defer func() {
		for _, w := range in.workers {
			close(w)
		}
	}()
	batch := make([]*item, 0, in.opts.MaxBatch)
	msgs := make([]*pylon.TelemetryMessage, 0, in.opts.MaxBatch)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		select {
		case it := <-in.queue:
			batch = append(batch[:0], it)
		case <-in.ctx.Done():
			in.drain()
			return
		}
		if in.opts.Linger > 0 {
			linger.Reset(in.opts.Linger)
		wait:
			for len(batch) < in.opts.MaxBatch {
				select {
				case it := <-in.queue:
					batch = append(batch, it)
				case <-linger.C:
					break wait
				case <-in.ctx.Done():
					break wait // the final drain commits the rest
				}
			}
			linger.Stop()
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
		if it.msg != nil {
			msgs = append(msgs, it.msg)
		}
	}
	var (
		statuses []pylon.WriteStatus
		err      error
	)
	if len(msgs) > 0 {
		start := time.Now()
		statuses, err = in.opts.Telemetry.WriteMessages(context.Background(), msgs)
		in.m.commit.Observe(time.Since(start).Seconds())
		in.m.batch.Observe(float64(len(msgs)))
		if err == nil && len(statuses) != len(msgs) {
			err = errors.New("ingest: store returned a wrong number of statuses")
		}
	}
	j := 0
	for _, it := range batch {
		if it.msg != nil {
			if err != nil {
				it.wr = writeResult{err: err}
			} else {
				it.wr = writeResult{status: statuses[j]}
			}
			j++
		}
		in.worker(it.device) <- it
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
