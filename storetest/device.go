package storetest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
)

// sameDevice fails t unless got and want agree on every field.
func sameDevice(t testing.TB, got, want *pylon.Device) {
	t.Helper()
	switch {
	case got.ID != want.ID:
		t.Fatalf("got ID %q, want %q", got.ID, want.ID)
	case got.Name != want.Name:
		t.Fatalf("got name %q, want %q", got.Name, want.Name)
	case got.State != want.State:
		t.Fatalf("got state %q, want %q", got.State, want.State)
	case got.Online != want.Online:
		t.Fatalf("got online %v, want %v", got.Online, want.Online)
	case !maps.Equal(got.Labels, want.Labels) || got.Labels == nil:
		t.Fatalf("got labels %v, want %v (never nil)", got.Labels, want.Labels)
	case string(got.Metadata) != string(want.Metadata):
		t.Fatalf("got metadata %s, want %s", got.Metadata, want.Metadata)
	case !got.CreatedAt.Equal(want.CreatedAt):
		t.Fatalf("got created_at %v, want %v", got.CreatedAt, want.CreatedAt)
	case !got.UpdatedAt.Equal(want.UpdatedAt):
		t.Fatalf("got updated_at %v, want %v", got.UpdatedAt, want.UpdatedAt)
	case (got.LastSeen == nil) != (want.LastSeen == nil) || got.LastSeen != nil && !got.LastSeen.Equal(*want.LastSeen):
		t.Fatalf("got last_seen %v, want %v", got.LastSeen, want.LastSeen)
	}
}

func testDeviceCRUD(t *testing.T, s Stores) {
	ctx := adminCtx()
	d := &pylon.Device{Name: "sensor-1", Labels: map[string]string{"site": "lab"}, Metadata: json.RawMessage(`{"fw":"1.0"}`)}
	if err := s.Devices.CreateDevice(ctx, d); err != nil {
		t.Fatalf("create: %v", err)
	}
	if !pylon.ValidID(d.ID) {
		t.Fatalf("got ID %q, want a pylon.NewID", d.ID)
	}
	if d.State != pylon.DeviceRegistered || d.Online || d.LastSeen != nil {
		t.Fatalf("got state %q online %v last_seen %v, want registered, offline, never seen", d.State, d.Online, d.LastSeen)
	}
	if !d.CreatedAt.Equal(T0) || !d.UpdatedAt.Equal(T0) {
		t.Fatalf("got created_at %v updated_at %v, want %v", d.CreatedAt, d.UpdatedAt, T0)
	}
	got, err := s.Devices.FindDeviceByID(ctx, d.ID)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	sameDevice(t, got, d)

	// No labels come back as an empty map.
	bare := createDevice(t, s, "bare", nil)
	if got, err := s.Devices.FindDeviceByID(ctx, bare.ID); err != nil {
		t.Fatalf("find: %v", err)
	} else if got.Labels == nil || len(got.Labels) != 0 || got.Metadata != nil {
		t.Fatalf("got labels %#v metadata %s, want empty non-nil map and no metadata", got.Labels, got.Metadata)
	}

	t1 := T0.Add(time.Hour + 7)
	s.SetNow(t1)
	name := "sensor-one"
	labels := map[string]string{"site": "field", "rack": "r2"}
	meta := json.RawMessage(`{"fw":"2.0"}`)
	upd, err := s.Devices.UpdateDevice(ctx, d.ID, pylon.DeviceUpdate{Name: &name, Labels: &labels, Metadata: &meta})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	want := *d
	want.Name, want.Labels, want.Metadata, want.UpdatedAt = name, labels, meta, t1
	sameDevice(t, upd, &want)
	got, err = s.Devices.FindDeviceByID(ctx, d.ID)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	sameDevice(t, got, &want)

	// The new labels filter, the old ones do not.
	if devs, _, err := s.Devices.FindDevices(ctx, pylon.DeviceFilter{Labels: map[string]string{"site": "field"}}); err != nil || len(devs) != 1 {
		t.Fatalf("got %d devices by new label (err %v), want 1", len(devs), err)
	}
	if devs, _, err := s.Devices.FindDevices(ctx, pylon.DeviceFilter{Labels: map[string]string{"site": "lab"}}); err != nil || len(devs) != 0 {
		t.Fatalf("got %d devices by old label (err %v), want 0", len(devs), err)
	}

	// Clearing metadata and labels.
	empty := json.RawMessage(nil)
	none := map[string]string(nil)
	upd, err = s.Devices.UpdateDevice(ctx, d.ID, pylon.DeviceUpdate{Labels: &none, Metadata: &empty})
	if err != nil {
		t.Fatalf("clear: %v", err)
	}
	if upd.Labels == nil || len(upd.Labels) != 0 || upd.Metadata != nil {
		t.Fatalf("got labels %v metadata %s, want none", upd.Labels, upd.Metadata)
	}

	if err := s.Devices.DeleteDevice(ctx, d.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err = s.Devices.FindDeviceByID(ctx, d.ID)
	wantCode(t, err, pylon.ENOTFOUND)
	wantCode(t, s.Devices.DeleteDevice(ctx, d.ID), pylon.ENOTFOUND)
	_, err = s.Devices.UpdateDevice(ctx, d.ID, pylon.DeviceUpdate{Name: &name})
	wantCode(t, err, pylon.ENOTFOUND)
	_, err = s.Devices.FindDeviceByID(ctx, "nosuchdevice2345")
	wantCode(t, err, pylon.ENOTFOUND)

	recs := wantAudit(t, s, "device:"+d.ID, adminPrincipal.Actor(),
		pylon.ActionDeviceCreate, pylon.ActionDeviceUpdate, pylon.ActionDeviceUpdate, pylon.ActionDeviceDelete)
	if !recs[1].Time.Equal(t1) {
		t.Fatalf("got audit time %v, want %v", recs[1].Time, t1)
	}
	if !strings.Contains(string(recs[1].Details), "labels") || !strings.Contains(string(recs[1].Details), "name") {
		t.Fatalf("got update details %s, want the changed fields", recs[1].Details)
	}
}

func testDeviceValidation(t *testing.T, s Stores) {
	tooMany := map[string]string{}
	for i := range pylon.MaxLabels + 1 {
		tooMany[fmt.Sprintf("k%d", i)] = "v"
	}
	tests := []struct {
		name string
		d    pylon.Device
	}{
		{"empty name", pylon.Device{}},
		{"long name", pylon.Device{Name: strings.Repeat("n", pylon.MaxDeviceNameLen+1)}},
		{"control character", pylon.Device{Name: "a\nb"}},
		{"leading space", pylon.Device{Name: " a"}},
		{"bad label key", pylon.Device{Name: "a", Labels: map[string]string{"-bad": "v"}}},
		{"too many labels", pylon.Device{Name: "a", Labels: tooMany}},
		{"metadata not an object", pylon.Device{Name: "a", Metadata: json.RawMessage(`[1]`)}},
		{"metadata too large", pylon.Device{Name: "a", Metadata: json.RawMessage(`{"x":"` + strings.Repeat("x", pylon.MaxMetadataBytes) + `"}`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.d
			wantCode(t, s.Devices.CreateDevice(adminCtx(), &d), pylon.EINVALID)
		})
	}

	d := createDevice(t, s, "valid", nil)
	badName := ""
	badLabels := map[string]string{"ok": "bad\x00value"}
	badMeta := json.RawMessage(`"string"`)
	for name, upd := range map[string]pylon.DeviceUpdate{
		"empty name": {Name: &badName},
		"bad label":  {Labels: &badLabels},
		"bad meta":   {Metadata: &badMeta},
	} {
		t.Run("update "+name, func(t *testing.T) {
			_, err := s.Devices.UpdateDevice(adminCtx(), d.ID, upd)
			wantCode(t, err, pylon.EINVALID)
		})
	}
	got, err := s.Devices.FindDeviceByID(adminCtx(), d.ID)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	sameDevice(t, got, d)
	wantAudit(t, s, "device:"+d.ID, adminPrincipal.Actor(), pylon.ActionDeviceCreate)
}

func testDeviceNameUnique(t *testing.T, s Stores) {
	a := createDevice(t, s, "alpha", nil)
	createDevice(t, s, "beta", nil)
	err := s.Devices.CreateDevice(adminCtx(), &pylon.Device{Name: "alpha"})
	wantError(t, err, pylon.ECONFLICT, "device name already exists")

	name := "beta"
	_, err = s.Devices.UpdateDevice(adminCtx(), a.ID, pylon.DeviceUpdate{Name: &name})
	wantError(t, err, pylon.ECONFLICT, "device name already exists")

	// Renaming to its own name is fine, and frees nothing.
	name = "alpha"
	if _, err := s.Devices.UpdateDevice(adminCtx(), a.ID, pylon.DeviceUpdate{Name: &name}); err != nil {
		t.Fatalf("rename to own name: %v", err)
	}
	// After a rename the old name is free.
	name = "gamma"
	if _, err := s.Devices.UpdateDevice(adminCtx(), a.ID, pylon.DeviceUpdate{Name: &name}); err != nil {
		t.Fatalf("rename: %v", err)
	}
	createDevice(t, s, "alpha", nil)
}

// names returns the names of devices.
func names(devices []*pylon.Device) []string {
	out := make([]string, len(devices))
	for i, d := range devices {
		out[i] = d.Name
	}
	return out
}

func testFindDevicesFilters(t *testing.T, s Stores) {
	ctx := adminCtx()
	lab1 := createDevice(t, s, "Lab-Sensor-1", map[string]string{"site": "lab", "kind": "sensor"})
	createDevice(t, s, "lab-sensor-2", map[string]string{"site": "lab", "kind": "sensor"})
	createDevice(t, s, "field_gateway", map[string]string{"site": "field", "kind": "gateway"})
	createDevice(t, s, "100%-pump", map[string]string{"site": "field"})
	createDevice(t, s, "fieldXgateway", nil)
	if _, err := s.Devices.TransitionDevice(ctx, lab1.ID, pylon.DeviceActive); err != nil {
		t.Fatalf("activate: %v", err)
	}
	if err := s.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: lab1.ID, Online: true, At: T0}); err != nil {
		t.Fatalf("record connection: %v", err)
	}

	str := func(s string) *string { return &s }
	state := func(s pylon.DeviceState) *pylon.DeviceState { return &s }
	boolp := func(b bool) *bool { return &b }
	tests := []struct {
		name   string
		filter pylon.DeviceFilter
		want   []string
	}{
		{"all", pylon.DeviceFilter{}, []string{"Lab-Sensor-1", "lab-sensor-2", "field_gateway", "100%-pump", "fieldXgateway"}},
		{"id", pylon.DeviceFilter{ID: &lab1.ID}, []string{"Lab-Sensor-1"}},
		{"unknown id", pylon.DeviceFilter{ID: str("nosuchdevice2345")}, []string{}},
		{"name", pylon.DeviceFilter{Name: str("lab-sensor-2")}, []string{"lab-sensor-2"}},
		{"name is exact", pylon.DeviceFilter{Name: str("lab-sensor")}, []string{}},
		{"state active", pylon.DeviceFilter{State: state(pylon.DeviceActive)}, []string{"Lab-Sensor-1"}},
		{"state registered", pylon.DeviceFilter{State: state(pylon.DeviceRegistered)}, []string{"lab-sensor-2", "field_gateway", "100%-pump", "fieldXgateway"}},
		{"online", pylon.DeviceFilter{Online: boolp(true)}, []string{"Lab-Sensor-1"}},
		{"offline", pylon.DeviceFilter{Online: boolp(false)}, []string{"lab-sensor-2", "field_gateway", "100%-pump", "fieldXgateway"}},
		{"one label", pylon.DeviceFilter{Labels: map[string]string{"site": "lab"}}, []string{"Lab-Sensor-1", "lab-sensor-2"}},
		{"two labels", pylon.DeviceFilter{Labels: map[string]string{"site": "field", "kind": "gateway"}}, []string{"field_gateway"}},
		{"labels all must match", pylon.DeviceFilter{Labels: map[string]string{"site": "lab", "kind": "gateway"}}, []string{}},
		{"query case-insensitive", pylon.DeviceFilter{Query: "SENSOR"}, []string{"Lab-Sensor-1", "lab-sensor-2"}},
		{"query underscore literal", pylon.DeviceFilter{Query: "d_g"}, []string{"field_gateway"}},
		{"query percent literal", pylon.DeviceFilter{Query: "0%"}, []string{"100%-pump"}},
		{"query backslash", pylon.DeviceFilter{Query: `\`}, []string{}},
		{"query and label", pylon.DeviceFilter{Query: "gateway", Labels: map[string]string{"site": "field"}}, []string{"field_gateway"}},
		{"state and online", pylon.DeviceFilter{State: state(pylon.DeviceActive), Online: boolp(false)}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devs, next, err := s.Devices.FindDevices(ctx, tt.filter)
			if err != nil {
				t.Fatalf("find: %v", err)
			}
			if got := names(devs); !slices.Equal(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			if next != "" {
				t.Fatalf("got next cursor %q, want none", next)
			}
		})
	}

	_, _, err := s.Devices.FindDevices(ctx, pylon.DeviceFilter{State: state("bogus")})
	wantCode(t, err, pylon.EINVALID)
}

func testFindDevicesPagination(t *testing.T, s Stores) {
	const n = 250
	var want, wantEven []string
	for i := range n {
		name := fmt.Sprintf("dev-%03d", (i*7919)%1000) // creation order is not name order
		var labels map[string]string
		if i%2 == 0 {
			labels = map[string]string{"parity": "even"}
			wantEven = append(wantEven, name)
		}
		createDevice(t, s, name, labels)
		want = append(want, name)
	}
	pages := func(filter pylon.DeviceFilter) (all []string, sizes []int) {
		t.Helper()
		for range 10 {
			devs, next, err := s.Devices.FindDevices(adminCtx(), filter)
			if err != nil {
				t.Fatalf("find: %v", err)
			}
			all, sizes = append(all, names(devs)...), append(sizes, len(devs))
			if next == "" {
				return all, sizes
			}
			filter.Cursor = next
		}
		t.Fatalf("more than 10 pages")
		return nil, nil
	}
	tests := []struct {
		name      string
		filter    pylon.DeviceFilter
		want      []string
		wantSizes []int
	}{
		{"limit 100", pylon.DeviceFilter{Limit: 100}, want, []int{100, 100, 50}},
		{"default limit", pylon.DeviceFilter{}, want, []int{pylon.DefaultDeviceLimit, pylon.DefaultDeviceLimit, 50}},
		{"limit 125 exact", pylon.DeviceFilter{Limit: 125}, want, []int{125, 125}},
		{"over max", pylon.DeviceFilter{Limit: pylon.MaxDeviceLimit + 1}, want, []int{250}},
		{"filtered", pylon.DeviceFilter{Limit: 50, Labels: map[string]string{"parity": "even"}}, wantEven, []int{50, 50, 25}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, sizes := pages(tt.filter)
			if !slices.Equal(sizes, tt.wantSizes) {
				t.Fatalf("got page sizes %v, want %v", sizes, tt.wantSizes)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %d devices (creation order, no duplicates, no misses violated): %q, want %q", len(got), got, tt.want)
			}
		})
	}

	// A cursor stays valid when devices are added or deleted around it.
	devs, next, err := s.Devices.FindDevices(adminCtx(), pylon.DeviceFilter{Limit: 100})
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if err := s.Devices.DeleteDevice(adminCtx(), devs[99].ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	createDevice(t, s, "late", nil)
	rest, _ := pages(pylon.DeviceFilter{Limit: 1000, Cursor: next})
	if wantRest := append(slices.Clone(want[100:]), "late"); !slices.Equal(rest, wantRest) {
		t.Fatalf("after the cursor got %q, want %q", rest, wantRest)
	}
}

func testFindDevicesBadCursor(t *testing.T, s Stores) {
	createDevice(t, s, "one", nil)
	for name, cursor := range map[string]string{
		"garbage":        "!!not base64!!",
		"padding only":   "=",
		"short":          base64.RawURLEncoding.EncodeToString([]byte{1}),
		"json":           base64.RawURLEncoding.EncodeToString([]byte(`{"seq":1}`)),
		"very long":      strings.Repeat("A", 10000),
		"sql":            "' OR 1=1 --",
		"almost numeric": "1234",
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := s.Devices.FindDevices(context.Background(), pylon.DeviceFilter{Cursor: cursor})
			wantCode(t, err, pylon.EINVALID)
		})
	}
}

// stateSetup brings a new device to state by allowed transitions.
func stateSetup(t testing.TB, s Stores, name string, state pylon.DeviceState) *pylon.Device {
	t.Helper()
	d := createDevice(t, s, name, nil)
	var path []pylon.DeviceState
	switch state {
	case pylon.DeviceActive:
		path = []pylon.DeviceState{pylon.DeviceActive}
	case pylon.DeviceSuspended:
		path = []pylon.DeviceState{pylon.DeviceActive, pylon.DeviceSuspended}
	case pylon.DeviceDecommissioned:
		path = []pylon.DeviceState{pylon.DeviceDecommissioned}
	}
	for _, st := range path {
		var err error
		if d, err = s.Devices.TransitionDevice(adminCtx(), d.ID, st); err != nil {
			t.Fatalf("transition to %s: %v", st, err)
		}
	}
	return d
}

func testTransitions(t *testing.T, s Stores) {
	states := []pylon.DeviceState{pylon.DeviceRegistered, pylon.DeviceActive, pylon.DeviceSuspended, pylon.DeviceDecommissioned}
	// The allowed moves and their audit actions; every other pair is refused.
	allowed := map[[2]pylon.DeviceState]string{
		{pylon.DeviceRegistered, pylon.DeviceActive}:         pylon.ActionDeviceActivate,
		{pylon.DeviceRegistered, pylon.DeviceDecommissioned}: pylon.ActionDeviceDecommission,
		{pylon.DeviceActive, pylon.DeviceSuspended}:          pylon.ActionDeviceSuspend,
		{pylon.DeviceActive, pylon.DeviceDecommissioned}:     pylon.ActionDeviceDecommission,
		{pylon.DeviceSuspended, pylon.DeviceActive}:          pylon.ActionDeviceResume,
		{pylon.DeviceSuspended, pylon.DeviceDecommissioned}:  pylon.ActionDeviceDecommission,
	}
	ctx := pylon.NewContextWithPrincipal(context.Background(), operatorPrincipal)
	for _, from := range states {
		for _, to := range states {
			t.Run(string(from)+"_to_"+string(to), func(t *testing.T) {
				d := stateSetup(t, s, string(from)+"-"+string(to), from)
				before := len(auditFor(t, s, "device:"+d.ID))
				s.SetNow(T0.Add(time.Minute))
				defer s.SetNow(T0)
				got, err := s.Devices.TransitionDevice(ctx, d.ID, to)
				action, ok := allowed[[2]pylon.DeviceState{from, to}]
				if !ok {
					wantError(t, err, pylon.ECONFLICT, fmt.Sprintf("cannot go from %s to %s", from, to))
					if cur, err := s.Devices.FindDeviceByID(ctx, d.ID); err != nil || cur.State != from {
						t.Fatalf("after refusal got state %v (err %v), want %s", cur.State, err, from)
					}
					if n := len(auditFor(t, s, "device:"+d.ID)); n != before {
						t.Fatalf("refused transition wrote %d audit records, want 0", n-before)
					}
					return
				}
				if err != nil {
					t.Fatalf("transition: %v", err)
				}
				if got.State != to || !got.UpdatedAt.Equal(T0.Add(time.Minute)) {
					t.Fatalf("got state %s updated_at %v, want %s at %v", got.State, got.UpdatedAt, to, T0.Add(time.Minute))
				}
				if cur, err := s.Devices.FindDeviceByID(ctx, d.ID); err != nil || cur.State != to {
					t.Fatalf("stored state %v (err %v), want %s", cur.State, err, to)
				}
				recs := auditFor(t, s, "device:"+d.ID)
				last := recs[len(recs)-1]
				if len(recs) != before+1 || last.Action != action || last.Actor != operatorPrincipal.Actor() {
					t.Fatalf("got %d new records, last %s by %s, want 1 %s by %s", len(recs)-before, last.Action, last.Actor, action, operatorPrincipal.Actor())
				}
			})
		}
	}

	d := createDevice(t, s, "bogus-target", nil)
	_, err := s.Devices.TransitionDevice(ctx, d.ID, "bogus")
	wantCode(t, err, pylon.EINVALID)
	_, err = s.Devices.TransitionDevice(ctx, "nosuchdevice2345", pylon.DeviceActive)
	wantCode(t, err, pylon.ENOTFOUND)
}

func testDecommissionRevokes(t *testing.T, s Stores) {
	is := newIssuer(T0)
	d, c1 := enrolledDevice(t, s, "doomed", is)
	_, c2, err := s.Enroll.Reenroll(adminCtx(), c1.Serial, is.Issue)
	if err != nil {
		t.Fatalf("reenroll: %v", err)
	}
	_, other := enrolledDevice(t, s, "survivor", is)

	s.SetNow(T0.Add(time.Hour))
	if _, err := s.Devices.TransitionDevice(adminCtx(), d.ID, pylon.DeviceDecommissioned); err != nil {
		t.Fatalf("decommission: %v", err)
	}
	for serial, first := range map[string]string{c1.Serial: pylon.ActionCertIssue, c2.Serial: pylon.ActionCertRenew} {
		c, err := s.Certs.FindCertificateBySerial(adminCtx(), serial)
		if err != nil {
			t.Fatalf("find certificate: %v", err)
		}
		if c.Status != pylon.CertRevoked || c.Reason != "decommissioned" || c.RevokedAt == nil || !c.RevokedAt.Equal(T0.Add(time.Hour)) {
			t.Fatalf("got status %s reason %q revoked_at %v, want revoked, decommissioned, at %v", c.Status, c.Reason, c.RevokedAt, T0.Add(time.Hour))
		}
		recs := wantAudit(t, s, "certificate:"+serial, adminPrincipal.Actor(), first, pylon.ActionCertRevoke)
		if !strings.Contains(string(recs[1].Details), "decommissioned") {
			t.Fatalf("got revoke details %s, want the reason", recs[1].Details)
		}
	}
	if c, err := s.Certs.FindCertificateBySerial(adminCtx(), other.Serial); err != nil || c.Status != pylon.CertValid {
		t.Fatalf("other device's certificate: got %v (err %v), want valid", c.Status, err)
	}
	revoked, err := s.Certs.FindRevokedCertificates(adminCtx(), T0.Add(time.Hour))
	if err != nil {
		t.Fatalf("find revoked: %v", err)
	}
	if got := serials(revoked); !sameSet(got, []string{c1.Serial, c2.Serial}) {
		t.Fatalf("got revoked %v, want %v", got, []string{c1.Serial, c2.Serial})
	}
	_, err = s.Certs.AuthorizeConnection(adminCtx(), d.ID, c2.Serial, T0.Add(time.Hour))
	wantCode(t, err, pylon.EUNAUTHORIZED)
}

func testDeleteDeviceRevokesCertificates(t *testing.T, s Stores) {
	is := newIssuer(T0)
	d, c := enrolledDevice(t, s, "short-lived", is)
	tokID, _ := createEnrollToken(t, s, &pylon.EnrollmentToken{DeviceID: d.ID, Uses: 1})
	if err := s.Devices.RecordConnection(adminCtx(), pylon.ConnectionEvent{DeviceID: d.ID, Online: true, At: T0}); err != nil {
		t.Fatalf("record connection: %v", err)
	}
	if err := s.Devices.DeleteDevice(adminCtx(), d.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err := s.EnrollTokens.FindEnrollmentTokenByID(adminCtx(), tokID)
	wantCode(t, err, pylon.ENOTFOUND)
	_, err = s.Devices.FindConnections(adminCtx(), d.ID, 10)
	wantCode(t, err, pylon.ENOTFOUND)

	// The certificate outlives the device, revoked: it stays on the CRL
	// until it expires, so that an external broker refuses it too.
	got, err := s.Certs.FindCertificateBySerial(adminCtx(), c.Serial)
	if err != nil {
		t.Fatalf("find the deleted device's certificate: %v", err)
	}
	if got.Status != pylon.CertRevoked || got.Reason != "device deleted" || got.RevokedAt == nil || got.DeviceID != d.ID {
		t.Fatalf("got certificate %s, reason %q, revoked at %v, device %s; want revoked for the deleted device %s", got.Status, got.Reason, got.RevokedAt, got.DeviceID, d.ID)
	}
	revoked, err := s.Certs.FindRevokedCertificates(adminCtx(), T0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(serials(revoked), c.Serial) {
		t.Fatalf("the deleted device's certificate %s is not among the revoked %v", c.Serial, serials(revoked))
	}
	_, err = s.Certs.AuthorizeConnection(adminCtx(), d.ID, c.Serial, T0)
	wantCode(t, err, pylon.EUNAUTHORIZED)
	if rs := auditFor(t, s, "certificate:"+c.Serial); rs[len(rs)-1].Action != pylon.ActionCertRevoke {
		t.Fatalf("got last certificate action %s, want %s", rs[len(rs)-1].Action, pylon.ActionCertRevoke)
	}

	// The audit log keeps the device's history.
	recs := auditFor(t, s, "device:"+d.ID)
	if last := recs[len(recs)-1]; last.Action != pylon.ActionDeviceDelete {
		t.Fatalf("got last action %s, want %s", last.Action, pylon.ActionDeviceDelete)
	}
	// A new device may take the name.
	createDevice(t, s, "short-lived", nil)
}

func testConnections(t *testing.T, s Stores) {
	ctx := context.Background()
	d := createDevice(t, s, "chatty", nil)
	auditBefore := len(allAudit(t, s))

	at1 := T0.Add(time.Second + 1)
	if err := s.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: d.ID, Online: true, At: at1, RemoteAddr: "192.0.2.1:50000"}); err != nil {
		t.Fatalf("record: %v", err)
	}
	got, err := s.Devices.FindDeviceByID(ctx, d.ID)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if !got.Online || got.LastSeen == nil || !got.LastSeen.Equal(at1) {
		t.Fatalf("got online %v last_seen %v, want online at %v", got.Online, got.LastSeen, at1)
	}
	if !got.UpdatedAt.Equal(d.UpdatedAt) {
		t.Fatalf("got updated_at %v, want unchanged %v", got.UpdatedAt, d.UpdatedAt)
	}

	at2 := at1.Add(time.Minute)
	if err := s.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: d.ID, Online: false, At: at2, RemoteAddr: "192.0.2.1:50000", Reason: "keepalive timeout"}); err != nil {
		t.Fatalf("record: %v", err)
	}
	got, err = s.Devices.FindDeviceByID(ctx, d.ID)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if got.Online || got.LastSeen == nil || !got.LastSeen.Equal(at2) {
		t.Fatalf("got online %v last_seen %v, want offline at %v", got.Online, got.LastSeen, at2)
	}

	events, err := s.Devices.FindConnections(ctx, d.ID, 10)
	if err != nil {
		t.Fatalf("find connections: %v", err)
	}
	want := []pylon.ConnectionEvent{
		{DeviceID: d.ID, Online: false, At: at2, RemoteAddr: "192.0.2.1:50000", Reason: "keepalive timeout"},
		{DeviceID: d.ID, Online: true, At: at1, RemoteAddr: "192.0.2.1:50000"},
	}
	if len(events) != len(want) {
		t.Fatalf("got %d events, want %d", len(events), len(want))
	}
	for i, ev := range events {
		w := want[i]
		if ev.DeviceID != w.DeviceID || ev.Online != w.Online || !ev.At.Equal(w.At) || ev.RemoteAddr != w.RemoteAddr || ev.Reason != w.Reason {
			t.Fatalf("event %d: got %+v, want %+v", i, *ev, w)
		}
	}
	if events, err := s.Devices.FindConnections(ctx, d.ID, 1); err != nil || len(events) != 1 || events[0].Online {
		t.Fatalf("with limit 1 got %d events (err %v), want the newest only", len(events), err)
	}

	err = s.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: "nosuchdevice2345", Online: true, At: at1})
	wantCode(t, err, pylon.ENOTFOUND)
	_, err = s.Devices.FindConnections(ctx, "nosuchdevice2345", 10)
	wantCode(t, err, pylon.ENOTFOUND)

	if n := len(allAudit(t, s)); n != auditBefore {
		t.Fatalf("connection events wrote %d audit records, want 0", n-auditBefore)
	}
}

func testConnectionPruning(t *testing.T, s Stores) {
	ctx := context.Background()
	d := createDevice(t, s, "flappy", nil)
	other := createDevice(t, s, "steady", nil)
	if err := s.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: other.ID, Online: true, At: T0}); err != nil {
		t.Fatalf("record: %v", err)
	}
	const n = 105
	for i := range n {
		ev := pylon.ConnectionEvent{DeviceID: d.ID, Online: i%2 == 0, At: T0.Add(time.Duration(i) * time.Second), RemoteAddr: fmt.Sprintf("192.0.2.1:%d", 1000+i)}
		if err := s.Devices.RecordConnection(ctx, ev); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	events, err := s.Devices.FindConnections(ctx, d.ID, 1000)
	if err != nil {
		t.Fatalf("find connections: %v", err)
	}
	if len(events) != 100 {
		t.Fatalf("got %d events, want the newest 100", len(events))
	}
	for i, ev := range events {
		if want := T0.Add(time.Duration(n-1-i) * time.Second); !ev.At.Equal(want) {
			t.Fatalf("event %d: got at %v, want %v (newest first)", i, ev.At, want)
		}
	}
	if events, err := s.Devices.FindConnections(ctx, other.ID, 0); err != nil || len(events) != 1 {
		t.Fatalf("other device: got %d events (err %v), want 1 (pruning is per device)", len(events), err)
	}
}

func testResetConnections(t *testing.T, s Stores) {
	ctx := context.Background()
	var online []*pylon.Device
	for i := range 3 {
		d := createDevice(t, s, fmt.Sprintf("on-%d", i), nil)
		if err := s.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: d.ID, Online: true, At: T0}); err != nil {
			t.Fatalf("record: %v", err)
		}
		online = append(online, d)
	}
	off := createDevice(t, s, "off", nil)

	restart := T0.Add(time.Hour)
	n, err := s.Devices.ResetConnections(ctx, restart)
	if err != nil {
		t.Fatalf("reset: %v", err)
	}
	if n != 3 {
		t.Fatalf("got %d reset, want 3", n)
	}
	for _, d := range online {
		got, err := s.Devices.FindDeviceByID(ctx, d.ID)
		if err != nil {
			t.Fatalf("find: %v", err)
		}
		if got.Online {
			t.Fatalf("device %s still online after reset", d.Name)
		}
		events, err := s.Devices.FindConnections(ctx, d.ID, 1)
		if err != nil || len(events) != 1 {
			t.Fatalf("got %d events (err %v), want 1", len(events), err)
		}
		if ev := events[0]; ev.Online || !ev.At.Equal(restart) || ev.Reason != "broker restart" {
			t.Fatalf("got event %+v, want offline at %v, reason broker restart", *ev, restart)
		}
	}
	if events, err := s.Devices.FindConnections(ctx, off.ID, 10); err != nil || len(events) != 0 {
		t.Fatalf("offline device got %d events (err %v), want 0", len(events), err)
	}
	if n, err := s.Devices.ResetConnections(ctx, restart); err != nil || n != 0 {
		t.Fatalf("second reset: got %d (err %v), want 0", n, err)
	}
}

func testDeviceStats(t *testing.T, s Stores) {
	ctx := context.Background()
	st, err := s.Devices.DeviceStats(ctx)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if st.Total != 0 || st.Online != 0 {
		t.Fatalf("empty store: got %+v, want zero", st)
	}
	stateSetup(t, s, "r1", pylon.DeviceRegistered)
	stateSetup(t, s, "r2", pylon.DeviceRegistered)
	a := stateSetup(t, s, "a1", pylon.DeviceActive)
	stateSetup(t, s, "s1", pylon.DeviceSuspended)
	stateSetup(t, s, "d1", pylon.DeviceDecommissioned)
	if err := s.Devices.RecordConnection(ctx, pylon.ConnectionEvent{DeviceID: a.ID, Online: true, At: T0}); err != nil {
		t.Fatalf("record: %v", err)
	}
	st, err = s.Devices.DeviceStats(ctx)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	want := map[pylon.DeviceState]int{pylon.DeviceRegistered: 2, pylon.DeviceActive: 1, pylon.DeviceSuspended: 1, pylon.DeviceDecommissioned: 1}
	if st.Total != 5 || st.Online != 1 {
		t.Fatalf("got total %d online %d, want 5 and 1", st.Total, st.Online)
	}
	for state, n := range want {
		if st.ByState[state] != n {
			t.Fatalf("got %d %s, want %d", st.ByState[state], state, n)
		}
	}
}
