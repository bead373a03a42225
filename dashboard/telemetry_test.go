package dashboard_test

import (
	"compress/gzip"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/dashboard"
	"github.com/pylonhq/pylon/sqlite"
)

func TestReadingsJSON_Params(t *testing.T) {
	st := &readingsStore{n: 100}
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry = st.service() })
	st.end = e.Now()
	viewer, _ := e.MustToken(pylon.RoleViewer)
	b := e.MustSignIn(viewer)
	d := e.MustDevice("sensor-1", nil)
	base := "/devices/" + d.ID + "/readings.json"

	tests := []struct {
		name   string
		path   string
		status int
		span   time.Duration // of a 200
		errMsg string        // in the error body
	}{
		{"default range", base + "?name=temp", 200, time.Hour, ""},
		{"15m", base + "?name=temp&range=15m", 200, 15 * time.Minute, ""},
		{"1h", base + "?name=temp&range=1h", 200, time.Hour, ""},
		{"6h", base + "?name=temp&range=6h", 200, 6 * time.Hour, ""},
		{"24h", base + "?name=temp&range=24h", 200, 24 * time.Hour, ""},
		{"7d", base + "?name=temp&range=7d", 200, 7 * 24 * time.Hour, ""},
		{"name with spaces and unicode", base + "?name=" + url.QueryEscape("room temp °"), 200, time.Hour, ""},
		{"unknown range", base + "?name=temp&range=2h", 422, 0, "range: must be one of"},
		{"script range", base + "?name=temp&range=" + url.QueryEscape("<script>"), 422, 0, "range:"},
		{"no name", base + "?range=1h", 422, 0, "name: required"},
		{"long name", base + "?name=" + strings.Repeat("n", pylon.MaxSenMLNameLen+1), 422, 0, "name: longer than"},
		{"control character in name", base + "?name=a%01b", 422, 0, "name: contains a control character"},
		{"invalid UTF-8 in name", base + "?name=a%ffb", 422, 0, "name: not valid UTF-8"},
		{"malformed query", base + "?name=%zz", 400, 0, "malformed query"},
		{"oversized query", base + "?name=temp&pad=" + strings.Repeat("x", 600), 400, 0, "query too long"},
		{"unknown device", "/devices/aaaaaaaaaaaaaaaa/readings.json?name=temp", 404, 0, ""},
		{"bad device id", "/devices/NOPE/readings.json?name=temp", 404, 0, "no such device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st.mu.Lock()
			st.finds = nil
			st.mu.Unlock()
			resp, body := b.Get(tt.path)
			if resp.StatusCode != tt.status {
				t.Fatalf("got status %d, want %d: %.300s", resp.StatusCode, tt.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("got Content-Type %q, want application/json", ct)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Fatalf("got Cache-Control %q, want no-store", cc)
			}
			if tt.status != 200 {
				if got := decodeJSON[struct{ Error string }](t, body).Error; !strings.Contains(got, tt.errMsg) {
					t.Fatalf("got error %q, want it to contain %q", got, tt.errMsg)
				}
				st.mu.Lock()
				defer st.mu.Unlock()
				if len(st.finds) != 0 {
					t.Fatalf("the store was asked %d times for a bad request, want 0", len(st.finds))
				}
				return
			}
			s := decodeJSON[series](t, body)
			if got := time.Duration((s.To - s.From) * float64(time.Second)); got.Round(time.Second) != tt.span {
				t.Fatalf("got range of %v, want %v", got, tt.span)
			}
			if s.To != float64(e.Now().UnixMilli())/1000 {
				t.Fatalf("got to %v, want now %v", s.To, e.Now().Unix())
			}
			st.mu.Lock()
			f := st.finds[0]
			st.mu.Unlock()
			if f.DeviceID != d.ID || f.From == nil || f.To == nil || !f.To.Equal(e.Now()) || f.To.Sub(*f.From) != tt.span || f.Desc {
				t.Fatalf("got filter %+v, want device %s, ascending, %v up to now", f, d.ID, tt.span)
			}
		})
	}
}

func TestReadingsJSON_RawOrAggregated(t *testing.T) {
	tests := []struct {
		name     string
		n        int
		rng      string
		mode     string
		points   int
		bucket   time.Duration // of avg mode
		maxFinds int
	}{
		{"empty", 0, "1h", "raw", 0, 0, 1},
		{"a few", 500, "1h", "raw", 500, 0, 1},
		{"one page", 10_000, "6h", "raw", 10_000, 0, 2},
		{"exactly the raw limit", dashboard.MaxRawPoints, "6h", "raw", dashboard.MaxRawPoints, 0, 3},
		{"one beyond the raw limit", dashboard.MaxRawPoints + 1, "24h", "avg", 1440, time.Minute, 3},
		{"a week at one a second", 604_800, "7d", "avg", 1008, 10 * time.Minute, 3},
		{"a lot in 15 minutes", 50_000, "15m", "avg", 900, time.Second, 3},
		{"a lot in an hour", 50_000, "1h", "avg", 1800, 2 * time.Second, 3},
		{"a lot in 6 hours", 50_000, "6h", "avg", 1440, 15 * time.Second, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &readingsStore{n: tt.n}
			e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry = st.service() })
			// Whole-second buckets from an aligned clock give exact counts.
			e.Advance(e.Now().Truncate(time.Hour).Add(time.Hour).Sub(e.Now()))
			st.end = e.Now()
			admin, _ := e.MustToken(pylon.RoleAdmin)
			b := e.MustSignIn(admin)
			d := e.MustDevice("sensor-1", nil)
			resp, body := b.Get("/devices/" + d.ID + "/readings.json?name=temp&range=" + tt.rng)
			if resp.StatusCode != 200 {
				t.Fatalf("got status %d, want 200: %.300s", resp.StatusCode, body)
			}
			s := decodeJSON[series](t, body)
			if s.Mode != tt.mode || len(s.T) != tt.points || len(s.V) != tt.points {
				t.Fatalf("got mode %q with %d times and %d values, want %q with %d", s.Mode, len(s.T), len(s.V), tt.mode, tt.points)
			}
			if s.Name != "temp" || s.Range != tt.rng {
				t.Fatalf("got name %q range %q, want temp %s", s.Name, s.Range, tt.rng)
			}
			for i := 1; i < len(s.T); i++ {
				if s.T[i] < s.T[i-1] {
					t.Fatalf("times out of order at %d: %v after %v", i, s.T[i], s.T[i-1])
				}
			}
			st.mu.Lock()
			defer st.mu.Unlock()
			if len(st.finds) > tt.maxFinds || st.rows > dashboard.MaxRawPoints+1 {
				t.Fatalf("got %d FindReadings calls reading %d rows, want at most %d calls and %d rows", len(st.finds), st.rows, tt.maxFinds, dashboard.MaxRawPoints+1)
			}
			for _, f := range st.finds {
				if f.Limit < 1 || f.Limit > 10_000 {
					t.Fatalf("got FindReadings limit %d, want 1 to 10000", f.Limit)
				}
			}
			if tt.mode == "raw" {
				if len(st.aggs) != 0 {
					t.Fatalf("got %d AggregateReadings calls in raw mode, want 0", len(st.aggs))
				}
				if tt.points > 0 && (s.Unit != "Cel" || s.V[len(s.V)-1] != float64((tt.n-1)%100)) {
					t.Fatalf("got unit %q last value %v, want Cel %d", s.Unit, s.V[len(s.V)-1], (tt.n-1)%100)
				}
				return
			}
			if len(st.aggs) != 1 {
				t.Fatalf("got %d AggregateReadings calls, want 1", len(st.aggs))
			}
			f := st.aggs[0]
			if f.Agg != pylon.AggAvg || f.Bucket != tt.bucket || f.Name != "temp" || f.DeviceID != d.ID || !f.To.Equal(e.Now()) {
				t.Fatalf("got aggregate filter %+v, want avg of %v buckets up to now", f, tt.bucket)
			}
			if s.Bucket != int64(tt.bucket/time.Second) || s.Unit != "Cel" {
				t.Fatalf("got bucket %ds unit %q, want %v and Cel", s.Bucket, s.Unit, tt.bucket)
			}
		})
	}
}

func TestReadingsJSON_SkipsWhatCannotBePlotted(t *testing.T) {
	now := time.Now()
	store := &readingsStore{}
	svc := store.service()
	svc.FindReadingsFn = func(ctx context.Context, f pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
		return []*pylon.Reading{
			{Name: "x", Time: now.Add(-3 * time.Second), Value: ptr(1.5)},
			{Name: "x", Time: now.Add(-2 * time.Second), StringValue: ptr("high")},
			{Name: "x", Time: now.Add(-time.Second), Value: ptr(math.NaN())},
			{Name: "x", Time: now.Add(-4 * time.Second), Value: ptr(-2.0)}, // out of order
		}, "", nil
	}
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry = svc })
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	resp, body := b.Get("/devices/" + d.ID + "/readings.json?name=x")
	if resp.StatusCode != 200 {
		t.Fatalf("got status %d, want 200: %s", resp.StatusCode, body)
	}
	s := decodeJSON[series](t, body)
	if len(s.V) != 2 || s.V[0] != -2 || s.V[1] != 1.5 || s.T[0] >= s.T[1] {
		t.Fatalf("got times %v values %v, want the two numbers in time order", s.T, s.V)
	}
}

func TestTelemetryEndpoints_NeedASession(t *testing.T) {
	st := &readingsStore{n: 3}
	hub := &Hub{}
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry, e.Server.Events = st.service(), hub })
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	for _, path := range []string{"/devices/" + d.ID + "/readings.json?name=temp", "/devices/" + d.ID + "/events", "/stats.json"} {
		tests := []struct {
			name    string
			b       *Browser
			headers []string
			status  int
		}{
			{"no session", e.NewBrowser(), nil, http.StatusUnauthorized},
			{"cross-site", b, []string{"Sec-Fetch-Site: cross-site"}, http.StatusForbidden},
			{"foreign origin", b, []string{"Origin: https://evil.example"}, http.StatusForbidden},
			{"same origin", b, []string{"Sec-Fetch-Site: same-origin"}, http.StatusOK},
		}
		for _, tt := range tests {
			t.Run(path+" "+tt.name, func(t *testing.T) {
				s := tt.b.OpenStream(path, tt.headers...)
				defer s.Close()
				if s.Resp.StatusCode != tt.status {
					t.Fatalf("got status %d, want %d", s.Resp.StatusCode, tt.status)
				}
				if tt.status != http.StatusOK && s.Resp.Header.Get("Content-Type") != "application/json" {
					t.Fatalf("got Content-Type %q, want a JSON error, not a redirect or page", s.Resp.Header.Get("Content-Type"))
				}
			})
		}
	}
}

func TestTelemetryEndpoints_Disabled(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	for _, path := range []string{"/devices/" + d.ID + "/readings.json?name=temp", "/devices/" + d.ID + "/events", "/stats.json"} {
		if resp, body := b.Get(path); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "telemetry is not enabled") {
			t.Errorf("%s: got %d %q, want 503 telemetry is not enabled", path, resp.StatusCode, body)
		}
	}
	for _, path := range []string{"/", "/devices/" + d.ID} {
		resp, body := b.Get(path)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Telemetry is not enabled on this server") {
			t.Errorf("%s: got status %d, want 200 with the note that telemetry is not enabled", path, resp.StatusCode)
		}
		if strings.Contains(body, "telemetry.js") {
			t.Errorf("%s: loads telemetry.js without telemetry", path)
		}
	}
}

func TestDevicePage_Telemetry(t *testing.T) {
	const (
		xssName = `<script>alert(1)</script>`
		xssText = `<img src=x onerror=alert(2)>`
		xssWhy  = `bad <b>payload</b> "><script>alert(3)</script>`
	)
	at := time.Now().Add(-time.Minute)
	st := &readingsStore{
		latest: []*pylon.Reading{
			{Name: "temp", Unit: "Cel", Time: at, Value: ptr(21.5)},
			{Name: xssName, Time: at, StringValue: ptr(xssText)},
			{Name: "door", Time: at, BoolValue: ptr(true)},
			{Name: "energy", Unit: "Wh", Time: at, Value: ptr(1234567.891)},
			{Name: "blob", Time: at, DataValue: []byte{1, 2, 3}},
			{Name: "hum", Unit: "%RH", Time: at, Value: ptr(45.25)},
		},
		errors: []*pylon.QuarantinedMessage{{ID: 1, Received: at, Reason: xssWhy, Code: "invalid", Seq: 1234567}},
	}
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry, e.Server.Events = st.service(), &Hub{} })
	viewer, _ := e.MustToken(pylon.RoleViewer)
	b := e.MustSignIn(viewer)
	d := e.MustDevice("sensor-1", nil)
	resp, body := b.Get("/devices/" + d.ID + "?range=6h")
	if resp.StatusCode != 200 {
		t.Fatalf("got status %d, want 200", resp.StatusCode)
	}
	for _, want := range []string{
		`<td class="val">21.5 °C</td>`, `<td class="val">1,234,570 Wh</td>`, `<td class="val">45.25% RH</td>`,
		`<td class="val">true</td>`, `<td class="val">3 bytes of data</td>`,
		`&lt;script&gt;alert(1)&lt;/script&gt;`, `&lt;img src=x onerror=alert(2)&gt;`,
		`bad &lt;b&gt;payload&lt;/b&gt; &#34;&gt;&lt;script&gt;alert(3)&lt;/script&gt;`,
		`data-readings-url="/devices/` + d.ID + `/readings.json"`, `data-events-url="/devices/` + d.ID + `/events"`,
		`data-range="6h"`, `<figure class="tchart" data-name="energy" data-unit="Wh">`,
		`<figure class="tchart" data-name="hum" data-unit="%RH">`, `<figure class="tchart" data-name="temp" data-unit="Cel">`,
		`telemetry.js`, `id="live-status"`, `href="/devices/` + d.ID + `?range=7d" data-range="7d"`,
		`<td class="code">invalid</td>`, `<td class="seq num">1234567</td>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("device page: missing %q", want)
		}
	}
	for _, bad := range []string{"<script>alert", "<img src=x", "<b>payload", `tchart" data-name="door"`, `tchart" data-name="blob"`} {
		if strings.Contains(body, bad) {
			t.Errorf("device page: contains %q", bad)
		}
	}
	if got := strings.Join(st.errCall, ","); got != d.ID {
		t.Errorf("got FindQuarantine for %q, want the device only", got)
	}
}

func TestDevicePage_ChartSelector(t *testing.T) {
	st := &readingsStore{}
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"} {
		st.latest = append(st.latest, &pylon.Reading{Name: n, Time: time.Now(), Value: ptr(1.0)})
	}
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry = st.service() })
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	tests := []struct {
		name  string
		query string
		want  string // the charted names
	}{
		{"first eight", "", "abcdefgh"},
		{"chosen", "?chart=j&chart=b", "bj"},
		{"unknown names fall back", "?chart=zzz", "abcdefgh"},
		{"at most eight", "?chart=a&chart=b&chart=c&chart=d&chart=e&chart=f&chart=g&chart=h&chart=i&chart=j", "abcdefgh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, body := b.Get("/devices/" + d.ID + tt.query)
			got := ""
			for _, part := range strings.Split(body, `<figure class="tchart" data-name="`)[1:] {
				got += part[:strings.IndexByte(part, '"')]
			}
			if got != tt.want {
				t.Fatalf("got charts %q, want %q", got, tt.want)
			}
			if !strings.Contains(body, `id="chart-picker"`) || strings.Count(body, `name="chart"`) != 10 {
				t.Fatal("want a selector of the 10 names")
			}
			if strings.Contains(body, "data-events-url") {
				t.Fatal("a live stream URL without an EventService")
			}
			if m := inlineRE.FindString(body); m != "" {
				t.Fatalf("inline script or style: %q", m)
			}
		})
	}
}

func TestOverview_Telemetry(t *testing.T) {
	const why = `<script>alert(1)</script>`
	hub := &Hub{}
	st := &readingsStore{}
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry, e.Server.Events = st.service(), hub })
	dev := e.MustDevice("<i>pump</i>", nil)
	st.errors = []*pylon.QuarantinedMessage{
		{ID: 3, DeviceID: dev.ID, Received: time.Now(), Reason: why},
		{ID: 2, DeviceID: "aaaaaaaaaaaaaaaa", Received: time.Now(), Reason: "gone"},
		{ID: 1, DeviceID: "not a device id", Received: time.Now(), Reason: "bad"},
	}
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	waitFor(t, "the fleet subscription", func() bool { return hub.Subscribers("") == 1 })

	start := e.Now()
	for i := range 30 {
		hub.PublishEvent(pylon.Event{Type: pylon.EventReadings, DeviceID: "aaaaaaaaaaaaaaaa", Time: start})
		if i%10 == 0 {
			hub.PublishEvent(pylon.Event{Type: pylon.EventRejected, DeviceID: "aaaaaaaaaaaaaaaa", Time: start, Reason: "bad"})
		}
		hub.PublishEvent(pylon.Event{Type: pylon.EventConnection, DeviceID: "aaaaaaaaaaaaaaaa", Time: start, Online: ptr(true)})
	}
	type stats struct {
		Messages      float64 `json:"messages_per_second"`
		Rejected      float64 `json:"rejected_per_second"`
		MessagesTotal int64   `json:"messages_total"`
		RejectedTotal int64   `json:"rejected_total"`
		MessagesText  string  `json:"messages_text"`
		RejectedText  string  `json:"rejected_text"`
		Window        int     `json:"window_seconds"`
		Devices       int     `json:"devices"`
		Online        int     `json:"online"`
		Offline       int     `json:"offline"`
	}
	var got stats
	waitFor(t, "the meter to count the events", func() bool {
		_, body := b.Get("/stats.json")
		got = decodeJSON[stats](t, body)
		return got.MessagesTotal == 30 && got.RejectedTotal == 3
	})
	e.Advance(10 * time.Second)
	_, body := b.Get("/stats.json")
	got = decodeJSON[stats](t, body)
	if got.Messages != 3 || got.Rejected != 0.3 || got.MessagesText != "3.0" || got.RejectedText != "0.3" || got.Window != 10 {
		t.Fatalf("after 10 s: got %+v, want 3.0 and 0.3 per second over 10 s", got)
	}
	_, page := b.Get("/")
	for _, want := range []string{
		`id="stat-msg-rate"`, `<span class="value">3.0</span>`, `<span class="value">0.3</span>`, `bad-card`,
		`id="fleet-rates" data-stats-url="/stats.json"`, `telemetry.js`,
		`<a href="/devices/` + dev.ID + `" title="` + dev.ID + `">&lt;i&gt;pump&lt;/i&gt;</a>`,
		`<a href="/devices/aaaaaaaaaaaaaaaa" title="aaaaaaaaaaaaaaaa">aaaaaaaaaaaaaaaa</a>`, `<span class="mono">not a device id</span>`,
		`&lt;script&gt;alert(1)&lt;/script&gt;`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("overview: missing %q", want)
		}
	}
	if strings.Contains(page, why) || strings.Contains(page, "<i>pump") {
		t.Error("overview: a reason or device name is not escaped")
	}
	if got := strings.Join(st.errCall, ","); got != "" {
		t.Errorf("got FindQuarantine for %q, want the whole fleet (\"\")", got)
	}
	if got.Devices != 1 || got.Online != 0 || got.Offline != 1 {
		t.Errorf("got %d devices, %d online, %d offline, want 1, 0, 1", got.Devices, got.Online, got.Offline)
	}
	if err := e.Devices.RecordConnection(t.Context(), pylon.ConnectionEvent{DeviceID: dev.ID, Online: true, At: e.Now()}); err != nil {
		t.Fatal(err)
	}
	_, body = b.Get("/stats.json")
	if got = decodeJSON[stats](t, body); got.Devices != 1 || got.Online != 1 || got.Offline != 0 {
		t.Errorf("after a connection: got %d devices, %d online, %d offline, want 1, 1, 0", got.Devices, got.Online, got.Offline)
	}
	e.Advance(2 * time.Minute)
	_, body = b.Get("/stats.json")
	if got = decodeJSON[stats](t, body); got.Messages != 0 || got.MessagesTotal != 30 || got.Window != 60 {
		t.Fatalf("two minutes later: got %+v, want no rate, the totals kept, a 60 s window", got)
	}
	e.Server.Close()
	waitFor(t, "Close to end the fleet subscription", func() bool { return hub.Subscribers("") == 0 })
}

func TestReadingsJSON_BoundsConcurrentLoads(t *testing.T) {
	var (
		mu            sync.Mutex
		running, peak int
	)
	release := make(chan struct{})
	svc := (&readingsStore{}).service()
	svc.FindReadingsFn = func(ctx context.Context, f pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
		mu.Lock()
		running++
		peak = max(peak, running)
		mu.Unlock()
		<-release
		mu.Lock()
		running--
		mu.Unlock()
		return nil, "", nil
	}
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry = svc })
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	const n = 12
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for range n {
		wg.Go(func() {
			resp, _ := b.Get("/devices/" + d.ID + "/readings.json?name=temp")
			codes <- resp.StatusCode
		})
	}
	waitFor(t, "the first loads to run", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return running == 8
	})
	close(release)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusOK {
			t.Fatalf("got status %d, want 200", c)
		}
	}
	if peak != 8 {
		t.Fatalf("got %d loads at once, want at most 8", peak)
	}
}

func TestDevicePage_TelemetryStoreFails(t *testing.T) {
	svc := (&readingsStore{}).service()
	svc.LatestReadingsFn = func(ctx context.Context, id string) ([]*pylon.Reading, error) {
		return nil, errors.New("disk on fire")
	}
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry = svc })
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	resp, body := b.Get("/devices/" + d.ID)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got status %d, want 200: the rest of the page still shows", resp.StatusCode)
	}
	if !strings.Contains(body, `<p class="alert" role="alert">internal error</p>`) || strings.Contains(body, "disk on fire") {
		t.Fatal("want the panel to say \"internal error\" and not the details")
	}
}

// TestReadingsJSON_SQLite runs the history endpoint on the real store: the
// raw pages and the switch to buckets must fit its paging and bucketing.
func TestReadingsJSON_SQLite(t *testing.T) {
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry = sqlite.NewTelemetryService(e.DB) })
	e.Advance(e.Now().Truncate(time.Minute).Add(time.Minute).Sub(e.Now())) // whole buckets
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	// 20,000 readings of "a" in the last 2000 s; 20,001 of "b" in the last 20001 s.
	write := func(name string, n int, step time.Duration, seq uint64) {
		var msgs []*pylon.TelemetryMessage
		for i := 0; i < n; i += pylon.MaxReadingsPerMessage {
			m := &pylon.TelemetryMessage{DeviceID: d.ID, Seq: seq, Received: e.Now()}
			seq++
			for j := i; j < min(n, i+pylon.MaxReadingsPerMessage); j++ {
				v := float64(j % 10)
				m.Readings = append(m.Readings, pylon.Reading{DeviceID: d.ID, Name: name, Unit: "W", Value: &v, Time: e.Now().Add(-time.Duration(n-j) * step)})
			}
			msgs = append(msgs, m)
		}
		if _, err := e.Server.Telemetry.WriteMessages(t.Context(), msgs); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	write("a", dashboard.MaxRawPoints, 100*time.Millisecond, 1)
	write("b", dashboard.MaxRawPoints+1, time.Second, 100)

	tests := []struct {
		name, rng, mode string
		points          int
	}{
		{"a", "1h", "raw", dashboard.MaxRawPoints},
		{"a", "15m", "raw", 9000},
		{"b", "6h", "avg", 1334}, // 20,001 s in 15 s buckets, the first partly
		{"b", "15m", "raw", 900},
		{"c", "1h", "raw", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name+" "+tt.rng, func(t *testing.T) {
			resp, body := b.Get("/devices/" + d.ID + "/readings.json?name=" + tt.name + "&range=" + tt.rng)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("got status %d, want 200: %s", resp.StatusCode, body)
			}
			s := decodeJSON[series](t, body)
			if s.Mode != tt.mode || len(s.T) != tt.points {
				t.Fatalf("got mode %s with %d points, want %s with %d", s.Mode, len(s.T), tt.mode, tt.points)
			}
		})
	}
}

func TestReadingsJSON_Gzip(t *testing.T) {
	st := &readingsStore{n: 5000}
	e := MustNewEnv(t, func(e *Env) { e.Server.Telemetry = st.service() })
	st.end = e.Now()
	admin, _ := e.MustToken(pylon.RoleAdmin)
	b := e.MustSignIn(admin)
	d := e.MustDevice("sensor-1", nil)
	get := func(path, accept string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", e.TS.URL+path, nil)
		req.Header.Set("Accept-Encoding", accept) // set by hand: the client does not decompress
		return b.Do(req)
	}
	path := "/devices/" + d.ID + "/readings.json?name=temp&range=6h"
	_, plain := get(path, "identity")
	tests := []struct {
		name, path, accept string
		gzip               bool
	}{
		{"large, gzip accepted", path, "gzip, deflate, br", true},
		{"large, gzip with a weight", path, "br;q=1.0, gzip;q=0.8", true},
		{"large, gzip refused", path, "gzip;q=0, br", false},
		{"large, identity", path, "identity", false},
		{"an error answer", "/devices/" + d.ID + "/readings.json?name=temp&range=2y", "gzip", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(tt.path, tt.accept)
			if got := resp.Header.Get("Content-Encoding") == "gzip"; got != tt.gzip {
				t.Fatalf("got Content-Encoding %q, want gzip %v", resp.Header.Get("Content-Encoding"), tt.gzip)
			}
			if !tt.gzip {
				return
			}
			if !strings.Contains(resp.Header.Get("Vary"), "Accept-Encoding") {
				t.Errorf("got Vary %q, want Accept-Encoding", resp.Header.Get("Vary"))
			}
			zr, err := gzip.NewReader(strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != plain || len(body) >= len(plain)/2 {
				t.Fatalf("got %d bytes decompressing to %d, want the %d bytes of the plain answer, at most half compressed", len(body), len(got), len(plain))
			}
		})
	}
}
