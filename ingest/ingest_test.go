package ingest_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/ingest"
	"github.com/pylonhq/pylon/mock"
	"github.com/pylonhq/pylon/senml"
)

// memStore is a TelemetryService that keeps messages in memory and applies
// the store's dedup and replay rules.
type memStore struct {
	mock.TelemetryService
	mu         sync.Mutex
	seen       map[uint64]bool
	high       uint64
	writes     int
	readings   int
	quarantine []*pylon.QuarantinedMessage
	fail       error
}

// newGatedStore returns a memStore whose writes wait until gate is closed.
func newGatedStore() (*memStore, chan struct{}) {
	s, gate := newMemStore(), make(chan struct{})
	write := s.WriteMessagesFn
	s.WriteMessagesFn = func(ctx context.Context, msgs []*pylon.TelemetryMessage) ([]pylon.WriteStatus, error) {
		<-gate
		return write(ctx, msgs)
	}
	return s, gate
}

func newMemStore() *memStore {
	s := &memStore{seen: map[uint64]bool{}}
	s.WriteMessagesFn = func(ctx context.Context, msgs []*pylon.TelemetryMessage) ([]pylon.WriteStatus, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.fail != nil {
			return nil, s.fail
		}
		s.writes++
		out := make([]pylon.WriteStatus, len(msgs))
		for i, m := range msgs {
			switch {
			case s.seen[m.Seq]:
				out[i] = pylon.WriteDuplicate
			case m.Seq+pylon.ReplayWindow < s.high:
				out[i] = pylon.WriteReplay
			default:
				s.seen[m.Seq] = true
				s.high = max(s.high, m.Seq)
				s.readings += len(m.Readings)
			}
		}
		return out, nil
	}
	s.QuarantineMessageFn = func(ctx context.Context, m *pylon.QuarantinedMessage) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.quarantine = append(s.quarantine, m)
		// As the real stores do: they set what they stored.
		m.ID, m.Received, m.Code = int64(len(s.quarantine)), m.Received.UTC(), strings.Clone(m.Code)
		return nil
	}
	return s
}

// recEvents records the events published to it.
type recEvents struct {
	mu     sync.Mutex
	events []pylon.Event
}

func (r *recEvents) PublishEvent(e pylon.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recEvents) Subscribe(context.Context, string) pylon.Subscription { return nil }

func (r *recEvents) rejected() []pylon.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []pylon.Event
	for _, e := range r.events {
		if e.Type == pylon.EventRejected {
			out = append(out, e)
		}
	}
	return out
}

func startIngester(t *testing.T, store pylon.TelemetryService) *ingest.Ingester {
	return startIngesterWith(t, ingest.Options{Telemetry: store})
}

func startIngesterWith(t *testing.T, opts ingest.Options) *ingest.Ingester {
	t.Helper()
	in := ingest.New(opts)
	in.Start()
	t.Cleanup(func() { in.Close() })
	return in
}

func sealed(t testing.TB, key crypto.Signer, seq uint64, recs []senml.Record) []byte {
	t.Helper()
	pack, err := senml.EncodeCBOR(recs)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := envelope.Seal(key, seq, pack, envelope.SealOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func temp(v float64) []senml.Record {
	return []senml.Record{{Name: "temp", Unit: "Cel", Value: &v}}
}

func TestIngest(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	store := newMemStore()
	events := &recEvents{}
	in := startIngesterWith(t, ingest.Options{Telemetry: store, Events: events})
	ctx := context.Background()

	tests := []struct {
		name       string
		payload    []byte
		wantReason byte
		wantStatus pylon.WriteStatus
		wantErr    bool
		wantCode   string
	}{
		{"valid", sealed(t, key, 10000, temp(21.5)), ingest.ReasonSuccess, pylon.WriteStored, false, ""},
		{"duplicate", sealed(t, key, 10000, temp(21.5)), ingest.ReasonSuccess, pylon.WriteDuplicate, false, ""},
		{"out of order within window", sealed(t, key, 9000, temp(21)), ingest.ReasonSuccess, pylon.WriteStored, false, ""},
		{"replay below window", sealed(t, key, 10000-pylon.ReplayWindow-1, temp(21)), ingest.ReasonNotAuthorized, 0, true, ingest.CodeUnauthorized},
		{"another device's key", sealed(t, other, 10001, temp(21)), ingest.ReasonNotAuthorized, 0, true, ingest.CodeUnauthorized},
		{"algorithm confusion", sealed(t, edKey, 10002, temp(21)), ingest.ReasonNotAuthorized, 0, true, ingest.CodeUnauthorized},
		{"garbage", []byte("hello"), ingest.ReasonPayloadInvalid, 0, true, ingest.CodeInvalid},
		{"unknown unit", sealed(t, key, 10003, []senml.Record{{Name: "d", Unit: "furlong", Value: ptr(1)}}), ingest.ReasonPayloadInvalid, 0, true, ingest.CodeInvalid},
		{"too large", make([]byte, pylon.MaxMessageBytes+1), ingest.ReasonTooLarge, 0, true, ingest.CodeTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := in.Ingest(ctx, "dev1", &key.PublicKey, tt.payload)
			if res.Reason != tt.wantReason || (res.Err != nil) != tt.wantErr || res.Retry {
				t.Fatalf("got reason %#x err %v retry %v, want %#x err=%v", res.Reason, res.Err, res.Retry, tt.wantReason, tt.wantErr)
			}
			if !tt.wantErr && res.Status != tt.wantStatus {
				t.Fatalf("got status %v, want %v", res.Status, tt.wantStatus)
			}
			if got := res.Code(); got != tt.wantCode {
				t.Fatalf("got code %q, want %q", got, tt.wantCode)
			}
			if tt.wantErr && pylon.ErrorMessage(res.Err) == "internal error" {
				t.Fatalf("refusal without a message for the device: %v", res.Err)
			}
		})
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if store.readings != 2 {
		t.Errorf("stored readings: got %d, want 2", store.readings)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(store.quarantine) < 6 && time.Now().Before(deadline) {
		store.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		store.mu.Lock()
	}
	if len(store.quarantine) != 6 {
		t.Fatalf("quarantined: got %d, want 6", len(store.quarantine))
	}
	// Each kept with its code, and its sequence number only where the
	// signature verified.
	want := []struct {
		code string
		seq  uint64
	}{
		{ingest.CodeUnauthorized, 10000 - pylon.ReplayWindow - 1}, // replay: signed, so its number is known
		{ingest.CodeUnauthorized, 0},                              // another device's key
		{ingest.CodeUnauthorized, 0},                              // algorithm confusion
		{ingest.CodeInvalid, 0},                                   // garbage
		{ingest.CodeInvalid, 10003},                               // unknown unit
		{ingest.CodeTooLarge, 0},
	}
	rejected := events.rejected()
	if len(rejected) != len(want) {
		t.Fatalf("got %d rejected events, want %d", len(rejected), len(want))
	}
	for i, w := range want {
		if q := store.quarantine[i]; q.Code != w.code || q.Seq != w.seq || q.DeviceID != "dev1" || q.Reason == "" {
			t.Errorf("quarantined %d: got code %q seq %d device %q reason %q, want code %q seq %d", i, q.Code, q.Seq, q.DeviceID, q.Reason, w.code, w.seq)
		}
		if e := rejected[i]; e.Code != w.code || e.Seq != w.seq || e.DeviceID != "dev1" || e.Reason == "" {
			t.Errorf("rejected event %d: got code %q seq %d device %q reason %q, want code %q seq %d", i, e.Code, e.Seq, e.DeviceID, e.Reason, w.code, w.seq)
		}
	}
}

func TestIngest_StoreFailureAsksForRetry(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	store := newMemStore()
	store.fail = errors.New("disk full")
	in := startIngester(t, store)
	res := in.Ingest(context.Background(), "dev1", &key.PublicKey, sealed(t, key, 1, temp(1)))
	if !res.Retry || res.Err == nil || res.Reason == ingest.ReasonSuccess || res.Code() != "" {
		t.Fatalf("got %+v, want a retry without a refusal code", res)
	}
}

func TestIngest_GroupCommit(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	store := newMemStore()
	slow := store.WriteMessagesFn
	store.WriteMessagesFn = func(ctx context.Context, msgs []*pylon.TelemetryMessage) ([]pylon.WriteStatus, error) {
		time.Sleep(2 * time.Millisecond) // a commit takes a while: messages gather meanwhile
		return slow(ctx, msgs)
	}
	in := startIngester(t, store)
	const n = 400
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = sealed(t, key, uint64(i+1), temp(float64(i)))
	}
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if res := in.Ingest(context.Background(), "dev1", &key.PublicKey, msgs[i]); res.Err == nil && res.Status == pylon.WriteStored {
				ok.Add(1)
			}
		}(i)
	}
	wg.Wait()
	store.mu.Lock()
	defer store.mu.Unlock()
	if ok.Load() != n || store.readings != n {
		t.Fatalf("stored %d (readings %d), want %d", ok.Load(), store.readings, n)
	}
	if store.writes >= n/4 {
		t.Fatalf("got %d commits for %d concurrent messages, want far fewer (group commit)", store.writes, n)
	}
	t.Logf("%d messages in %d commits", n, store.writes)
}

func TestIngest_CloseAnswersEveryone(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	store := newMemStore()
	in := ingest.New(ingest.Options{Telemetry: store})
	in.Start()
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res := in.Ingest(context.Background(), "dev1", &key.PublicKey, sealed(t, key, uint64(i+1), temp(1)))
			if res.Err != nil && !res.Retry {
				t.Errorf("message %d: refused with %v during shutdown, want stored or retry", i, res.Err)
			}
		}(i)
	}
	in.Close()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Ingest calls still blocked after Close")
	}
}

func ptr(v float64) *float64 { return &v }

func TestIngest_CloseKeepsQuarantine(t *testing.T) {
	store := newMemStore()
	in := ingest.New(ingest.Options{Telemetry: store})
	in.Start()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	const n = 20
	for i := range n {
		if res := in.Ingest(context.Background(), "dev1", &key.PublicKey, []byte{byte(i)}); res.Err == nil {
			t.Fatalf("garbage %d accepted", i)
		}
	}
	in.Close()
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.quarantine) != n {
		t.Fatalf("quarantined after Close: got %d, want %d", len(store.quarantine), n)
	}
}

// TestSubmit_Order checks that Submit returns before the commit, that one
// device's results come in the order of its Submit calls, refusals
// included, and that messages submitted one after another share commits.
func TestSubmit_Order(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	store, gate := newGatedStore()
	in := startIngester(t, store)
	const n = 200
	var (
		mu   sync.Mutex
		got  []uint64 // message numbers in the order of their results
		errs []bool
		wg   sync.WaitGroup
	)
	for i := range n {
		payload := sealed(t, key, uint64(i+1), temp(float64(i)))
		if i%10 == 5 {
			payload[len(payload)-1] ^= 1 // a broken signature: refused before the store
		}
		wg.Add(1)
		in.Submit(context.Background(), "dev1", ingest.NewKey(&key.PublicKey), payload, func(r ingest.Result) {
			mu.Lock()
			got, errs = append(got, uint64(i+1)), append(errs, r.Err != nil)
			mu.Unlock()
			wg.Done()
		})
	}
	mu.Lock()
	early := len(got)
	mu.Unlock()
	if early != 0 {
		t.Fatalf("%d results before any commit, want none: a refusal must wait for the messages before it", early)
	}
	close(gate)
	wg.Wait()
	for i, seq := range got {
		if seq != uint64(i+1) {
			t.Fatalf("result %d is of message %d, want results in submission order", i, seq)
		}
		if want := i%10 == 5; errs[i] != want {
			t.Fatalf("message %d: refused %v, want %v", seq, errs[i], want)
		}
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if store.readings != n-n/10 {
		t.Fatalf("stored %d readings, want %d", store.readings, n-n/10)
	}
	if store.writes >= 10 {
		t.Fatalf("%d commits for %d messages submitted in a row, want few", store.writes, n)
	}
}

// TestSubmit_Batched submits the messages of several Ed25519 devices at
// once, so that the verifiers check their signatures in batches, with bad
// ones among them: a damaged signature and one by another device's key.
// Exactly those are refused (0x87), the others stored, and each device's
// results come in order.
func TestSubmit_Batched(t *testing.T) {
	store := newMemStore()
	in := startIngester(t, store)
	const devices, n = 8, 100
	keys := make([]ed25519.PrivateKey, devices)
	for d := range keys {
		_, keys[d], _ = ed25519.GenerateKey(rand.Reader)
	}
	bad := func(d, i int) bool { return (i+d)%17 == 3 }
	var wg sync.WaitGroup
	results := make([][]ingest.Result, devices)
	for d := range devices {
		id := fmt.Sprintf("dev%d", d)
		key := ingest.NewKey(keys[d].Public())
		payloads := make([][]byte, n)
		for i := range payloads {
			signer := keys[d]
			if bad(d, i) && d%2 == 1 {
				signer = keys[(d+1)%devices] // another device's key
			}
			// memStore keeps one sequence space: give each device its own
			// range, all within one replay window of each other, so that
			// the order in which devices commit does not matter.
			payloads[i] = sealed(t, signer, uint64(d*n+i+1), temp(float64(i)))
			if bad(d, i) && d%2 == 0 {
				payloads[i][len(payloads[i])-1] ^= 1
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mu sync.Mutex
			var done sync.WaitGroup
			done.Add(n)
			for i := range payloads {
				in.Submit(context.Background(), id, key, payloads[i], func(r ingest.Result) {
					mu.Lock()
					results[d] = append(results[d], r)
					mu.Unlock()
					done.Done()
				})
			}
			done.Wait()
		}()
	}
	wg.Wait()
	stored := 0
	for d := range devices {
		for i, r := range results[d] {
			if want := uint64(d*n + i + 1); r.Err == nil && r.Seq != want {
				t.Fatalf("dev%d: result %d is of seq %d, want %d: out of order", d, i, r.Seq, want)
			}
			switch {
			case bad(d, i) && r.Reason != ingest.ReasonNotAuthorized:
				t.Errorf("dev%d message %d (bad signature): got reason 0x%02x (%v), want 0x87", d, i+1, r.Reason, r.Err)
			case !bad(d, i) && r.Err != nil:
				t.Errorf("dev%d message %d: refused: %v", d, i+1, r.Err)
			case !bad(d, i):
				stored++
			}
		}
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if store.readings != stored {
		t.Fatalf("store holds %d readings, want the %d accepted", store.readings, stored)
	}
}

// TestSubmit_MaxHeldDecoded checks that MaxHeld bounds what messages hold
// once decoded, not only their payloads: small zstd messages that decode to
// 1,000 readings each, from 8 devices, with the commits held back. The
// budget may be overshot by one message's decoding per decoder at most;
// once the commits go on, every message is answered.
func TestSubmit_MaxHeldDecoded(t *testing.T) {
	store, gate := newGatedStore()
	const maxHeld = 1 << 20
	in := startIngesterWith(t, ingest.Options{Telemetry: store, MaxHeld: maxHeld})
	recs := make([]senml.Record, pylon.MaxReadingsPerMessage)
	for i := range recs {
		v := 1.0
		recs[i] = senml.Record{Name: "t", Unit: "Cel", Value: &v, Time: -float64(i)}
	}
	pack, err := senml.EncodeCBOR(recs)
	if err != nil {
		t.Fatal(err)
	}
	const devices, n = 8, 100
	var answered atomic.Int64
	for d := range devices {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		key := ingest.NewKey(priv.Public())
		payloads := make([][]byte, n)
		for i := range payloads {
			if payloads[i], err = envelope.Seal(priv, uint64(d*200+i+1), pack, envelope.SealOptions{Encoding: envelope.EncodingZstd}); err != nil {
				t.Fatal(err)
			}
		}
		go func() {
			for _, p := range payloads {
				in.Submit(context.Background(), fmt.Sprintf("dev%d", d), key, p, func(r ingest.Result) {
					if r.Err != nil {
						t.Errorf("refused: %v", r.Err)
					}
					answered.Add(1)
				})
			}
		}()
	}
	// One decoded message: its readings, as the budget counts them, and
	// its decompressed pack.
	one := int64(len(recs))*160 + int64(len(pack))
	limit := maxHeld + int64(runtime.GOMAXPROCS(0)+devices)*one
	var most int64
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		most = max(most, in.HeldUsed())
	}
	if most > limit {
		t.Errorf("held %d bytes with MaxHeld %d; want at most %d (one decoded message per decoder over)", most, maxHeld, limit)
	}
	close(gate)
	for deadline := time.Now().Add(20 * time.Second); answered.Load() < devices*n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages answered 20 s after the commits went on", answered.Load(), devices*n)
		}
	}
	if used := in.HeldUsed(); used != 0 {
		t.Errorf("%d bytes still counted after every answer", used)
	}
}

// TestSubmit_AfterClose answers at once, with a retry, a message submitted
// after Close.
func TestSubmit_AfterClose(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	in := ingest.New(ingest.Options{Telemetry: newMemStore()})
	in.Start()
	in.Close()
	var res *ingest.Result
	in.Submit(context.Background(), "dev1", ingest.NewKey(&key.PublicKey), sealed(t, key, 1, temp(1)), func(r ingest.Result) { res = &r })
	if res == nil || !res.Retry {
		t.Fatalf("got %+v, want a retry at once", res)
	}
}

// TestSubmit_MaxHeld checks that Submit waits while the messages held
// reach MaxHeld, and goes on once their results are out.
func TestSubmit_MaxHeld(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	store, gate := newGatedStore()
	in := ingest.New(ingest.Options{Telemetry: store, MaxHeld: 1}) // one message at a time
	in.Start()
	t.Cleanup(func() { in.Close() })
	results := make(chan ingest.Result, 2)
	in.Submit(context.Background(), "dev1", ingest.NewKey(&key.PublicKey), sealed(t, key, 1, temp(1)), func(r ingest.Result) { results <- r })
	second := make(chan struct{})
	go func() {
		in.Submit(context.Background(), "dev1", ingest.NewKey(&key.PublicKey), sealed(t, key, 2, temp(2)), func(r ingest.Result) { results <- r })
		close(second)
	}()
	select {
	case <-second:
		t.Fatal("second Submit returned while the first message was held and MaxHeld reached")
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	<-second
	for range 2 {
		if r := <-results; r.Err != nil || r.Status != pylon.WriteStored {
			t.Fatalf("got %+v, want stored", r)
		}
	}
}

// TestSubmit_VerifyLinger checks that a verifier waits for a batch of
// Ed25519 signatures under VerifyLinger, and no longer than needed: the
// first message, with none before it, does not wait; one that follows
// closely waits; the eighth ends the wait for all; a message with another
// algorithm does not wait; Close ends a wait.
func TestSubmit_VerifyLinger(t *testing.T) {
	store := newMemStore()
	in := ingest.New(ingest.Options{Telemetry: store, VerifyLinger: time.Hour})
	in.Start()
	t.Cleanup(func() { in.Close() })
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ed := ingest.NewKey(edKey.Public())
	results := make(chan ingest.Result, 16)
	submit := func(id string, key *envelope.Key, signer crypto.Signer, seq uint64) {
		in.Submit(context.Background(), id, key, sealed(t, signer, seq, temp(float64(seq))), func(r ingest.Result) { results <- r })
	}
	next := func(what string) ingest.Result {
		t.Helper()
		select {
		case r := <-results:
			return r
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no result", what)
		}
		return ingest.Result{}
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case r := <-results:
			t.Fatalf("%s: got a result (seq %d, err %v) while the verifier should wait for its batch", what, r.Seq, r.Err)
		case <-time.After(100 * time.Millisecond):
		}
	}

	submit("ed", ed, edKey, 1)
	if r := next("a first message"); r.Err != nil || r.Seq != 1 {
		t.Fatalf("first message: got seq %d, err %v; want seq 1 stored", r.Seq, r.Err)
	}
	submit("ed", ed, edKey, 2)
	quiet("an Ed25519 message just after another")
	for seq := uint64(3); seq <= 9; seq++ {
		submit("ed", ed, edKey, seq)
	}
	for seq := uint64(2); seq <= 9; seq++ {
		if r := next("a batch of 8"); r.Err != nil || r.Seq != seq {
			t.Fatalf("batch of 8: got seq %d, err %v; want seq %d stored", r.Seq, r.Err, seq)
		}
	}

	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	submit("p256", ingest.NewKey(&p256.PublicKey), p256, 100)
	if r := next("a P-256 message"); r.Err != nil {
		t.Fatalf("P-256 message: %v", r.Err)
	}

	submit("ed", ed, edKey, 10)
	quiet("a lone Ed25519 message after others")
	in.Close()
	if r := next("a waiting message at Close"); r.Err != nil && !r.Retry {
		t.Fatalf("waiting message at Close: refused with %v, want stored or retry", r.Err)
	}
}

// TestSubmit_VerifyLingerSparse checks that an Ed25519 message that comes
// longer after the one before than VerifyLinger does not wait for a
// batch: the next is unlikely to come in time. Messages of other
// algorithms, which a batch does not check, do not count: an Ed25519
// message just after a P-256 one of the same device (the same verifier)
// does not wait either.
func TestSubmit_VerifyLingerSparse(t *testing.T) {
	const linger = time.Second
	in := startIngesterWith(t, ingest.Options{Telemetry: newMemStore(), VerifyLinger: linger})
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ed := ingest.NewKey(edKey.Public())
	p256Key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p256 := ingest.NewKey(&p256Key.PublicKey)
	type pending struct {
		seq   uint64
		start time.Time
		done  chan ingest.Result
	}
	submit := func(seq uint64, key *envelope.Key, signer crypto.Signer) pending {
		p := pending{seq, time.Now(), make(chan ingest.Result, 1)}
		in.Submit(context.Background(), "dev", key, sealed(t, signer, seq, temp(1)), func(r ingest.Result) { p.done <- r })
		return p
	}
	answered := func(p pending) {
		t.Helper()
		seq := p.seq
		select {
		case r := <-p.done:
			if r.Err != nil || r.Seq != seq {
				t.Fatalf("seq %d: got seq %d, err %v; want it stored", seq, r.Seq, r.Err)
			}
			if d := time.Since(p.start); d >= linger {
				t.Fatalf("seq %d: answered after %v, want no wait for a batch (VerifyLinger %v)", seq, d, linger)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("seq %d: no result 5 s after submission", seq)
		}
	}
	answered(submit(1, ed, edKey))
	time.Sleep(linger + linger/10)
	answered(submit(2, ed, edKey))
	time.Sleep(linger + linger/10)
	p := submit(3, p256, p256Key)
	answered(submit(4, ed, edKey))
	answered(p)
}

// TestSubmit_VerifyLingerEnds checks that an Ed25519 message that follows
// another closely, with no Close to end the wait, is answered once
// VerifyLinger has passed since its submission, and not before; twice, as
// the verifier reuses its timer. Each is submitted as soon as the message
// before it is answered, which does not wait itself (the first, or one a
// whole linger after the one before); so the gap between the two is one
// message's round trip, well under the linger of a second.
func TestSubmit_VerifyLingerEnds(t *testing.T) {
	const linger = time.Second
	in := startIngesterWith(t, ingest.Options{Telemetry: newMemStore(), VerifyLinger: linger})
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	key := ingest.NewKey(edKey.Public())
	submit := func(seq uint64) (ingest.Result, time.Duration) {
		t.Helper()
		done := make(chan ingest.Result, 1)
		start := time.Now()
		in.Submit(context.Background(), "ed", key, sealed(t, edKey, seq, temp(1)), func(r ingest.Result) { done <- r })
		select {
		case r := <-done:
			if r.Err != nil || r.Seq != seq {
				t.Fatalf("seq %d: got seq %d, err %v; want it stored", seq, r.Seq, r.Err)
			}
			return r, time.Since(start)
		case <-time.After(5 * time.Second):
			t.Fatalf("seq %d: no result 5 s after submission, with VerifyLinger %v", seq, linger)
		}
		return ingest.Result{}, 0
	}
	for seq := uint64(1); seq <= 4; seq += 2 {
		submit(seq)
		if _, d := submit(seq + 1); d < linger {
			t.Fatalf("seq %d: answered after %v, before VerifyLinger (%v) had passed", seq+1, d, linger)
		}
	}
}

// TestSubmit_VerifyLingerCountsWaitedFor checks that a message that came
// during a wait counts as an arrival: one submitted halfway through a
// wait makes the next, submitted as the wait ends, expected soon, so that
// it waits in turn. Were it not counted, the last arrival would be the
// one that started the wait, a whole linger before, and it would not.
func TestSubmit_VerifyLingerCountsWaitedFor(t *testing.T) {
	const linger = 2 * time.Second
	in := startIngesterWith(t, ingest.Options{Telemetry: newMemStore(), VerifyLinger: linger})
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	key := ingest.NewKey(edKey.Public())
	results := make(chan ingest.Result, 4)
	submit := func(seq uint64) time.Time {
		start := time.Now()
		in.Submit(context.Background(), "ed", key, sealed(t, edKey, seq, temp(1)), func(r ingest.Result) { results <- r })
		return start
	}
	next := func(seq uint64) {
		t.Helper()
		select {
		case r := <-results:
			if r.Err != nil || r.Seq != seq {
				t.Fatalf("got seq %d, err %v; want seq %d stored", r.Seq, r.Err, seq)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("seq %d: no result", seq)
		}
	}
	submit(1) // the first: no wait
	next(1)
	submit(2) // waits: it follows the first by a round trip
	time.Sleep(linger / 2)
	submit(3) // taken during that wait
	next(2)
	next(3)
	start := submit(4)
	next(4)
	if d := time.Since(start); d < linger/4 {
		t.Fatalf("seq 4: answered after %v, want it to wait for a batch: seq 3 came %v before it", d, linger/2)
	}
}
