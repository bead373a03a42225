package dashboard

import (
	"context"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pylonhq/pylon"
)

// Telemetry on the device page.
const (
	// MaxCharts is how many charts the device page draws at once; a
	// device with more numeric readings gets a selector.
	MaxCharts = 8

	// MaxRawPoints is the most readings a chart's history is drawn from
	// raw; a range holding more is drawn from time buckets (averages).
	MaxRawPoints = 20_000

	// targetBuckets is roughly how many buckets an aggregated history has.
	targetBuckets = 2000

	// maxHistoryLoads bounds the chart histories read at once over all
	// sessions; more wait their turn. Each reads up to MaxRawPoints+1 rows.
	maxHistoryLoads = 8

	latestShown     = 100 // rows of the latest-values table
	errorsShown     = 20  // refused messages on the device page
	fleetErrorsShow = 10  // refused messages on the overview
	maxReasonLen    = 300 // bytes of a refusal reason shown
	maxCodeLen      = 32  // bytes of a refusal code shown
	maxTextLen      = 200 // bytes of a string value shown
	readingPage     = 10_000
)

// errTelemetryOff answers telemetry requests when the server has none.
var errTelemetryOff = pylon.Errorf(pylon.EUNAVAILABLE, "telemetry is not enabled on this server")

// chartRange is one choice of the time-range picker.
type chartRange struct {
	Key   string // the "range" parameter
	Label string
	Span  time.Duration
}

// chartRanges are the choices of the time-range picker, shortest first.
var chartRanges = []chartRange{
	{"15m", "15 min", 15 * time.Minute},
	{"1h", "1 h", time.Hour},
	{"6h", "6 h", 6 * time.Hour},
	{"24h", "24 h", 24 * time.Hour},
	{"7d", "7 d", 7 * 24 * time.Hour},
}

const defaultRange = "1h"

// findRange returns the range of key; "" is the default.
func findRange(key string) (chartRange, bool) {
	if key == "" {
		key = defaultRange
	}
	for _, r := range chartRanges {
		if r.Key == key {
			return r, true
		}
	}
	return chartRange{}, false
}

// niceBuckets are the bucket widths an aggregated history may use.
var niceBuckets = []time.Duration{
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
	time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour,
}

// bucketFor returns the smallest nice bucket width that splits span into
// at most targetBuckets buckets.
func bucketFor(span time.Duration) time.Duration {
	for _, b := range niceBuckets {
		if span/b <= targetBuckets {
			return b
		}
	}
	return niceBuckets[len(niceBuckets)-1]
}

// latestRow is one row of the latest-values table.
type latestRow struct {
	Name string
	Text string // value and unit
	Time time.Time
}

// chartInfo is one chart of the device page; its script fetches the data.
type chartInfo struct {
	Name, Unit string
}

// telemetryData is the telemetry part of the device page.
type telemetryData struct {
	Enabled     bool // a TelemetryService is set
	Live        bool // an EventService is set
	Error       string
	Latest      []latestRow
	MoreLatest  int // names left out of the table
	Charts      []chartInfo
	Numeric     []string // every numeric name, for the selector; set only beyond MaxCharts
	Selected    map[string]bool
	Range       string
	Ranges      []chartRange
	RangeURLs   map[string]string // the page's URL for each range
	ReadingsURL string
	EventsURL   string
	Errors      []*pylon.QuarantinedMessage
}

// loadTelemetry fills the telemetry part of the device page. A store
// failure is shown in the panel rather than failing the whole page.
func (s *Server) loadTelemetry(r *http.Request, id string) *telemetryData {
	td := &telemetryData{Enabled: s.Telemetry != nil, Live: s.Events != nil, Ranges: chartRanges}
	if !td.Enabled {
		return td
	}
	q := r.URL.Query()
	td.Range = defaultRange
	if _, ok := findRange(q.Get("range")); ok && q.Get("range") != "" {
		td.Range = q.Get("range")
	}
	td.ReadingsURL = "/devices/" + id + "/readings.json"
	if td.Live {
		td.EventsURL = "/devices/" + id + "/events"
	}
	td.RangeURLs = map[string]string{}
	for _, cr := range chartRanges {
		v := url.Values{"range": {cr.Key}}
		if q.Has("chart") {
			v["chart"] = boundedList(q["chart"], MaxCharts)
		}
		td.RangeURLs[cr.Key] = "/devices/" + id + "?" + v.Encode()
	}

	ctx := r.Context()
	latest, err := s.Telemetry.LatestReadings(ctx, id)
	if err != nil {
		td.Error = s.userMessage(r, err)
		return td
	}
	slices.SortFunc(latest, func(a, b *pylon.Reading) int { return strings.Compare(a.Name, b.Name) })
	var numeric []*pylon.Reading
	for _, rd := range latest {
		if rd.Value != nil {
			numeric = append(numeric, rd)
		}
		if len(td.Latest) < latestShown {
			td.Latest = append(td.Latest, latestRow{Name: rd.Name, Text: readingText(rd), Time: rd.Time})
		} else {
			td.MoreLatest++
		}
	}
	td.Charts, td.Selected = chooseCharts(numeric, q["chart"])
	if len(numeric) > MaxCharts {
		for _, rd := range numeric {
			td.Numeric = append(td.Numeric, rd.Name)
		}
	}
	if td.Errors, err = s.Telemetry.FindQuarantine(ctx, id, errorsShown); err != nil {
		td.Error = s.userMessage(r, err)
	}
	return td
}

// chooseCharts returns the charts to draw: the names asked for that the
// device has, else the first MaxCharts numeric names.
func chooseCharts(numeric []*pylon.Reading, asked []string) ([]chartInfo, map[string]bool) {
	want := map[string]bool{}
	for _, n := range boundedList(asked, MaxCharts) {
		want[n] = true
	}
	var charts []chartInfo
	selected := map[string]bool{}
	for _, rd := range numeric {
		if len(charts) < MaxCharts && (len(want) == 0 || want[rd.Name]) {
			charts = append(charts, chartInfo{Name: rd.Name, Unit: rd.Unit})
			selected[rd.Name] = true
		}
	}
	if len(charts) == 0 && len(want) > 0 {
		return chooseCharts(numeric, nil)
	}
	return charts, selected
}

// boundedList returns at most n of the values, each at most
// pylon.MaxSenMLNameLen bytes.
func boundedList(vals []string, n int) []string {
	var out []string
	for _, v := range vals {
		if len(out) == n {
			break
		}
		if v != "" && len(v) <= pylon.MaxSenMLNameLen {
			out = append(out, v)
		}
	}
	return out
}

// series is the body of GET /devices/{id}/readings.json: one reading
// name's history over a range, as columns for uPlot.
type series struct {
	Name   string    `json:"name"`
	Unit   string    `json:"unit"`
	Range  string    `json:"range"`
	From   float64   `json:"from"` // Unix seconds
	To     float64   `json:"to"`
	Mode   string    `json:"mode"`             // "raw", or "avg" of buckets
	Bucket int64     `json:"bucket,omitempty"` // seconds, in avg mode
	T      []float64 `json:"t"`                // Unix seconds, ascending
	V      []float64 `json:"v"`
}

// handleReadingsJSON answers the history of one numeric reading over a
// range: ?name=NAME (required) and ?range=15m|1h|6h|24h|7d (1h if absent).
// Up to MaxRawPoints readings come raw; beyond, averages of time buckets
// of about range/targetBuckets. Returns 400 for a malformed query, 422 for
// a bad parameter, 404, 503 without telemetry.
func (s *Server) handleReadingsJSON(w http.ResponseWriter, r *http.Request, u *user) {
	if s.Telemetry == nil {
		s.failJSON(w, r, errTelemetryOff)
		return
	}
	id := r.PathValue("id")
	if !pylon.ValidID(id) {
		s.failJSON(w, r, pylon.Errorf(pylon.ENOTFOUND, "there is no such device"))
		return
	}
	if len(r.URL.RawQuery) > 2*maxParamLen {
		s.failJSON(w, r, pylon.Errorf(pylon.EBADREQUEST, "query too long"))
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		s.failJSON(w, r, pylon.Errorf(pylon.EBADREQUEST, "malformed query"))
		return
	}
	name := q.Get("name")
	if err := validName(name); err != nil {
		s.failJSON(w, r, err)
		return
	}
	cr, ok := findRange(q.Get("range"))
	if !ok {
		s.failJSON(w, r, pylon.Errorf(pylon.EINVALID, "range: must be one of 15m, 1h, 6h, 24h, 7d"))
		return
	}
	ctx := r.Context()
	if _, err := s.Devices.FindDeviceByID(ctx, id); err != nil {
		s.failJSON(w, r, err)
		return
	}
	select {
	case s.loads <- struct{}{}:
		defer func() { <-s.loads }()
	case <-ctx.Done():
		return // the page went away while waiting
	}
	to := s.now()
	from := to.Add(-cr.Span)
	ser, err := s.loadSeries(ctx, id, name, from, to)
	if err != nil {
		s.failJSON(w, r, err)
		return
	}
	ser.Range = cr.Key
	writeJSONGzip(w, r, http.StatusOK, ser)
}

// validName returns EINVALID unless name is a possible SenML name:
// 1 to pylon.MaxSenMLNameLen bytes of printable UTF-8.
func validName(name string) error {
	switch {
	case name == "":
		return pylon.Errorf(pylon.EINVALID, "name: required")
	case len(name) > pylon.MaxSenMLNameLen:
		return pylon.Errorf(pylon.EINVALID, "name: longer than %d bytes", pylon.MaxSenMLNameLen)
	case !utf8.ValidString(name):
		return pylon.Errorf(pylon.EINVALID, "name: not valid UTF-8")
	}
	for _, c := range name {
		if !unicode.IsPrint(c) {
			return pylon.Errorf(pylon.EINVALID, "name: contains a control character")
		}
	}
	return nil
}

// loadSeries reads the history of name in [from, to]: raw readings while
// there are at most MaxRawPoints, else bucket averages. Reading raw first
// costs at most MaxRawPoints rows before switching, less than counting a
// long range would.
func (s *Server) loadSeries(ctx context.Context, id, name string, from, to time.Time) (*series, error) {
	ser := &series{Name: name, From: unixSeconds(from), To: unixSeconds(to), Mode: "raw", T: []float64{}, V: []float64{}}
	f := pylon.ReadingFilter{DeviceID: id, Name: name, From: &from, To: &to, Limit: readingPage}
	read := 0
	for {
		page, next, err := s.Telemetry.FindReadings(ctx, f)
		if err != nil {
			return nil, err
		}
		read += len(page)
		if read > MaxRawPoints {
			break
		}
		for _, rd := range page {
			if ser.Unit == "" {
				ser.Unit = rd.Unit
			}
			if rd.Value != nil && !math.IsNaN(*rd.Value) && !math.IsInf(*rd.Value, 0) {
				ser.T = append(ser.T, unixSeconds(rd.Time))
				ser.V = append(ser.V, *rd.Value)
			}
		}
		if next == "" || len(page) == 0 {
			sortSeries(ser)
			return ser, nil
		}
		// One row beyond the limit tells whether the range holds more.
		f.Cursor, f.Limit = next, min(readingPage, MaxRawPoints+1-read)
	}

	bucket := bucketFor(to.Sub(from))
	buckets, err := s.Telemetry.AggregateReadings(ctx, pylon.AggregateFilter{
		DeviceID: id, Name: name, From: from, To: to, Bucket: bucket, Agg: pylon.AggAvg,
	})
	if err != nil {
		return nil, err
	}
	ser.Mode, ser.Bucket = pylon.AggAvg, int64(bucket/time.Second)
	ser.T, ser.V = make([]float64, 0, len(buckets)), make([]float64, 0, len(buckets))
	for _, b := range buckets {
		if b.Count > 0 && !math.IsNaN(b.Value) && !math.IsInf(b.Value, 0) {
			ser.T = append(ser.T, unixSeconds(b.Start))
			ser.V = append(ser.V, b.Value)
		}
	}
	sortSeries(ser)
	return ser, nil
}

// sortSeries puts the points in time order, which uPlot needs, if a store
// did not.
func sortSeries(ser *series) {
	if slices.IsSorted(ser.T) {
		return
	}
	idx := make([]int, len(ser.T))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case ser.T[a] < ser.T[b]:
			return -1
		case ser.T[a] > ser.T[b]:
			return 1
		}
		return 0
	})
	t, v := make([]float64, len(idx)), make([]float64, len(idx))
	for i, j := range idx {
		t[i], v[i] = ser.T[j], ser.V[j]
	}
	ser.T, ser.V = t, v
}

// fleetError is one row of the overview's newest errors.
type fleetError struct {
	*pylon.QuarantinedMessage
	DeviceName string // "" if the device is gone
}

// fleetErrors returns the newest refused messages of the fleet with the
// names of their devices (one indexed query per device), or a user-safe
// message of why not.
func (s *Server) fleetErrors(r *http.Request) ([]fleetError, string) {
	if s.Telemetry == nil {
		return nil, ""
	}
	ctx := r.Context()
	msgs, err := s.Telemetry.FindQuarantine(ctx, "", fleetErrorsShow)
	if err != nil {
		return nil, s.userMessage(r, err)
	}
	names := map[string]string{}
	rows := make([]fleetError, 0, len(msgs))
	for _, m := range msgs {
		name, ok := names[m.DeviceID]
		if !ok && pylon.ValidID(m.DeviceID) {
			if d, err := s.Devices.FindDeviceByID(ctx, m.DeviceID); err == nil {
				name = d.Name
			} else if pylon.ErrorCode(err) != pylon.ENOTFOUND {
				return nil, s.userMessage(r, err)
			}
			names[m.DeviceID] = name
		}
		rows = append(rows, fleetError{QuarantinedMessage: m, DeviceName: name})
	}
	return rows, ""
}
