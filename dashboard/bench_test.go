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

// BenchmarkDevicesPage renders a page of the device list of a 10,000-device
// fleet, at the start and deep into it.
func BenchmarkDevicesPage(b *testing.B) {
	e := MustNewEnv(b)
	admin, _ := e.MustToken(pylon.RoleAdmin)
	for i := range 10_000 {
		e.MustDevice(fmt.Sprintf("dev-%05d", i), map[string]string{"rack": fmt.Sprint(i % 100)})
	}
	br := e.MustSignIn(admin)
	var cursor string
	for range 9 {
		var err error
		if _, cursor, err = e.Devices.FindDevices(context.Background(), pylon.DeviceFilter{Limit: 1000, Cursor: cursor}); err != nil {
			b.Fatal(err)
		}
	}
	for _, path := range []string{"/devices", "/devices?cursor=" + url.QueryEscape(cursor), "/devices?label=rack%3D42", "/devices?q=dev-099", "/"} {
		b.Run(path, func(b *testing.B) {
			req := httptest.NewRequest("GET", path, nil)
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
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
