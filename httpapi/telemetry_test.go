package httpapi_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
	"github.com/pylonhq/pylon/mock"
)

// telemetry is a recording mock TelemetryService on a fixture.
type telemetry struct {
	*mock.TelemetryService

	mu       sync.Mutex
	filters  []pylon.ReadingFilter
	aggs     []pylon.AggregateFilter
	quarants []string // "deviceID limit"
}

func (tm *telemetry) readingFilters() []pylon.ReadingFilter {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return append([]pylon.ReadingFilter(nil), tm.filters...)
}

func (tm *telemetry) aggFilters() []pylon.AggregateFilter {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return append([]pylon.AggregateFilter(nil), tm.aggs...)
}

// withTelemetry gives f's server a TelemetryService that answers every
// FindReadings with one reading and records what it was asked.
func withTelemetry(f *fixture) *telemetry {
	tm := &telemetry{}
	tm.TelemetryService = &mock.TelemetryService{
		FindReadingsFn: func(ctx context.Context, filter pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
			tm.mu.Lock()
			defer tm.mu.Unlock()
			tm.filters = append(tm.filters, filter)
			return []*pylon.Reading{numReading("temp", 21.5)}, "", nil
		},
		LatestReadingsFn: func(ctx context.Context, deviceID string) ([]*pylon.Reading, error) {
			return []*pylon.Reading{numReading("temp", 21.5), {DeviceID: deviceID, Name: "door", Time: t0, BoolValue: ptr(true)}}, nil
		},
		AggregateReadingsFn: func(ctx context.Context, filter pylon.AggregateFilter) ([]*pylon.Bucket, error) {
			tm.mu.Lock()
			defer tm.mu.Unlock()
			tm.aggs = append(tm.aggs, filter)
			return []*pylon.Bucket{{Start: filter.From, Value: 20.25, Count: 4}}, nil
		},
		FindQuarantineFn: func(ctx context.Context, deviceID string, limit int) ([]*pylon.QuarantinedMessage, error) {
			tm.mu.Lock()
			defer tm.mu.Unlock()
			tm.quarants = append(tm.quarants, fmt.Sprintf("%s %d", deviceID, limit))
			return []*pylon.QuarantinedMessage{{ID: 7, DeviceID: devID, Received: t0, Reason: "bad signature", Payload: []byte{0, 1, 0xfe}}}, nil
		},
	}
	f.srv.Telemetry = tm
	return tm
}

func numReading(name string, v float64) *pylon.Reading {
	return &pylon.Reading{DeviceID: devID, Name: name, Unit: "Cel", Time: t0, Value: &v}
}

func TestReadings_Query(t *testing.T) {
	from, to := t0.Add(-time.Hour), t0
	tests := []struct {
		name     string
		query    string
		want     pylon.ReadingFilter
		wantCode string // "" for 200
	}{
		{"no parameters", "", pylon.ReadingFilter{DeviceID: devID}, ""},
		{"all parameters", "name=temp&from=2030-01-02T02:04:05Z&to=2030-01-02T03:04:05Z&limit=50&cursor=abc&order=desc",
			pylon.ReadingFilter{DeviceID: devID, Name: "temp", From: &from, To: &to, Limit: 50, Cursor: "abc", Desc: true}, ""},
		{"unix seconds", fmt.Sprintf("from=%d&to=%d", from.Unix(), to.Unix()),
			pylon.ReadingFilter{DeviceID: devID, From: &from, To: &to}, ""},
		{"order asc", "order=asc", pylon.ReadingFilter{DeviceID: devID}, ""},
		{"format json", "format=json&limit=10000", pylon.ReadingFilter{DeviceID: devID, Limit: 10000}, ""},
		{"bad from", "from=yesterday", pylon.ReadingFilter{}, pylon.EINVALID},
		{"bad to", "to=2030-13-01T00:00:00Z", pylon.ReadingFilter{}, pylon.EINVALID},
		{"negative unix", "from=-5", pylon.ReadingFilter{}, pylon.EINVALID},
		{"unix past year 9999", "from=999999999999", pylon.ReadingFilter{}, pylon.EINVALID},
		{"from after to", "from=2030-01-02T04:00:00Z&to=2030-01-02T03:00:00Z", pylon.ReadingFilter{}, pylon.EINVALID},
		{"limit zero", "limit=0", pylon.ReadingFilter{}, pylon.EINVALID},
		{"limit too large", "limit=10001", pylon.ReadingFilter{}, pylon.EINVALID},
		{"limit not a number", "limit=ten", pylon.ReadingFilter{}, pylon.EINVALID},
		{"bad order", "order=newest", pylon.ReadingFilter{}, pylon.EINVALID},
		{"bad format", "format=xml", pylon.ReadingFilter{}, pylon.EINVALID},
		{"name too long", "name=" + strings.Repeat("n", pylon.MaxSenMLNameLen+1), pylon.ReadingFilter{}, pylon.EINVALID},
		{"name with control character", "name=a%0Ab", pylon.ReadingFilter{}, pylon.EINVALID},
		{"cursor too long", "cursor=" + strings.Repeat("c", 1025), pylon.ReadingFilter{}, pylon.EINVALID},
		{"bucket without agg", "bucket=1m", pylon.ReadingFilter{}, pylon.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			tm := withTelemetry(f)
			w := f.serve("GET", "/api/v1/devices/"+devID+"/readings?"+tt.query, "", f.as(pylon.RoleViewer))
			if tt.wantCode != "" {
				checkError(t, w, 422, tt.wantCode)
				if got := tm.readingFilters(); len(got) != 0 {
					t.Errorf("got FindReadings calls %+v, want none", got)
				}
				return
			}
			var list httpapi.ReadingList
			decode(t, w, 200, &list)
			if len(list.Readings) != 1 || list.Readings[0].Name != "temp" || *list.Readings[0].Value != 21.5 {
				t.Errorf("got readings %+v, want the one temp reading", list.Readings)
			}
			got := tm.readingFilters()
			if len(got) != 1 || !reflect.DeepEqual(got[0], tt.want) {
				t.Errorf("got filters %+v, want [%+v]", got, tt.want)
			}
		})
	}
}

func TestReadings_ResponseShape(t *testing.T) {
	f := newFixture(t)
	tm := withTelemetry(f)
	tm.FindReadingsFn = func(ctx context.Context, filter pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
		return nil, "", nil
	}
	w := f.serve("GET", "/api/v1/devices/"+devID+"/readings", "", f.as(pylon.RoleViewer))
	if got, want := strings.TrimSpace(w.Body.String()), `{"readings":[],"next_cursor":""}`; got != want {
		t.Errorf("got body %s, want %s", got, want)
	}
	if got := w.Header().Get("Cache-Control"); got != "no-store" {
		t.Errorf("got Cache-Control %q, want no-store", got)
	}
}

func TestReadings_UnknownDevice(t *testing.T) {
	paths := []string{
		"/api/v1/devices/" + devID + "/readings",
		"/api/v1/devices/" + devID + "/readings?format=csv",
		"/api/v1/devices/" + devID + "/readings?agg=avg&name=temp",
		"/api/v1/devices/" + devID + "/readings/latest",
		"/api/v1/devices/" + devID + "/quarantine",
		"/api/v1/devices/" + devID + "/events",
		"/api/v1/devices/not-an-id/readings",
	}
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			f := newFixture(t)
			tm := withTelemetry(f)
			f.srv.Events = newHub()
			f.devices.FindDeviceByIDFn = func(context.Context, string) (*pylon.Device, error) {
				return nil, pylon.Errorf(pylon.ENOTFOUND, "device not found")
			}
			w := f.serve("GET", p, "", f.as(pylon.RoleViewer))
			checkError(t, w, 404, pylon.ENOTFOUND)
			if got := tm.readingFilters(); len(got) != 0 {
				t.Errorf("got FindReadings calls %+v, want none", got)
			}
		})
	}
}

func TestTelemetry_NotEnabled(t *testing.T) {
	paths := []string{
		"/api/v1/devices/" + devID + "/readings",
		"/api/v1/devices/" + devID + "/readings/latest",
		"/api/v1/devices/" + devID + "/quarantine",
		"/api/v1/quarantine",
		"/api/v1/devices/" + devID + "/events",
		"/api/v1/events",
	}
	f := newFixture(t)
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			w := f.serve("GET", p, "", f.as(pylon.RoleViewer))
			if e := checkError(t, w, 503, pylon.EUNAVAILABLE); e.Message != "telemetry is not enabled" {
				t.Errorf("got message %q, want %q", e.Message, "telemetry is not enabled")
			}
		})
	}
}

func TestTelemetry_Auth(t *testing.T) {
	paths := []string{
		"/api/v1/devices/" + devID + "/readings",
		"/api/v1/devices/" + devID + "/readings/latest",
		"/api/v1/devices/" + devID + "/readings?agg=max&name=temp",
		"/api/v1/devices/" + devID + "/quarantine",
		"/api/v1/quarantine",
		"/api/v1/devices/" + devID + "/events",
		"/api/v1/events",
	}
	f := newFixture(t)
	withTelemetry(f)
	f.srv.Events = newHub()
	for _, p := range paths {
		t.Run(p, func(t *testing.T) {
			w := f.serve("GET", p, "")
			checkError(t, w, 401, pylon.EUNAUTHORIZED)
			if got := w.Header().Get("WWW-Authenticate"); got == "" {
				t.Error("got no WWW-Authenticate header, want a Bearer challenge")
			}
			w = f.serve("GET", p, "", withHeader("Authorization", "Bearer pylon_not_a_token"))
			checkError(t, w, 401, pylon.EUNAUTHORIZED)
			if strings.HasSuffix(p, "/events") {
				return // streams never end by themselves; see TestStreamEvents
			}
			if w := f.serve("GET", p, "", f.as(pylon.RoleViewer)); w.Code != 200 {
				t.Errorf("viewer: got status %d, want 200 (body %s)", w.Code, w.Body.String())
			}
		})
	}
}

func TestReadings_Aggregate(t *testing.T) {
	tests := []struct {
		name     string
		query    string
		want     pylon.AggregateFilter
		wantCode string // "" for 200
	}{
		{"defaults", "agg=avg&name=temp",
			pylon.AggregateFilter{DeviceID: devID, Name: "temp", Agg: "avg", Bucket: time.Minute, From: t0.Add(-time.Hour), To: t0}, ""},
		{"explicit", "agg=count&name=temp&bucket=1h&from=2030-01-01T00:00:00Z&to=2030-01-02T00:00:00Z",
			pylon.AggregateFilter{DeviceID: devID, Name: "temp", Agg: "count", Bucket: time.Hour,
				From: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC)}, ""},
		{"only to", "agg=min&name=temp&to=2030-01-01T00:00:00Z",
			pylon.AggregateFilter{DeviceID: devID, Name: "temp", Agg: "min", Bucket: time.Minute,
				From: time.Date(2029, 12, 31, 23, 0, 0, 0, time.UTC), To: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}, ""},
		{"max with unix from", fmt.Sprintf("agg=max&name=temp&from=%d", t0.Add(-2*time.Hour).Unix()),
			pylon.AggregateFilter{DeviceID: devID, Name: "temp", Agg: "max", Bucket: time.Minute, From: t0.Add(-2 * time.Hour), To: t0}, ""},
		{"unknown agg", "agg=median&name=temp", pylon.AggregateFilter{}, pylon.EINVALID},
		{"empty agg", "agg=&name=temp", pylon.AggregateFilter{}, pylon.EINVALID},
		{"no name", "agg=avg", pylon.AggregateFilter{}, pylon.EINVALID},
		{"bucket below a second", "agg=avg&name=temp&bucket=500ms", pylon.AggregateFilter{}, pylon.EINVALID},
		{"bucket not a duration", "agg=avg&name=temp&bucket=minute", pylon.AggregateFilter{}, pylon.EINVALID},
		{"most buckets", "agg=avg&name=temp&bucket=1s&from=2030-01-02T00:17:25Z",
			pylon.AggregateFilter{DeviceID: devID, Name: "temp", Agg: "avg", Bucket: time.Second, From: t0.Add(-httpapi.MaxBuckets * time.Second), To: t0}, ""},
		{"too many buckets", "agg=avg&name=temp&bucket=1s&from=2030-01-02T00:17:24.5Z", pylon.AggregateFilter{}, pylon.EINVALID},
		{"from not before to", "agg=avg&name=temp&from=2030-01-02T03:04:05Z", pylon.AggregateFilter{}, pylon.EINVALID},
		{"limit with agg", "agg=avg&name=temp&limit=5", pylon.AggregateFilter{}, pylon.EINVALID},
		{"cursor with agg", "agg=avg&name=temp&cursor=x", pylon.AggregateFilter{}, pylon.EINVALID},
		{"csv with agg", "agg=avg&name=temp&format=csv", pylon.AggregateFilter{}, pylon.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			tm := withTelemetry(f)
			w := f.serve("GET", "/api/v1/devices/"+devID+"/readings?"+tt.query, "", f.as(pylon.RoleViewer))
			if tt.wantCode != "" {
				checkError(t, w, 422, tt.wantCode)
				if got := tm.aggFilters(); len(got) != 0 {
					t.Errorf("got AggregateReadings calls %+v, want none", got)
				}
				return
			}
			var list httpapi.BucketList
			decode(t, w, 200, &list)
			if len(list.Buckets) != 1 || list.Buckets[0].Value != 20.25 || list.Buckets[0].Count != 4 || !list.Buckets[0].Start.Equal(tt.want.From) {
				t.Errorf("got buckets %+v, want one of value 20.25, count 4", list.Buckets)
			}
			got := tm.aggFilters()
			if len(got) != 1 || !got[0].From.Equal(tt.want.From) || !got[0].To.Equal(tt.want.To) {
				t.Fatalf("got filters %+v, want [%+v]", got, tt.want)
			}
			got[0].From, got[0].To = tt.want.From, tt.want.To
			if !reflect.DeepEqual(got[0], tt.want) {
				t.Errorf("got filter %+v, want %+v", got[0], tt.want)
			}
		})
	}
}

func TestReadings_LatestAndQuarantine(t *testing.T) {
	f := newFixture(t)
	tm := withTelemetry(f)

	w := f.serve("GET", "/api/v1/devices/"+devID+"/readings/latest", "", f.as(pylon.RoleViewer))
	if strings.Contains(w.Body.String(), "next_cursor") {
		t.Errorf("got body %s, want no next_cursor for latest", w.Body.String())
	}
	var list httpapi.LatestReadingList
	decode(t, w, 200, &list)
	if len(list.Readings) != 2 || list.Readings[1].BoolValue == nil || !*list.Readings[1].BoolValue {
		t.Errorf("got %+v, want temp and door=true", list.Readings)
	}

	tests := []struct {
		name      string
		target    string
		wantQuery string // "deviceID limit" FindQuarantine got; "" for a 422
	}{
		{"fleet default limit", "/api/v1/quarantine", " 50"},
		{"fleet limit", "/api/v1/quarantine?limit=200", " 200"},
		{"device", "/api/v1/devices/" + devID + "/quarantine?limit=3", devID + " 3"},
		{"limit too large", "/api/v1/quarantine?limit=201", ""},
		{"limit zero", "/api/v1/devices/" + devID + "/quarantine?limit=0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tm.mu.Lock()
			tm.quarants = nil
			tm.mu.Unlock()
			w := f.serve("GET", tt.target, "", f.as(pylon.RoleViewer))
			if tt.wantQuery == "" {
				checkError(t, w, 422, pylon.EINVALID)
				return
			}
			if !strings.Contains(w.Body.String(), `"payload":"AAH+"`) {
				t.Errorf("got body %s, want the payload in base64 (AAH+)", w.Body.String())
			}
			var ql httpapi.QuarantineList
			decode(t, w, 200, &ql)
			if len(ql.Messages) != 1 || !bytes.Equal(ql.Messages[0].Payload, []byte{0, 1, 0xfe}) || ql.Messages[0].Reason != "bad signature" {
				t.Errorf("got %+v, want the one quarantined message", ql.Messages)
			}
			tm.mu.Lock()
			got := tm.quarants
			tm.mu.Unlock()
			if len(got) != 1 || got[0] != tt.wantQuery {
				t.Errorf("got FindQuarantine calls %q, want [%q]", got, tt.wantQuery)
			}
		})
	}
}

// pagedReadings makes tm serve pages of readings in order, checking that
// each request carries the cursor the previous page returned.
func pagedReadings(t *testing.T, tm *telemetry, pages [][]*pylon.Reading) {
	tm.FindReadingsFn = func(ctx context.Context, filter pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
		tm.mu.Lock()
		defer tm.mu.Unlock()
		tm.filters = append(tm.filters, filter)
		i := len(tm.filters) - 1
		if want := fmt.Sprintf("c%d", i); i > 0 && filter.Cursor != want {
			return nil, "", pylon.Errorf(pylon.EINVALID, "got cursor %q, want %q", filter.Cursor, want)
		}
		if i >= len(pages) {
			return nil, "", errors.New("no such page")
		}
		page := pages[i]
		if len(page) > filter.Limit {
			page = page[:filter.Limit]
		}
		next := fmt.Sprintf("c%d", i+1)
		if i == len(pages)-1 {
			next = ""
		}
		return page, next, nil
	}
}

func TestReadingsCSV(t *testing.T) {
	str := func(s string) *string { return &s }
	flt := func(v float64) *float64 { return &v }
	pages := [][]*pylon.Reading{
		{
			{Name: "temp", Unit: "Cel", Time: t0, Value: flt(-3.5), Sum: flt(12)},
			{Name: "note", Time: t0.Add(time.Millisecond), StringValue: str(`say "hi", then
leave`)},
		},
		{
			{Name: "formula", Time: t0.Add(2 * time.Second), StringValue: str("=HYPERLINK(\"http://evil\")")},
			{Name: "plus", Time: t0.Add(3 * time.Second), StringValue: str("+1")},
		},
		{
			{Name: "at", Time: t0.Add(4 * time.Second), StringValue: str("@SUM(A1)")},
			{Name: "minus", Time: t0.Add(5 * time.Second), StringValue: str("-2")},
			{Name: "door", Time: t0.Add(6 * time.Second), BoolValue: ptr(false)},
			{Name: "blob", Time: t0.Add(7 * time.Second), DataValue: []byte("hi?>")},
			{Name: "=name", Unit: "@unit", Time: t0.Add(8 * time.Second), Value: flt(1e21)},
		},
	}
	wantRows := [][]string{
		{"time", "name", "unit", "value", "sum"},
		{"2030-01-02T03:04:05Z", "temp", "Cel", "-3.5", "12"},
		{"2030-01-02T03:04:05.001Z", "note", "", "say \"hi\", then\nleave", ""},
		{"2030-01-02T03:04:07Z", "formula", "", "'=HYPERLINK(\"http://evil\")", ""},
		{"2030-01-02T03:04:08Z", "plus", "", "'+1", ""},
		{"2030-01-02T03:04:09Z", "at", "", "'@SUM(A1)", ""},
		{"2030-01-02T03:04:10Z", "minus", "", "'-2", ""},
		{"2030-01-02T03:04:11Z", "door", "", "false", ""},
		{"2030-01-02T03:04:12Z", "blob", "", "aGk/Pg==", ""},
		{"2030-01-02T03:04:13Z", "'=name", "'@unit", "1e+21", ""},
	}
	tests := []struct {
		name string
		opts []reqOpt
		q    string
	}{
		{"format parameter", nil, "?format=csv&name=x&order=desc"},
		{"Accept header", []reqOpt{withHeader("Accept", "application/json;q=0.5, text/csv")}, "?name=x&order=desc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			tm := withTelemetry(f)
			pagedReadings(t, tm, pages)
			w := f.serve("GET", "/api/v1/devices/"+devID+"/readings"+tt.q, "", append(tt.opts, f.as(pylon.RoleViewer))...)
			if w.Code != 200 {
				t.Fatalf("got status %d, want 200 (body %s)", w.Code, w.Body.String())
			}
			if got, want := w.Header().Get("Content-Type"), "text/csv; charset=utf-8"; got != want {
				t.Errorf("got Content-Type %q, want %q", got, want)
			}
			if got, want := w.Header().Get("Content-Disposition"), `attachment; filename="`+devID+`-readings.csv"`; got != want {
				t.Errorf("got Content-Disposition %q, want %q", got, want)
			}
			body := w.Body.String()
			if !strings.HasPrefix(body, "time,name,unit,value,sum\r\n") {
				t.Errorf("got body starting %q, want the header row with CRLF", truncateStr(body, 40))
			}
			if !strings.Contains(body, "\"say \"\"hi\"\", then\r\nleave\"") {
				t.Errorf("got body %q, want the note quoted per RFC 4180", body)
			}
			rows, err := csv.NewReader(strings.NewReader(body)).ReadAll()
			if err != nil {
				t.Fatalf("parse CSV: %v", err)
			}
			if !reflect.DeepEqual(rows, wantRows) {
				t.Errorf("got rows\n%q\nwant\n%q", rows, wantRows)
			}
			if got := w.Result().Trailer.Get(httpapi.TrailerNextCursor); got != "" {
				t.Errorf("got trailer %s %q, want none for a complete export", httpapi.TrailerNextCursor, got)
			}
			got := tm.readingFilters()
			if len(got) != 3 {
				t.Fatalf("got %d FindReadings calls, want 3", len(got))
			}
			for i, fl := range got {
				if fl.DeviceID != devID || fl.Name != "x" || !fl.Desc || fl.Limit != httpapi.MaxReadingLimit {
					t.Errorf("page %d: got filter %+v, want device, name x, desc, limit %d", i, fl, httpapi.MaxReadingLimit)
				}
			}
		})
	}
}

func TestReadingsCSV_RowLimit(t *testing.T) {
	f := newFixture(t)
	tm := withTelemetry(f)
	page := []*pylon.Reading{numReading("a", 1), numReading("b", 2)}
	pagedReadings(t, tm, [][]*pylon.Reading{page, page, page})
	w := f.serve("GET", "/api/v1/devices/"+devID+"/readings?format=csv&limit=3", "", f.as(pylon.RoleViewer))
	if w.Code != 200 {
		t.Fatalf("got status %d, want 200 (body %s)", w.Code, w.Body.String())
	}
	rows, err := csv.NewReader(strings.NewReader(w.Body.String())).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 {
		t.Errorf("got %d rows, want the header and 3", len(rows))
	}
	if got := w.Result().Trailer.Get(httpapi.TrailerNextCursor); got != "c2" {
		t.Errorf("got trailer %q, want c2", got)
	}
	if got := tm.readingFilters(); len(got) != 2 || got[0].Limit != 3 || got[1].Limit != 1 {
		t.Errorf("got filters %+v, want limits 3 then 1", got)
	}

	for _, q := range []string{"limit=1000001", "limit=0", "cursor=" + strings.Repeat("x", 2000)} {
		w := f.serve("GET", "/api/v1/devices/"+devID+"/readings?format=csv&"+q, "", f.as(pylon.RoleViewer))
		checkError(t, w, 422, pylon.EINVALID)
	}
	// A bad cursor found by the store on the first page is a proper error.
	tm.FindReadingsFn = func(context.Context, pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
		return nil, "", pylon.Errorf(pylon.EINVALID, "cursor: invalid")
	}
	w = f.serve("GET", "/api/v1/devices/"+devID+"/readings?format=csv&cursor=zz", "", f.as(pylon.RoleViewer))
	checkError(t, w, 422, pylon.EINVALID)
}

// TestReadingsCSV_BrokenTransfer checks that a store failure after the
// first page breaks the transfer instead of ending the file early.
func TestReadingsCSV_BrokenTransfer(t *testing.T) {
	f := newFixture(t)
	tm := withTelemetry(f)
	pagedReadings(t, tm, [][]*pylon.Reading{{numReading("a", 1)}, {numReading("b", 2)}})
	tm.FindReadingsFn = func(inner func(context.Context, pylon.ReadingFilter) ([]*pylon.Reading, string, error)) func(context.Context, pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
		return func(ctx context.Context, fl pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
			if fl.Cursor != "" {
				return nil, "", errors.New("disk I/O error")
			}
			return inner(ctx, fl)
		}
	}(tm.FindReadingsFn)
	url := f.start()
	var buf bytes.Buffer
	err := f.client(url, pylon.RoleViewer).ReadingsCSV(context.Background(), pylon.ReadingFilter{DeviceID: devID}, &buf)
	if err == nil {
		t.Fatalf("got nil error and %q, want a broken transfer", buf.String())
	}
	if !strings.Contains(f.logBuf.String(), "disk I/O error") {
		t.Errorf("log lacks the store error:\n%s", f.logBuf.String())
	}
}

func TestClient_Telemetry(t *testing.T) {
	f := newFixture(t)
	tm := withTelemetry(f)
	url := f.start()
	ctx := context.Background()
	c := f.client(url, pylon.RoleViewer)

	from, to := t0.Add(-time.Hour), t0.Add(time.Nanosecond)
	rf := pylon.ReadingFilter{DeviceID: devID, Name: "temp", From: &from, To: &to, Cursor: "cur", Limit: 7, Desc: true}
	readings, next, err := c.ListReadings(ctx, rf)
	if err != nil {
		t.Fatal(err)
	}
	if len(readings) != 1 || *readings[0].Value != 21.5 || next != "" {
		t.Errorf("got %+v %q, want one reading and no cursor", readings, next)
	}
	if got := tm.readingFilters(); len(got) != 1 || !got[0].From.Equal(from) || !got[0].To.Equal(to) {
		t.Errorf("got filters %+v, want [%+v]", got, rf)
	} else {
		got[0].From, got[0].To = rf.From, rf.To
		if !reflect.DeepEqual(got[0], rf) {
			t.Errorf("got filter %+v, want %+v", got[0], rf)
		}
	}

	latest, err := c.LatestReadings(ctx, devID)
	if err != nil || len(latest) != 2 {
		t.Errorf("latest: got %+v, %v, want 2 readings", latest, err)
	}

	af := pylon.AggregateFilter{DeviceID: devID, Name: "temp", Agg: pylon.AggMax, Bucket: 5 * time.Minute, From: from, To: t0}
	buckets, err := c.AggregateReadings(ctx, af)
	if err != nil || len(buckets) != 1 || buckets[0].Count != 4 {
		t.Errorf("aggregate: got %+v, %v, want one bucket", buckets, err)
	}
	if got := tm.aggFilters(); len(got) != 1 || !got[0].From.Equal(af.From) || !got[0].To.Equal(af.To) || got[0].Bucket != af.Bucket || got[0].Agg != af.Agg {
		t.Errorf("got aggregate filters %+v, want [%+v]", got, af)
	}

	msgs, err := c.Quarantine(ctx, devID, 5)
	if err != nil || len(msgs) != 1 || !bytes.Equal(msgs[0].Payload, []byte{0, 1, 0xfe}) {
		t.Errorf("quarantine: got %+v, %v, want one message", msgs, err)
	}
	if _, err := c.Quarantine(ctx, "", 0); err != nil {
		t.Errorf("fleet quarantine: %v", err)
	}

	var buf bytes.Buffer
	if err := c.ReadingsCSV(ctx, pylon.ReadingFilter{DeviceID: devID, Limit: 5}, &buf); err != nil {
		t.Fatal(err)
	}
	if got, want := buf.String(), "time,name,unit,value,sum\r\n2030-01-02T03:04:05Z,temp,Cel,21.5,\r\n"; got != want {
		t.Errorf("got CSV %q, want %q", got, want)
	}

	_, err = c.AggregateReadings(ctx, pylon.AggregateFilter{DeviceID: devID, Agg: "median", Name: "temp"})
	if pylon.ErrorCode(err) != pylon.EINVALID {
		t.Errorf("bad agg: got %v, want invalid", err)
	}
	err = c.ReadingsCSV(ctx, pylon.ReadingFilter{DeviceID: devID, Limit: httpapi.MaxCSVRows + 1}, &buf)
	if pylon.ErrorCode(err) != pylon.EINVALID {
		t.Errorf("CSV over the row limit: got %v, want invalid", err)
	}
}

// truncateStr shortens s for a failure message.
func truncateStr(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
