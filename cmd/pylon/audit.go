package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pylonhq/pylon"
)

const auditVerbs = "list, verify"

// runAudit implements `pylon audit VERB`.
func (e *cliEnv) runAudit(ctx context.Context, args []string) error {
	v, args, err := verb(args, auditVerbs)
	if err != nil {
		return err
	}
	fs := e.flags("audit " + v)
	switch v {
	case "list", "ls":
		var (
			object = fs.String("object", "", "only this `object`, e.g. device:ID, or a prefix like device:")
			actor  = fs.String("actor", "", "only this `actor`, e.g. token:ID or system")
			action = fs.String("action", "", "only this `action`, e.g. device.suspend")
			since  = fs.String("since", "", "only records at or after `time` (RFC 3339) or this long ago (e.g. 2h)")
			limit  = fs.Int("limit", 100, "at most `n` records")
			after  = fs.Int64("after", 0, "records after this sequence `number`")
		)
		if _, err := parse(fs, args); err != nil {
			return err
		}
		f := pylon.AuditFilter{Object: *object, Actor: *actor, Action: *action, Limit: *limit, After: *after}
		if *since != "" {
			t, err := parseSince(*since, time.Now())
			if err != nil {
				return usageErrorf("--since: %v", err)
			}
			f.Since = &t
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		recs, err := c.ListAudit(ctx, f)
		if err != nil {
			return err
		}
		return e.print(map[string]any{"records": recs}, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "SEQ\tTIME\tACTOR\tACTION\tOBJECT\tDETAILS")
			for _, r := range recs {
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Seq, fmtTime(&r.Time), r.Actor, r.Action, r.Object, r.Details)
			}
		})
	case "verify":
		if _, err := parse(fs, args); err != nil {
			return err
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		res, err := c.VerifyAudit(ctx)
		if err != nil {
			return err
		}
		if err := e.print(res, func(w *tabwriter.Writer) {
			if res.OK {
				fmt.Fprintf(w, "OK: %d records, the hash chain is intact\nhead %s\n", res.Records, res.Head)
			} else {
				fmt.Fprintf(w, "BROKEN at record %d: %s (%d records before it are intact)\n", res.BadSeq, res.Problem, res.Records)
			}
		}); err != nil {
			return err
		}
		if !res.OK {
			return fmt.Errorf("audit chain broken at record %d", res.BadSeq)
		}
		return nil
	}
	return usageErrorf("audit: unknown verb %q; want one of: %s", v, auditVerbs)
}

// parseSince reads a time: RFC 3339, or how long before now ("2h", or
// "2h ago" as the help puts it).
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := ParseDuration(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "ago")))
	if err != nil {
		return time.Time{}, fmt.Errorf("want an RFC 3339 time or a duration like 2h or \"2h ago\"")
	}
	return now.Add(-d), nil
}
