package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
)

const readingsVerbs = "list, latest, agg, watch, rejected"

// maxCellRunes bounds a device-chosen value in a table cell.
const maxCellRunes = 80

// runReadings implements `pylon readings VERB`: stored telemetry, live
// events and refused messages.
func (e *cliEnv) runReadings(ctx context.Context, args []string) error {
	v, args, err := verb(args, readingsVerbs)
	if err != nil {
		return err
	}
	fs := e.flags("readings " + v)
	switch v {
	case "list", "ls":
		fs.Lookup("o").Usage = "output `format`: table, json or csv"
		var (
			name   = fs.String("name", "", "only readings of this `name`")
			since  = fs.String("since", "", "only readings at or after `time` (RFC 3339) or this long ago (e.g. 1h)")
			from   = fs.String("from", "", "only readings at or after `time` (RFC 3339 or e.g. 2h ago)")
			to     = fs.String("to", "", "only readings before `time` (RFC 3339 or e.g. 1h ago)")
			limit  = fs.Int("limit", 0, "at most `n` readings (default 100; csv: all, up to 1,000,000)")
			order  = fs.String("order", "", "asc or desc (default desc; csv: asc)")
			cursor = fs.String("cursor", "", "page `cursor` from a previous list")
		)
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 {
			return usageErrorf("readings list DEVICE [--name N] [--since 1h | --from T --to T] [--limit N] [-o table|json|csv]")
		}
		csv := e.output == "csv"
		if csv {
			e.output = "table" // e.client accepts only table and json
		}
		f := pylon.ReadingFilter{Name: *name, Limit: *limit, Cursor: *cursor, Desc: !csv}
		if f.From, f.To, err = timeRange(*since, *from, *to); err != nil {
			return err
		}
		switch *order {
		case "":
		case "asc", "desc":
			f.Desc = *order == "desc"
		default:
			return usageErrorf("--order: want asc or desc")
		}
		if f.Limit < 0 {
			return usageErrorf("--limit: want a positive number")
		} else if f.Limit == 0 && !csv {
			f.Limit = 100
		}
		c, d, err := e.clientAndDevice(ctx, pos[0])
		if err != nil {
			return err
		}
		f.DeviceID = d.ID
		if csv {
			return c.ReadingsCSV(ctx, f, e.stdout)
		}
		readings, next, err := c.ListReadings(ctx, f)
		if err != nil {
			return err
		}
		return e.print(httpapi.ReadingList{Readings: readings, NextCursor: next}, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "TIME\tNAME\tVALUE\tUNIT\tSUM")
			for _, r := range readings {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", fmtReadingTime(r.Time), cell(r.Name), readingValue(r), orDash(cell(r.Unit)), fmtSum(r.Sum))
			}
			if next != "" {
				fmt.Fprintf(w, "(more: --cursor %s)\n", next)
			}
		})

	case "latest":
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 {
			return usageErrorf("readings latest DEVICE")
		}
		c, d, err := e.clientAndDevice(ctx, pos[0])
		if err != nil {
			return err
		}
		readings, err := c.LatestReadings(ctx, d.ID)
		if err != nil {
			return err
		}
		return e.print(httpapi.LatestReadingList{Readings: readings}, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "NAME\tVALUE\tUNIT\tSUM\tTIME")
			for _, r := range readings {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", cell(r.Name), readingValue(r), orDash(cell(r.Unit)), fmtSum(r.Sum), fmtReadingTime(r.Time))
			}
		})

	case "agg", "aggregate":
		var (
			name   = fs.String("name", "", "`name` of the readings (required)")
			agg    = fs.String("agg", pylon.AggAvg, "aggregation: avg, min, max or count")
			bucket = fs.String("bucket", "1m", "bucket `duration`, at least 1s")
			since  = fs.String("since", "", "from `time` (RFC 3339) or this long ago (default 1h)")
			from   = fs.String("from", "", "from `time` (RFC 3339 or e.g. 2h ago)")
			to     = fs.String("to", "", "until `time` (RFC 3339 or e.g. 1h ago; default now)")
		)
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) != 1 || *name == "" {
			return usageErrorf("readings agg DEVICE --name N [--agg avg|min|max|count] [--bucket 1m] [--since 24h]")
		}
		f := pylon.AggregateFilter{Name: *name, Agg: *agg}
		if f.Bucket, err = ParseDuration(*bucket); err != nil {
			return usageErrorf("--bucket: %v", err)
		}
		fromT, toT, err := timeRange(*since, *from, *to)
		if err != nil {
			return err
		}
		if fromT != nil {
			f.From = *fromT
		}
		if toT != nil {
			f.To = *toT
		}
		c, d, err := e.clientAndDevice(ctx, pos[0])
		if err != nil {
			return err
		}
		f.DeviceID = d.ID
		buckets, err := c.AggregateReadings(ctx, f)
		if err != nil {
			return err
		}
		return e.print(httpapi.BucketList{Buckets: buckets}, func(w *tabwriter.Writer) {
			// A count is its own value: one COUNT column.
			if f.Agg == pylon.AggCount {
				fmt.Fprintln(w, "START\tCOUNT")
			} else {
				fmt.Fprintf(w, "START\t%s\tCOUNT\n", strings.ToUpper(f.Agg))
			}
			for _, b := range buckets {
				if f.Agg == pylon.AggCount {
					fmt.Fprintf(w, "%s\t%d\n", fmtReadingTime(b.Start), b.Count)
				} else {
					fmt.Fprintf(w, "%s\t%s\t%d\n", fmtReadingTime(b.Start), strconv.FormatFloat(b.Value, 'g', -1, 64), b.Count)
				}
			}
		})

	case "watch":
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) > 1 {
			return usageErrorf("readings watch [DEVICE]")
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		deviceID := ""
		if len(pos) == 1 {
			d, err := resolveDevice(ctx, c, pos[0])
			if err != nil {
				return err
			}
			deviceID = d.ID
		}
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		enc := json.NewEncoder(e.stdout)
		err = c.StreamEvents(ctx, deviceID, func(ev pylon.Event) error {
			if e.output == "json" {
				return enc.Encode(ev)
			}
			_, err := fmt.Fprintln(e.stdout, formatEvent(ev))
			return err
		})
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return nil // Ctrl-C
		}
		if err == nil {
			fmt.Fprintln(e.stderr, "the server ended the stream")
		}
		return err

	case "rejected", "quarantine":
		limit := fs.Int("limit", 0, "at most `n` messages (default 50, at most 200)")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		} else if len(pos) > 1 {
			return usageErrorf("readings rejected [DEVICE] [--limit N]")
		}
		c, err := e.client()
		if err != nil {
			return err
		}
		deviceID := ""
		if len(pos) == 1 {
			d, err := resolveDevice(ctx, c, pos[0])
			if err != nil {
				return err
			}
			deviceID = d.ID
		}
		msgs, err := c.Quarantine(ctx, deviceID, *limit)
		if err != nil {
			return err
		}
		return e.print(httpapi.QuarantineList{Messages: msgs}, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "ID\tRECEIVED\tDEVICE\tSEQ\tBYTES\tCODE\tREASON")
			for _, m := range msgs {
				seq := "-"
				if m.Seq != 0 {
					seq = strconv.FormatUint(m.Seq, 10)
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", m.ID, fmtReadingTime(m.Received), m.DeviceID, seq, len(m.Payload), cell(m.Code), cell(m.Reason))
			}
		})
	}
	return usageErrorf("readings: unknown verb %q; want one of: %s", v, readingsVerbs)
}

// clientAndDevice builds the client and resolves a device id or name.
func (e *cliEnv) clientAndDevice(ctx context.Context, ref string) (*httpapi.Client, *pylon.Device, error) {
	c, err := e.client()
	if err != nil {
		return nil, nil, err
	}
	d, err := resolveDevice(ctx, c, ref)
	if err != nil {
		return nil, nil, err
	}
	return c, d, nil
}

// timeRange turns --since or --from/--to into a range; each takes an
// RFC 3339 time or a duration before now.
func timeRange(since, from, to string) (*time.Time, *time.Time, error) {
	if since != "" && from != "" {
		return nil, nil, usageErrorf("give --since or --from, not both")
	}
	if since != "" {
		from = since
	}
	now := time.Now()
	var fromT, toT *time.Time
	for _, p := range []struct {
		flag, v string
		dst     **time.Time
	}{{"--from", from, &fromT}, {"--to", to, &toT}} {
		if p.v == "" {
			continue
		}
		t, err := parseSince(p.v, now)
		if err != nil {
			if p.flag == "--from" && since != "" {
				p.flag = "--since"
			}
			return nil, nil, usageErrorf("%s: %v", p.flag, err)
		}
		*p.dst = &t
	}
	return fromT, toT, nil
}

// readingValue renders the value of a reading for a table.
func readingValue(r *pylon.Reading) string {
	switch {
	case r.Value != nil:
		return strconv.FormatFloat(*r.Value, 'g', -1, 64)
	case r.StringValue != nil:
		return cell(*r.StringValue)
	case r.BoolValue != nil:
		return strconv.FormatBool(*r.BoolValue)
	case r.DataValue != nil:
		return cell("base64:" + base64.StdEncoding.EncodeToString(r.DataValue))
	}
	return "-"
}

func fmtSum(s *float64) string {
	if s == nil {
		return "-"
	}
	return strconv.FormatFloat(*s, 'g', -1, 64)
}

// fmtReadingTime shows a reading's time to the millisecond.
func fmtReadingTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05.000")
}

// cell makes text that a device chose safe for a terminal: control
// characters (which could move the cursor, change colours or break the
// table's tabs) are shown quoted and escaped, and long text is cut.
func cell(s string) string {
	clean := utf8.ValidString(s)
	for _, r := range s {
		if !clean || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if !clean {
		s = strconv.Quote(s)
	}
	if utf8.RuneCountInString(s) > maxCellRunes {
		s = string([]rune(s)[:maxCellRunes-3]) + "..."
	}
	return s
}

// formatEvent renders a live event as one line.
func formatEvent(ev pylon.Event) string {
	var detail string
	switch ev.Type {
	case pylon.EventReadings:
		parts := make([]string, 0, len(ev.Readings))
		for i := range ev.Readings {
			r := &ev.Readings[i]
			p := cell(r.Name) + "=" + readingValue(r)
			if r.Unit != "" {
				p += " " + cell(r.Unit)
			}
			parts = append(parts, p)
		}
		detail = strings.Join(parts, ", ")
	case pylon.EventConnection:
		detail = "offline"
		if ev.Online != nil && *ev.Online {
			detail = "online"
		}
	case pylon.EventRejected:
		detail = cell(ev.Reason)
		if ev.Seq != 0 {
			detail = "seq " + strconv.FormatUint(ev.Seq, 10) + ": " + detail
		}
		if ev.Code != "" {
			detail = cell(ev.Code) + "  " + detail
		}
	case pylon.EventState:
		detail = cell(ev.State)
	}
	return fmt.Sprintf("%s  %s  %-10s  %s", fmtReadingTime(ev.Time), orDash(cell(ev.DeviceID)), cell(ev.Type), detail)
}
