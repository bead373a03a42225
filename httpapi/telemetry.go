package httpapi

import (
	"encoding/base64"
	"encoding/csv"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
)

// Limits of the telemetry endpoints.
const (
	MaxReadingLimit        = 10_000    // readings in one JSON page (pylon.ReadingFilter's maximum)
	MaxCSVRows             = 1_000_000 // rows in one CSV export
	MaxBuckets             = 10_000    // buckets in one aggregate answer
	DefaultAggregateWindow = time.Hour // aggregate range without ?from=
	DefaultBucket          = time.Minute
	DefaultQuarantineLimit = 50
	MaxQuarantineLimit     = 200 // each message may carry a payload of pylon.MaxMessageBytes

	// TrailerNextCursor is the HTTP trailer of a CSV export that stopped at
	// its row limit: the cursor from which to go on. It is absent when the
	// export is complete.
	TrailerNextCursor = "Pylon-Next-Cursor"
)

// csvHeader is the header row of a CSV export of readings.
var csvHeader = []string{"time", "name", "unit", "value", "sum"}

// errTelemetryOff answers telemetry and event requests of a server
// without a TelemetryService or EventService.
var errTelemetryOff = pylon.Errorf(pylon.EUNAVAILABLE, "telemetry is not enabled")

// ReadingList is the body of GET /api/v1/devices/{id}/readings.
type ReadingList struct {
	Readings   []*pylon.Reading `json:"readings"`
	NextCursor string           `json:"next_cursor"` // "" on the last page
}

// LatestReadingList is the body of GET /api/v1/devices/{id}/readings/latest:
// the newest reading of each name.
type LatestReadingList struct {
	Readings []*pylon.Reading `json:"readings"`
}

// BucketList is the body of GET /api/v1/devices/{id}/readings?agg=...
type BucketList struct {
	Buckets []*pylon.Bucket `json:"buckets"`
}

// QuarantineList is the body of GET /api/v1/quarantine and
// GET /api/v1/devices/{id}/quarantine. Payloads are base64 in JSON.
type QuarantineList struct {
	Messages []*pylon.QuarantinedMessage `json:"messages"`
}

// readingsQuery is the parsed query of GET /api/v1/devices/{id}/readings:
// a page of readings (JSON), an export (CSV) or aggregates.
type readingsQuery struct {
	csv    bool
	agg    bool
	filter pylon.ReadingFilter   // list and CSV; Limit is the row cap for CSV
	aggF   pylon.AggregateFilter // agg
}

// parseReadingsQuery parses name, from, to (RFC 3339 or unix seconds),
// limit, cursor, order=asc|desc and format=json|csv (or Accept: text/csv);
// with agg=avg|min|max|count it parses name (required), bucket, from and to
// instead. Every error is EINVALID.
func parseReadingsQuery(r *http.Request, deviceID string, now time.Time) (readingsQuery, error) {
	q := r.URL.Query()
	var (
		rq  readingsQuery
		err error
	)
	name, err := queryString(q, "name", pylon.MaxSenMLNameLen)
	if err != nil {
		return rq, err
	}
	from, err := queryInstant(q, "from")
	if err != nil {
		return rq, err
	}
	to, err := queryInstant(q, "to")
	if err != nil {
		return rq, err
	}
	format := q.Get("format")
	switch format {
	case "", "json", "csv":
	default:
		return rq, pylon.Errorf(pylon.EINVALID, "format: must be json or csv")
	}

	if q.Has("agg") {
		for _, p := range []string{"limit", "cursor", "order"} {
			if q.Has(p) {
				return rq, pylon.Errorf(pylon.EINVALID, "%s: not allowed with agg", p)
			}
		}
		if format == "csv" {
			return rq, pylon.Errorf(pylon.EINVALID, "format: csv is not available with agg")
		}
		rq.agg = true
		f := pylon.AggregateFilter{DeviceID: deviceID, Name: name, Agg: q.Get("agg"), Bucket: DefaultBucket}
		switch f.Agg {
		case pylon.AggAvg, pylon.AggMin, pylon.AggMax, pylon.AggCount:
		default:
			return rq, pylon.Errorf(pylon.EINVALID, "agg: must be avg, min, max or count")
		}
		if name == "" {
			return rq, pylon.Errorf(pylon.EINVALID, "name: required with agg")
		}
		if v := q.Get("bucket"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || len(v) > 32 || d < time.Second {
				return rq, pylon.Errorf(pylon.EINVALID, "bucket: must be a duration of at least 1s, such as 1m")
			}
			f.Bucket = d
		}
		f.To = now
		if to != nil {
			f.To = *to
		}
		f.From = f.To.Add(-DefaultAggregateWindow)
		if from != nil {
			f.From = *from
		}
		if !f.From.Before(f.To) {
			return rq, pylon.Errorf(pylon.EINVALID, "from: must be before to")
		}
		span := f.To.Sub(f.From)
		if n := span / f.Bucket; n > MaxBuckets || n == MaxBuckets && span%f.Bucket != 0 {
			return rq, pylon.Errorf(pylon.EINVALID, "bucket: too small for the range (more than %d buckets)", MaxBuckets)
		}
		rq.aggF = f
		return rq, nil
	}

	if q.Has("bucket") {
		return rq, pylon.Errorf(pylon.EINVALID, "bucket: only allowed with agg")
	}
	rq.csv = format == "csv" || format == "" && acceptsCSV(r)
	f := pylon.ReadingFilter{DeviceID: deviceID, Name: name, From: from, To: to}
	if from != nil && to != nil && from.After(*to) {
		return rq, pylon.Errorf(pylon.EINVALID, "from: must not be after to")
	}
	max := MaxReadingLimit
	if rq.csv {
		max = MaxCSVRows
	}
	if f.Limit, err = queryLimit(q, max); err != nil {
		return rq, err
	}
	if f.Cursor, err = queryString(q, "cursor", maxCursorLen); err != nil {
		return rq, err
	}
	switch q.Get("order") {
	case "", "asc":
	case "desc":
		f.Desc = true
	default:
		return rq, pylon.Errorf(pylon.EINVALID, "order: must be asc or desc")
	}
	rq.filter = f
	return rq, nil
}

// maxUnixSeconds is 9999-12-31T23:59:59Z.
const maxUnixSeconds = 253402300799

// queryInstant returns the parameter as an RFC 3339 time or as whole unix
// seconds, nil if absent.
func queryInstant(q url.Values, name string) (*time.Time, error) {
	v := q.Get(name)
	if v == "" {
		return nil, nil
	}
	if len(v) <= 12 && strings.Trim(v, "0123456789") == "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n <= maxUnixSeconds {
			t := time.Unix(n, 0).UTC()
			return &t, nil
		}
	}
	return queryTime(q, name)
}

// acceptsCSV reports whether the Accept header asks for text/csv.
func acceptsCSV(r *http.Request) bool {
	for _, h := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(h, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil && mt == "text/csv" && params["q"] != "0" {
				return true
			}
		}
	}
	return false
}

// deviceForTelemetry returns the {id} of a telemetry request once the
// device is known to exist.
func (s *Server) deviceForTelemetry(r *http.Request) (string, error) {
	id, err := pathID(r, "device")
	if err != nil {
		return "", err
	}
	if _, err := s.Devices.FindDeviceByID(r.Context(), id); err != nil {
		return "", err
	}
	return id, nil
}

func (s *Server) handleReadings(w http.ResponseWriter, r *http.Request) {
	if s.Telemetry == nil {
		Error(w, r, errTelemetryOff)
		return
	}
	id, err := pathID(r, "device")
	if err != nil {
		Error(w, r, err)
		return
	}
	rq, err := parseReadingsQuery(r, id, s.now())
	if err != nil {
		Error(w, r, err)
		return
	}
	if _, err := s.Devices.FindDeviceByID(r.Context(), id); err != nil {
		Error(w, r, err)
		return
	}
	switch {
	case rq.agg:
		buckets, err := s.Telemetry.AggregateReadings(r.Context(), rq.aggF)
		if err != nil {
			Error(w, r, err)
			return
		}
		if buckets == nil {
			buckets = []*pylon.Bucket{}
		}
		writeJSON(w, http.StatusOK, BucketList{Buckets: buckets})
	case rq.csv:
		s.writeReadingsCSV(w, r, rq.filter)
	default:
		readings, next, err := s.Telemetry.FindReadings(r.Context(), rq.filter)
		if err != nil {
			Error(w, r, err)
			return
		}
		if readings == nil {
			readings = []*pylon.Reading{}
		}
		writeJSON(w, http.StatusOK, ReadingList{Readings: readings, NextCursor: next})
	}
}

// writeReadingsCSV streams the readings f selects as CSV, page by page, up
// to f.Limit rows (MaxCSVRows if 0). The first page is read before anything
// is written, so that its errors (such as a bad cursor) get a proper error
// response; a later failure aborts the response, so that the client sees a
// broken transfer rather than a short file. An export that stops at its row
// limit names the cursor to go on from in the TrailerNextCursor trailer.
//
// Cells that a device chose (name, unit and string values) and that begin
// with '=', '+', '-', '@', tab or carriage return get a leading single
// quote, so that spreadsheets show them as text instead of evaluating them
// as formulas (CSV injection). Numeric values are never changed, so "-3.5"
// stays a number.
func (s *Server) writeReadingsCSV(w http.ResponseWriter, r *http.Request, f pylon.ReadingFilter) {
	remaining := f.Limit
	if remaining == 0 {
		remaining = MaxCSVRows
	}
	f.Limit = min(remaining, MaxReadingLimit)
	page, next, err := s.Telemetry.FindReadings(r.Context(), f)
	if err != nil {
		Error(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/csv; charset=utf-8")
	h.Set("Content-Disposition", `attachment; filename="`+f.DeviceID+`-readings.csv"`)
	h.Set("Trailer", TrailerNextCursor)
	w.WriteHeader(http.StatusOK)

	rc := http.NewResponseController(w)
	cw := csv.NewWriter(w)
	cw.UseCRLF = true // RFC 4180
	cw.Write(csvHeader)
	row := make([]string, len(csvHeader))
	for {
		if len(page) > remaining {
			page = page[:remaining]
		}
		// Each page gets a fresh write deadline: a large export may take
		// longer than WriteTimeout, a stalled client may not.
		rc.SetWriteDeadline(time.Now().Add(WriteTimeout))
		for _, rd := range page {
			csvRow(row, rd)
			cw.Write(row)
		}
		cw.Flush()
		if err := cw.Error(); err != nil {
			s.log.Debug("csv export: client went away", "device", f.DeviceID, "err", err)
			return
		}
		rc.Flush()
		remaining -= len(page)
		if next == "" || len(page) == 0 {
			return
		}
		if remaining == 0 {
			h.Set(TrailerNextCursor, next)
			return
		}
		f.Cursor, f.Limit = next, min(remaining, MaxReadingLimit)
		if page, next, err = s.Telemetry.FindReadings(r.Context(), f); err != nil {
			if r.Context().Err() == nil {
				s.log.Error("csv export failed", "device", f.DeviceID, "err", err)
			}
			panic(http.ErrAbortHandler)
		}
	}
}

// csvRow fills row with rd's cells in csvHeader's order.
func csvRow(row []string, rd *pylon.Reading) {
	row[0] = rd.Time.UTC().Format(time.RFC3339Nano)
	row[1] = csvText(rd.Name)
	row[2] = csvText(rd.Unit)
	switch {
	case rd.Value != nil:
		row[3] = strconv.FormatFloat(*rd.Value, 'g', -1, 64)
	case rd.StringValue != nil:
		row[3] = csvText(*rd.StringValue)
	case rd.BoolValue != nil:
		row[3] = strconv.FormatBool(*rd.BoolValue)
	case rd.DataValue != nil:
		row[3] = base64.StdEncoding.EncodeToString(rd.DataValue)
	default:
		row[3] = ""
	}
	row[4] = ""
	if rd.Sum != nil {
		row[4] = strconv.FormatFloat(*rd.Sum, 'g', -1, 64)
	}
}

// csvText defuses a device-chosen cell that a spreadsheet would take for a
// formula.
func csvText(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

func (s *Server) handleLatestReadings(w http.ResponseWriter, r *http.Request) {
	if s.Telemetry == nil {
		Error(w, r, errTelemetryOff)
		return
	}
	id, err := s.deviceForTelemetry(r)
	if err != nil {
		Error(w, r, err)
		return
	}
	readings, err := s.Telemetry.LatestReadings(r.Context(), id)
	if err != nil {
		Error(w, r, err)
		return
	}
	if readings == nil {
		readings = []*pylon.Reading{}
	}
	writeJSON(w, http.StatusOK, LatestReadingList{Readings: readings})
}

// handleQuarantine serves the refused messages of the fleet or, with
// device set, of the {id} device.
func (s *Server) handleQuarantine(device bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.Telemetry == nil {
			Error(w, r, errTelemetryOff)
			return
		}
		limit, err := queryLimit(r.URL.Query(), MaxQuarantineLimit)
		if err != nil {
			Error(w, r, err)
			return
		} else if limit == 0 {
			limit = DefaultQuarantineLimit
		}
		id := ""
		if device {
			if id, err = s.deviceForTelemetry(r); err != nil {
				Error(w, r, err)
				return
			}
		}
		msgs, err := s.Telemetry.FindQuarantine(r.Context(), id, limit)
		if err != nil {
			Error(w, r, err)
			return
		}
		if msgs == nil {
			msgs = []*pylon.QuarantinedMessage{}
		}
		writeJSON(w, http.StatusOK, QuarantineList{Messages: msgs})
	}
}
