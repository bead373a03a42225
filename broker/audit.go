package broker

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/pylonhq/pylon"
)

// Bounds of the audit aggregation.
const (
	maxAuditBuckets = 10000 // distinct (action, object) pairs pending at once
	maxAuditSamples = 5     // sample topics or remote addresses per record
	minAuditTick    = 10 * time.Millisecond
)

// auditAggregator turns floods of events (ACL denials, refused connections)
// into at most one audit record per action and object (device) per period:
// a bucket opens at its first event and is written once it is a period old,
// with counts and a few samples. Close writes what is left.
type auditAggregator struct {
	svc   pylon.AuditService
	log   *slog.Logger
	now   func() time.Time // for record times; periods use the monotonic clock
	every time.Duration

	mu      sync.Mutex
	pending map[auditKey]*auditBucket
	dropped int // events lost because maxAuditBuckets was reached
}

type auditKey struct{ action, object string }

type auditBucket struct {
	actor       pylon.Principal
	opened      time.Time // time.Now, monotonic
	first, last time.Time // a.now
	count       int
	kinds       map[string]int // op, or refusal reason
	samples     []string       // topics, or remote addresses
}

// auditDetails is the Details of an aggregated record.
type auditDetails struct {
	Count       int            `json:"count"`
	Publish     int            `json:"publish,omitempty"`
	Subscribe   int            `json:"subscribe,omitempty"`
	Topics      []string       `json:"topics,omitempty"`
	Reasons     map[string]int `json:"reasons,omitempty"`
	RemoteAddrs []string       `json:"remote_addrs,omitempty"`
	First       time.Time      `json:"first"`
	Last        time.Time      `json:"last"`
}

func newAuditAggregator(svc pylon.AuditService, log *slog.Logger, now func() time.Time, every time.Duration) *auditAggregator {
	return &auditAggregator{svc: svc, log: log, now: now, every: every, pending: make(map[auditKey]*auditBucket)}
}

// add counts one event of kind for (action, object), keeping sample if
// there is room.
func (a *auditAggregator) add(action, object string, actor pylon.Principal, kind, sample string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := auditKey{action, object}
	bk := a.pending[k]
	if bk == nil {
		if len(a.pending) >= maxAuditBuckets {
			a.dropped++
			return
		}
		bk = &auditBucket{actor: actor, opened: time.Now(), first: a.now(), kinds: make(map[string]int)}
		a.pending[k] = bk
	}
	bk.count++
	bk.kinds[kind]++
	bk.last = a.now()
	if sample != "" && len(bk.samples) < maxAuditSamples && !slices.Contains(bk.samples, sample) {
		bk.samples = append(bk.samples, sample)
	}
}

// run writes due buckets until stop is closed.
func (a *auditAggregator) run(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(max(a.every/4, minAuditTick))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			a.flush(ctx, false)
		}
	}
}

// flush writes the buckets at least a period old, or all of them.
func (a *auditAggregator) flush(ctx context.Context, all bool) {
	type due struct {
		key auditKey
		bk  *auditBucket
	}
	var out []due
	now := time.Now()
	a.mu.Lock()
	for k, bk := range a.pending {
		if all || now.Sub(bk.opened) >= a.every {
			out = append(out, due{k, bk})
			delete(a.pending, k)
		}
	}
	dropped := a.dropped
	a.dropped = 0
	a.mu.Unlock()

	if dropped > 0 {
		a.log.Warn("mqtt audit aggregation full: events not recorded", "events", dropped)
	}
	slices.SortFunc(out, func(x, y due) int { return x.bk.opened.Compare(y.bk.opened) })
	for _, d := range out {
		rec := &pylon.AuditRecord{Time: a.now(), Action: d.key.action, Object: d.key.object, Details: d.bk.details(d.key.action)}
		if err := a.svc.AppendAudit(pylon.NewContextWithPrincipal(ctx, d.bk.actor), rec); err != nil {
			a.log.Error("append mqtt audit record", "action", d.key.action, "object", d.key.object, "count", d.bk.count, "err", err)
		}
	}
}

// details encodes the bucket for a record of action.
func (bk *auditBucket) details(action string) json.RawMessage {
	d := auditDetails{Count: bk.count, First: bk.first.UTC(), Last: bk.last.UTC()}
	switch action {
	case pylon.ActionACLDenied:
		d.Publish, d.Subscribe, d.Topics = bk.kinds[opPublish], bk.kinds[opSubscribe], bk.samples
	default:
		d.Reasons, d.RemoteAddrs = bk.kinds, bk.samples
	}
	b, err := json.Marshal(d)
	if err != nil { // cannot happen: plain types only
		return nil
	}
	return b
}
