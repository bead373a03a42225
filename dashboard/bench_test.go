package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/mock"
)

// TestDevices_PagesNeverLoadTheFleet checks that the device list asks the
// store for one page only, however large the fleet.
func TestDevices_PagesNeverLoadTheFleet(t *testing.T) {
	e := MustNewEnv(t)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	var limits []int
	e.Server.Devices = &mock.DeviceService{
		FindDevicesFn: func(ctx context.Context, f pylon.DeviceFilter) ([]*pylon.Device, string, error) {
			limits = append(limits, f.Limit)
			return []*pylon.Device{{ID: "aaaaaaaaaaaaaaaa", Name: "a", State: pylon.DeviceActive}}, "next-cursor", nil
		},
	}
	b := e.MustSignIn(admin)
	_, body := b.Get("/devices?state=active&cursor=abc")
	if fmt.Sprint(limits) != "[50]" {
		t.Fatalf("got FindDevices limits %v, want [50]", limits)
	}
	if !strings.Contains(body, `href="/devices?cursor=next-cursor&amp;state=active" id="page-next"`) {
		t.Fatal("the Next link does not carry the cursor and the filter")
	}
	if !strings.Contains(body, `href="/devices?state=active" id="page-first"`) {
		t.Fatal("the First link does not keep the filter")
	}
}

// BenchmarkDevicesPage renders pages of the device list of a fleet of
// 10,000 and of 100,000 devices over in-memory SQLite, through the whole
// handler (session, store query, template): the first page, a page deep
// into the fleet (past 90% of it), a label filter (1% match), a name search
// (100 match) and one that matches nothing (it scans every name), and the
// fleet overview (whose device counts scan the fleet).
//
//	flock /tmp/bench.lock go test -run '^$' -bench DevicesPage -benchmem ./dashboard
func BenchmarkDevicesPage(b *testing.B) {
	for _, size := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("fleet=%d", size), func(b *testing.B) {
			e := MustNewEnv(b)
			admin, _ := e.MustToken(pylon.RoleAdmin)
			for i := range size {
				e.MustDevice(fmt.Sprintf("dev-%06d", i), map[string]string{"rack": fmt.Sprint(i % 100)})
			}
			br := e.MustSignIn(admin)
			var cursor string
			for range 9 {
				var err error
				if _, cursor, err = e.Devices.FindDevices(context.Background(), pylon.DeviceFilter{Limit: size / 10, Cursor: cursor}); err != nil {
					b.Fatal(err)
				}
			}
			pages := []struct{ name, path string }{
				{"first", "/devices"},
				{"deep", "/devices?cursor=" + url.QueryEscape(cursor)},
				{"label", "/devices?label=rack%3D42"},
				{"search", "/devices?q=dev-0099"},
				{"search-nomatch", "/devices?q=nomatch"}, // scans every name
				{"overview", "/"},
			}
			for _, pg := range pages {
				b.Run(pg.name, func(b *testing.B) {
					req := httptest.NewRequest("GET", pg.path, nil)
					for _, c := range br.Client.Jar.Cookies(mustURL(e.TS.URL)) {
						req.AddCookie(c)
					}
					for b.Loop() {
						w := httptest.NewRecorder()
						e.Server.ServeHTTP(w, req)
						if w.Code != http.StatusOK {
							b.Fatalf("got %d", w.Code)
						}
					}
				})
			}
		})
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
