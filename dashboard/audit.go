package dashboard

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/pylonhq/pylon"
)

// Audit page.
const (
	auditPerPage   = 50
	auditBatch     = 1000 // the most FindAuditRecords returns at once
	verifyCacheTTL = 5 * time.Second
)

type auditQuery struct {
	Object, Actor, Action string
	Before                int64 // show records with a Seq below this; 0: the newest
}

func (q auditQuery) values() url.Values {
	v := url.Values{}
	for k, val := range map[string]string{"object": q.Object, "actor": q.Actor, "action": q.Action} {
		if val != "" {
			v.Set(k, val)
		}
	}
	return v
}

type auditData struct {
	Query      auditQuery
	Records    []*pylon.AuditRecord
	Older      string // URL of the next, older page; "" on the last
	Newest     string // URL of the first page; "" on the first
	Verify     *pylon.AuditVerification
	VerifiedAt time.Time
	VerifyErr  string
}

// handleAudit shows audit records newest first, with the verification of
// the hash chain at the top.
func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request, u *user) {
	p := r.URL.Query()
	q := auditQuery{Object: bounded(p.Get("object")), Actor: bounded(p.Get("actor")), Action: bounded(p.Get("action"))}
	d := &auditData{Query: q}
	v := s.newView(u, "audit", "Audit log", d)
	status := http.StatusOK
	var err error
	if b := p.Get("before"); b != "" {
		if q.Before, err = strconv.ParseInt(b, 10, 64); err != nil || q.Before < 1 {
			err = pylon.Errorf(pylon.EINVALID, "before: not a record number")
		}
		d.Query.Before = q.Before
	}
	ctx := r.Context()
	if err == nil {
		f := pylon.AuditFilter{Object: q.Object, Actor: q.Actor, Action: q.Action}
		var more bool
		if q.Before == 0 {
			f.Desc, f.Limit = true, auditPerPage+1
			d.Records, err = s.Audit.FindAuditRecords(ctx, f)
			if more = len(d.Records) > auditPerPage; more {
				d.Records = d.Records[:auditPerPage]
			}
		} else {
			d.Records, more, err = findAuditBefore(ctx, s.Audit, f, q.Before, auditPerPage)
		}
		if more && len(d.Records) > 0 {
			vals := q.values()
			vals.Set("before", strconv.FormatInt(d.Records[len(d.Records)-1].Seq, 10))
			d.Older = "/audit?" + vals.Encode()
		}
	}
	if q.Before != 0 {
		d.Newest = "/audit"
		if vals := q.values(); len(vals) > 0 {
			d.Newest += "?" + vals.Encode()
		}
	}
	if err != nil {
		if status = statusOf[pylon.ErrorCode(err)]; status == 0 {
			status = http.StatusInternalServerError
		}
		v.Error = s.userMessage(r, err)
	}
	if vr, at, err := s.verifyAudit(ctx); err != nil {
		d.VerifyErr = s.userMessage(r, err)
	} else {
		d.Verify, d.VerifiedAt = &vr, at
	}
	s.render(w, r, status, "audit", v)
}

// verifyCache keeps the last verification of the audit chain for a few
// seconds, so that reloading the audit page does not re-hash the whole log
// each time, and concurrent loads share one verification.
type verifyCache struct {
	mu sync.Mutex
	at time.Time
	v  pylon.AuditVerification
}

// verifyAudit returns the verification of the chain and when it was made.
func (s *Server) verifyAudit(ctx context.Context) (pylon.AuditVerification, time.Time, error) {
	c := &s.verify
	c.mu.Lock()
	defer c.mu.Unlock()
	now := s.now()
	if !c.at.IsZero() && now.Sub(c.at) < verifyCacheTTL && !now.Before(c.at) {
		return c.v, c.at, nil
	}
	v, err := s.Audit.VerifyAudit(ctx)
	if err != nil {
		return v, time.Time{}, err
	}
	c.v, c.at = v, now
	return v, now, nil
}

// errNoConvergence is returned if paging the audit log back does not find
// its window, which only a store breaking its contract causes.
var errNoConvergence = errors.New("audit paging did not converge")

// findAuditBefore returns up to n records matching f whose Seq is below
// before, newest first, and whether older ones exist.
//
// pylon.AuditFilter pages forward only (After), so this looks for a window
// (after, before) holding between n+1 and auditBatch matching records: it
// widens the window from n+1 sequence numbers by doubling, and narrows it
// by bisection if it overshoots. Sequence numbers are dense, so without
// filters the first query finds it; with filters it takes O(log before)
// indexed queries at worst.
func findAuditBefore(ctx context.Context, svc pylon.AuditService, f pylon.AuditFilter, before int64, n int) ([]*pylon.AuditRecord, bool, error) {
	f.Desc, f.Limit = false, auditBatch
	query := func(after int64) (keep []*pylon.AuditRecord, full bool, err error) {
		f.After = after
		recs, err := svc.FindAuditRecords(ctx, f)
		if err != nil {
			return nil, false, err
		}
		for _, r := range recs {
			if r.Seq < before {
				keep = append(keep, r)
			}
		}
		return keep, len(keep) >= auditBatch, nil
	}
	newestFirst := func(recs []*pylon.AuditRecord) []*pylon.AuditRecord {
		if len(recs) > n {
			recs = recs[len(recs)-n:]
		}
		recs = slices.Clone(recs)
		slices.Reverse(recs)
		return recs
	}
	var (
		hi    = before - 1   // an After whose window holds at most n records
		lo    = int64(-1)    // an After whose window overflows; -1: none found yet
		width = int64(n + 1) // the next window to try while widening
	)
	for range 128 {
		var after int64
		if lo < 0 {
			after = max(0, before-1-width)
			width *= 2
		} else {
			after = lo + (hi-lo)/2
			if after == lo {
				return nil, false, errNoConvergence
			}
		}
		keep, full, err := query(after)
		switch {
		case err != nil:
			return nil, false, err
		case full:
			lo = after
		case len(keep) > n:
			return newestFirst(keep), true, nil
		case after == 0:
			return newestFirst(keep), false, nil
		default:
			hi = after
		}
	}
	return nil, false, errNoConvergence
}
