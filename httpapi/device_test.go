package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
)

func TestCreateDevice(t *testing.T) {
	f := newFixture(t)
	var got *pylon.Device
	f.devices.CreateDeviceFn = func(ctx context.Context, d *pylon.Device) error {
		got = d
		d.ID, d.State = devID, pylon.DeviceRegistered
		return nil
	}
	w := f.serve("POST", "/api/v1/devices", `{"name":"sensor-1","labels":{"site":"lab"},"metadata":{"fw":"1.0"}}`, f.as(pylon.RoleOperator))
	var d pylon.Device
	decode(t, w, 201, &d)
	if d.ID != devID || d.State != pylon.DeviceRegistered || d.Name != "sensor-1" {
		t.Errorf("got %+v, want the created device", d)
	}
	if loc := w.Header().Get("Location"); loc != "/api/v1/devices/"+devID {
		t.Errorf("got Location %q, want /api/v1/devices/%s", loc, devID)
	}
	if got.Labels["site"] != "lab" || string(got.Metadata) != `{"fw":"1.0"}` {
		t.Errorf("service got labels %v metadata %s", got.Labels, got.Metadata)
	}
}

func TestCreateDevice_Errors(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		svcErr     error
		wantStatus int
		wantCode   string
	}{
		{"name taken", `{"name":"a"}`, pylon.Errorf(pylon.ECONFLICT, "device name already exists"), 409, pylon.ECONFLICT},
		{"bad label key", `{"name":"a","labels":{"bad key":"v"}}`, nil, 422, pylon.EINVALID},
		{"name with newline", `{"name":"a\nb"}`, nil, 422, pylon.EINVALID},
		{"name too long", `{"name":"` + strings.Repeat("x", 129) + `"}`, nil, 422, pylon.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.devices.CreateDeviceFn = func(context.Context, *pylon.Device) error { return tt.svcErr }
			checkError(t, f.serve("POST", "/api/v1/devices", tt.body, f.as(pylon.RoleOperator)), tt.wantStatus, tt.wantCode)
		})
	}
}

func TestListDevices_Query(t *testing.T) {
	st := func(s pylon.DeviceState) *pylon.DeviceState { return &s }
	b := func(v bool) *bool { return &v }
	str := func(s string) *string { return &s }
	tests := []struct {
		name  string
		query string
		want  pylon.DeviceFilter
	}{
		{"none", "", pylon.DeviceFilter{}},
		{"one label", "?label=site=lab", pylon.DeviceFilter{Labels: map[string]string{"site": "lab"}}},
		{"two labels", "?label=site=lab&label=tier=gold", pylon.DeviceFilter{Labels: map[string]string{"site": "lab", "tier": "gold"}}},
		{"label value with =", "?label=k=a%3Db", pylon.DeviceFilter{Labels: map[string]string{"k": "a=b"}}},
		{"empty label value", "?label=k=", pylon.DeviceFilter{Labels: map[string]string{"k": ""}}},
		{"state", "?state=suspended", pylon.DeviceFilter{State: st(pylon.DeviceSuspended)}},
		{"query", "?q=sens", pylon.DeviceFilter{Query: "sens"}},
		{"name", "?name=sensor-1", pylon.DeviceFilter{Name: str("sensor-1")}},
		{"id", "?id=" + devID, pylon.DeviceFilter{ID: str(devID)}},
		{"online", "?online=true", pylon.DeviceFilter{Online: b(true)}},
		{"offline", "?online=false", pylon.DeviceFilter{Online: b(false)}},
		{"cursor and limit", "?cursor=abc_-&limit=50", pylon.DeviceFilter{Cursor: "abc_-", Limit: 50}},
		{"max limit", "?limit=1000", pylon.DeviceFilter{Limit: 1000}},
		{"unknown parameter ignored", "?color=red", pylon.DeviceFilter{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var got pylon.DeviceFilter
			f.devices.FindDevicesFn = func(ctx context.Context, filter pylon.DeviceFilter) ([]*pylon.Device, string, error) {
				got = filter
				return []*pylon.Device{sampleDevice(devID)}, "next-page", nil
			}
			var list httpapi.DeviceList
			decode(t, f.serve("GET", "/api/v1/devices"+tt.query, "", f.as(pylon.RoleViewer)), 200, &list)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got filter %+v, want %+v", got, tt.want)
			}
			if len(list.Devices) != 1 || list.NextCursor != "next-page" {
				t.Errorf("got %d devices, cursor %q; want 1, next-page", len(list.Devices), list.NextCursor)
			}
		})
	}
}

func TestListDevices_BadQuery(t *testing.T) {
	tests := []struct {
		name, query, wantMsg string
	}{
		{"label without =", "?label=site", "label: must be key=value"},
		{"label without key", "?label==x", "label: must be key=value"},
		{"label key twice", "?label=a=1&label=a=2", `label: key "a" given twice`},
		{"bad label key", "?label=a%20b=1", `labels: invalid key "a b" (letters, digits, '_', '.', '-', '/', at most 63)`},
		{"bad state", "?state=happy", "state: must be registered, active, suspended or decommissioned"},
		{"bad online", "?online=yes", "online: must be true or false"},
		{"limit 0", "?limit=0", "limit: must be an integer from 1 to 1000"},
		{"limit too big", "?limit=1001", "limit: must be an integer from 1 to 1000"},
		{"limit negative", "?limit=-1", "limit: must be an integer from 1 to 1000"},
		{"limit not a number", "?limit=ten", "limit: must be an integer from 1 to 1000"},
		{"cursor too long", "?cursor=" + strings.Repeat("c", 1025), "cursor: longer than 1024 bytes"},
		{"q too long", "?q=" + strings.Repeat("q", 129), "q: longer than 128 bytes"},
		{"q control char", "?q=a%00b", "q: not printable UTF-8"},
		{"bad id", "?id=nope", "id: not a device id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			e := checkError(t, f.serve("GET", "/api/v1/devices"+tt.query, "", f.as(pylon.RoleViewer)), 422, pylon.EINVALID)
			if e.Message != tt.wantMsg {
				t.Errorf("got message %q, want %q", e.Message, tt.wantMsg)
			}
			if calls := f.callList(); len(calls) != 0 {
				t.Errorf("bad query reached the services: %v", calls)
			}
		})
	}
}

func TestListDevices_Labels33(t *testing.T) {
	f := newFixture(t)
	var q strings.Builder
	for i := range 33 {
		q.WriteString("&label=k" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + "=v")
	}
	checkError(t, f.serve("GET", "/api/v1/devices?"+q.String()[1:], "", f.as(pylon.RoleViewer)), 422, pylon.EINVALID)
}

func TestListDevices_BadCursorFromStore(t *testing.T) {
	f := newFixture(t)
	f.devices.FindDevicesFn = func(context.Context, pylon.DeviceFilter) ([]*pylon.Device, string, error) {
		return nil, "", pylon.Errorf(pylon.EINVALID, "cursor: invalid")
	}
	checkError(t, f.serve("GET", "/api/v1/devices?cursor=zzz", "", f.as(pylon.RoleViewer)), 422, pylon.EINVALID)
}

func TestListDevices_EmptyIsArray(t *testing.T) {
	f := newFixture(t)
	f.devices.FindDevicesFn = func(context.Context, pylon.DeviceFilter) ([]*pylon.Device, string, error) { return nil, "", nil }
	w := f.serve("GET", "/api/v1/devices", "", f.as(pylon.RoleViewer))
	if got := strings.TrimSpace(w.Body.String()); got != `{"devices":[]}` {
		t.Errorf("got %s, want {\"devices\":[]}", got)
	}
}

func TestGetDevice(t *testing.T) {
	f := newFixture(t)
	var d pylon.Device
	decode(t, f.serve("GET", "/api/v1/devices/"+devID, "", f.as(pylon.RoleViewer)), 200, &d)
	if d.ID != devID {
		t.Errorf("got id %q, want %q", d.ID, devID)
	}

	f.devices.FindDeviceByIDFn = func(context.Context, string) (*pylon.Device, error) {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "device not found")
	}
	checkError(t, f.serve("GET", "/api/v1/devices/"+devID, "", f.as(pylon.RoleViewer)), 404, pylon.ENOTFOUND)
	// A malformed id never reaches the store.
	n := len(f.callList())
	checkError(t, f.serve("GET", "/api/v1/devices/NOT-AN-ID", "", f.as(pylon.RoleViewer)), 404, pylon.ENOTFOUND)
	if len(f.callList()) != n {
		t.Error("malformed id reached the store")
	}
}

func TestUpdateDevice(t *testing.T) {
	f := newFixture(t)
	var got pylon.DeviceUpdate
	f.devices.UpdateDeviceFn = func(ctx context.Context, id string, upd pylon.DeviceUpdate) (*pylon.Device, error) {
		got = upd
		return sampleDevice(id), nil
	}
	decode(t, f.serve("PATCH", "/api/v1/devices/"+devID, `{"labels":{"a":"b"},"metadata":{"x":1}}`, f.as(pylon.RoleOperator)), 200, &pylon.Device{})
	if got.Name != nil || got.Labels == nil || (*got.Labels)["a"] != "b" || got.Metadata == nil || string(*got.Metadata) != `{"x":1}` {
		t.Errorf("got update name=%v labels=%v metadata=%v", got.Name, got.Labels, got.Metadata)
	}

	tests := []struct {
		name, body string
		wantStatus int
		wantCode   string
	}{
		{"bad name", `{"name":" padded "}`, 422, pylon.EINVALID},
		{"bad labels", `{"labels":{"":"x"}}`, 422, pylon.EINVALID},
		{"bad metadata", `{"metadata":"str"}`, 422, pylon.EINVALID},
		{"unknown field", `{"state":"active"}`, 422, pylon.EINVALID},
		{"wrong type", `{"labels":[]}`, 422, pylon.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkError(t, f.serve("PATCH", "/api/v1/devices/"+devID, tt.body, f.as(pylon.RoleOperator)), tt.wantStatus, tt.wantCode)
		})
	}
}

func TestDeleteDevice_Disconnects(t *testing.T) {
	f := newFixture(t)
	w := f.serve("DELETE", "/api/v1/devices/"+devID, "", f.as(pylon.RoleOperator))
	if w.Code != 204 || w.Body.Len() != 0 {
		t.Errorf("got %d %q, want 204 with no body", w.Code, w.Body.String())
	}
	if got, want := f.disconnectList(), []string{devID + " deleted"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got disconnects %v, want %v", got, want)
	}
}

// suspendSample makes the fixture's device suspended.
func suspendSample(f *fixture) {
	f.devices.FindDeviceByIDFn = func(ctx context.Context, id string) (*pylon.Device, error) {
		f.record(ctx, "FindDeviceByID")
		d := sampleDevice(id)
		d.State = pylon.DeviceSuspended
		return d, nil
	}
}

func TestTransitions(t *testing.T) {
	tests := []struct {
		action          string
		wantState       pylon.DeviceState
		wantDisconnects []string
	}{
		{"suspend", pylon.DeviceSuspended, []string{devID + " suspended"}},
		{"resume", pylon.DeviceActive, nil},
		{"decommission", pylon.DeviceDecommissioned, []string{devID + " decommissioned"}},
	}
	for _, tt := range tests {
		t.Run(tt.action, func(t *testing.T) {
			f := newFixture(t)
			suspendSample(f)
			var gotState pylon.DeviceState
			f.devices.TransitionDeviceFn = func(ctx context.Context, id string, next pylon.DeviceState) (*pylon.Device, error) {
				gotState = next
				d := sampleDevice(id)
				d.State = next
				return d, nil
			}
			var d pylon.Device
			decode(t, f.serve("POST", "/api/v1/devices/"+devID+"/"+tt.action, "", f.as(pylon.RoleOperator)), 200, &d)
			if gotState != tt.wantState || d.State != tt.wantState {
				t.Errorf("got state %q (service %q), want %q", d.State, gotState, tt.wantState)
			}
			if got := f.disconnectList(); !reflect.DeepEqual(got, tt.wantDisconnects) {
				t.Errorf("got disconnects %v, want %v", got, tt.wantDisconnects)
			}
		})
	}
}

func TestResume_OnlySuspended(t *testing.T) {
	for _, st := range []pylon.DeviceState{pylon.DeviceRegistered, pylon.DeviceActive, pylon.DeviceDecommissioned} {
		t.Run(string(st), func(t *testing.T) {
			f := newFixture(t)
			f.devices.FindDeviceByIDFn = func(ctx context.Context, id string) (*pylon.Device, error) {
				d := sampleDevice(id)
				d.State = st
				return d, nil
			}
			e := checkError(t, f.serve("POST", "/api/v1/devices/"+devID+"/resume", "", f.as(pylon.RoleOperator)), 409, pylon.ECONFLICT)
			if want := "cannot go from " + string(st) + " to active: the device is not suspended"; e.Message != want {
				t.Errorf("got message %q, want %q", e.Message, want)
			}
			for _, c := range f.callList() {
				if c == "TransitionDevice" {
					t.Error("TransitionDevice called")
				}
			}
		})
	}
	f := newFixture(t)
	f.devices.FindDeviceByIDFn = func(context.Context, string) (*pylon.Device, error) {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "device not found")
	}
	checkError(t, f.serve("POST", "/api/v1/devices/"+devID+"/resume", "", f.as(pylon.RoleOperator)), 404, pylon.ENOTFOUND)
}

func TestTransition_ConflictDoesNotDisconnect(t *testing.T) {
	f := newFixture(t)
	f.devices.TransitionDeviceFn = func(context.Context, string, pylon.DeviceState) (*pylon.Device, error) {
		return nil, pylon.Errorf(pylon.ECONFLICT, "cannot go from decommissioned to suspended")
	}
	e := checkError(t, f.serve("POST", "/api/v1/devices/"+devID+"/suspend", "", f.as(pylon.RoleOperator)), 409, pylon.ECONFLICT)
	if e.Message != "cannot go from decommissioned to suspended" {
		t.Errorf("got message %q", e.Message)
	}
	if got := f.disconnectList(); len(got) != 0 {
		t.Errorf("got disconnects %v, want none", got)
	}
}

func TestSuspend_DisconnectFailureStillSucceeds(t *testing.T) {
	f := newFixture(t)
	f.sessions.DisconnectDeviceFn = func(context.Context, string, string) error { return errors.New("broker gone") }
	if w := f.serve("POST", "/api/v1/devices/"+devID+"/suspend", "", f.as(pylon.RoleOperator)); w.Code != 200 {
		t.Errorf("got %d, want 200", w.Code)
	}
	if !strings.Contains(f.logBuf.String(), "broker gone") {
		t.Error("disconnect failure not logged")
	}
}

func TestSuspend_NoSessionService(t *testing.T) {
	f := newFixture(t)
	f.srv.Sessions = nil
	if w := f.serve("POST", "/api/v1/devices/"+devID+"/suspend", "", f.as(pylon.RoleOperator)); w.Code != 200 {
		t.Errorf("got %d, want 200", w.Code)
	}
}

func TestDeviceConnections(t *testing.T) {
	tests := []struct {
		name, query string
		wantLimit   int
	}{
		{"default", "", httpapi.DefaultConnectionLimit},
		{"limit", "?limit=5", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var gotLimit int
			f.devices.FindConnectionsFn = func(ctx context.Context, id string, limit int) ([]*pylon.ConnectionEvent, error) {
				gotLimit = limit
				return []*pylon.ConnectionEvent{{DeviceID: id, Online: true, At: t0}}, nil
			}
			var list httpapi.ConnectionList
			decode(t, f.serve("GET", "/api/v1/devices/"+devID+"/connections"+tt.query, "", f.as(pylon.RoleViewer)), 200, &list)
			if gotLimit != tt.wantLimit || len(list.Connections) != 1 || !list.Connections[0].At.Equal(t0) {
				t.Errorf("got limit %d, %d connections; want %d, 1", gotLimit, len(list.Connections), tt.wantLimit)
			}
		})
	}
	f := newFixture(t)
	checkError(t, f.serve("GET", "/api/v1/devices/"+devID+"/connections?limit=x", "", f.as(pylon.RoleViewer)), 422, pylon.EINVALID)
	f.devices.FindDeviceByIDFn = func(context.Context, string) (*pylon.Device, error) {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "device not found")
	}
	checkError(t, f.serve("GET", "/api/v1/devices/"+devID+"/connections", "", f.as(pylon.RoleViewer)), 404, pylon.ENOTFOUND)
	checkError(t, f.serve("GET", "/api/v1/devices/"+devID+"/certificates", "", f.as(pylon.RoleViewer)), 404, pylon.ENOTFOUND)
}

func TestDeviceCertificates(t *testing.T) {
	f := newFixture(t)
	var got pylon.CertificateFilter
	f.certs.FindCertificatesFn = func(ctx context.Context, filter pylon.CertificateFilter) ([]*pylon.Certificate, error) {
		got = filter
		return []*pylon.Certificate{f.sampleCert(serial)}, nil
	}
	var list httpapi.CertificateList
	decode(t, f.serve("GET", "/api/v1/devices/"+devID+"/certificates", "", f.as(pylon.RoleViewer)), 200, &list)
	if got.DeviceID == nil || *got.DeviceID != devID {
		t.Errorf("got filter %+v, want device %s", got, devID)
	}
	if len(list.Certificates) != 1 || list.Certificates[0].Serial != serial {
		t.Errorf("got %+v, want the certificate", list.Certificates)
	}
}

func TestStats(t *testing.T) {
	f := newFixture(t)
	var st pylon.DeviceStats
	decode(t, f.serve("GET", "/api/v1/stats", "", f.as(pylon.RoleViewer)), 200, &st)
	if st.Total != 3 || st.Online != 1 || st.ByState[pylon.DeviceActive] != 3 {
		t.Errorf("got %+v", st)
	}
}

func TestDeviceJSONShape(t *testing.T) {
	f := newFixture(t)
	w := f.serve("GET", "/api/v1/devices/"+devID, "", f.as(pylon.RoleViewer))
	var m map[string]json.RawMessage
	decode(t, w, 200, &m)
	for _, k := range []string{"id", "name", "labels", "state", "online", "created_at", "updated_at"} {
		if _, ok := m[k]; !ok {
			t.Errorf("device JSON lacks %q: %s", k, w.Body.String())
		}
	}
}
