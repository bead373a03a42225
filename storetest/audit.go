package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
)

func testAuditEmpty(t *testing.T, s Stores) {
	v, err := s.Audit.VerifyAudit(context.Background())
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !v.OK || v.Records != 0 {
		t.Fatalf("got %+v, want OK with 0 records", v)
	}
	recs, err := s.Audit.FindAuditRecords(context.Background(), pylon.AuditFilter{})
	if err != nil || len(recs) != 0 {
		t.Fatalf("got %d records (err %v), want none", len(recs), err)
	}
}

func testAuditActors(t *testing.T, s Stores) {
	admin := adminCtx()
	operator := pylon.NewContextWithPrincipal(context.Background(), operatorPrincipal)
	system := context.Background()

	d := createDevice(t, s, "audited", nil) // admin
	name := "audited-2"
	if _, err := s.Devices.UpdateDevice(operator, d.ID, pylon.DeviceUpdate{Name: &name}); err != nil {
		t.Fatalf("update: %v", err)
	}
	if _, err := s.Devices.TransitionDevice(system, d.ID, pylon.DeviceActive); err != nil {
		t.Fatalf("activate: %v", err)
	}
	if _, err := s.Devices.TransitionDevice(operator, d.ID, pylon.DeviceSuspended); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	if _, err := s.Devices.TransitionDevice(admin, d.ID, pylon.DeviceActive); err != nil {
		t.Fatalf("resume: %v", err)
	}
	_, tokID, tokHash := pylon.NewSecret(pylon.APITokenPrefix)
	if err := s.APITokens.CreateAPIToken(operator, &pylon.APIToken{ID: tokID, Name: "x", Role: pylon.RoleViewer}, tokHash); err != nil {
		t.Fatalf("create api token: %v", err)
	}
	if err := s.APITokens.RevokeAPIToken(admin, tokID); err != nil {
		t.Fatalf("revoke api token: %v", err)
	}
	_, etID, etHash := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	if err := s.EnrollTokens.CreateEnrollmentToken(operator, &pylon.EnrollmentToken{ID: etID, Uses: 2, ExpiresAt: T0.Add(time.Hour)}, etHash); err != nil {
		t.Fatalf("create enrollment token: %v", err)
	}
	if err := s.EnrollTokens.RevokeEnrollmentToken(system, etID); err != nil {
		t.Fatalf("revoke enrollment token: %v", err)
	}
	if err := s.Devices.DeleteDevice(operator, d.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}

	type entry struct{ actor, action, object string }
	want := []entry{
		{adminPrincipal.Actor(), pylon.ActionDeviceCreate, "device:" + d.ID},
		{operatorPrincipal.Actor(), pylon.ActionDeviceUpdate, "device:" + d.ID},
		{"system", pylon.ActionDeviceActivate, "device:" + d.ID},
		{operatorPrincipal.Actor(), pylon.ActionDeviceSuspend, "device:" + d.ID},
		{adminPrincipal.Actor(), pylon.ActionDeviceResume, "device:" + d.ID},
		{operatorPrincipal.Actor(), pylon.ActionAPITokenCreate, "api_token:" + tokID},
		{adminPrincipal.Actor(), pylon.ActionAPITokenRevoke, "api_token:" + tokID},
		{operatorPrincipal.Actor(), pylon.ActionEnrollTokenCreate, "enrollment_token:" + etID},
		{"system", pylon.ActionEnrollTokenRevoke, "enrollment_token:" + etID},
		{operatorPrincipal.Actor(), pylon.ActionDeviceDelete, "device:" + d.ID},
	}
	recs := allAudit(t, s)
	var got []entry
	for _, r := range recs {
		got = append(got, entry{r.Actor, r.Action, r.Object})
		if len(r.Details) > 0 && !json.Valid(r.Details) {
			t.Fatalf("record %d: details %q are not JSON", r.Seq, r.Details)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got records\n%v\nwant\n%v", got, want)
	}
	wantNoSecret(t, s, tokHash, etHash)
}

func testAuditChain(t *testing.T, s Stores) {
	is := newIssuer(T0)
	for i := range 5 {
		s.SetNow(T0.Add(time.Duration(i) * time.Second))
		enrolledDevice(t, s, fmt.Sprintf("chain-%d", i), is)
	}
	recs := allAudit(t, s)
	if len(recs) < 20 {
		t.Fatalf("got %d records, want at least 20", len(recs))
	}
	prev := ""
	for i, r := range recs {
		if r.Seq != int64(i+1) {
			t.Fatalf("record %d: got seq %d, want %d", i, r.Seq, i+1)
		}
		if r.PrevHash != prev {
			t.Fatalf("record %d: got prev_hash %q, want %q", r.Seq, r.PrevHash, prev)
		}
		if h := r.ComputeHash(); r.Hash != h {
			t.Fatalf("record %d: got hash %q, want %q", r.Seq, r.Hash, h)
		}
		prev = r.Hash
	}
	if last := recs[len(recs)-1]; !last.Time.Equal(T0.Add(4 * time.Second)) {
		t.Fatalf("got last time %v, want %v", last.Time, T0.Add(4*time.Second))
	}
	v, err := s.Audit.VerifyAudit(context.Background())
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !v.OK || v.Records != int64(len(recs)) || v.BadSeq != 0 || v.Problem != "" {
		t.Fatalf("got %+v, want OK with %d records", v, len(recs))
	}
}

func testAuditFilters(t *testing.T, s Stores) {
	operator := pylon.NewContextWithPrincipal(context.Background(), operatorPrincipal)
	var devs []*pylon.Device
	for i := range 3 {
		s.SetNow(T0.Add(time.Duration(i) * time.Hour))
		devs = append(devs, createDevice(t, s, fmt.Sprintf("f-%d", i), nil)) // seq 1..3, admin
	}
	s.SetNow(T0.Add(3 * time.Hour))
	if _, err := s.Devices.TransitionDevice(operator, devs[0].ID, pylon.DeviceActive); err != nil { // seq 4
		t.Fatalf("activate: %v", err)
	}
	_, tokID, tokHash := pylon.NewSecret(pylon.APITokenPrefix)
	if err := s.APITokens.CreateAPIToken(operator, &pylon.APIToken{ID: tokID, Name: "f", Role: pylon.RoleViewer}, tokHash); err != nil { // seq 5
		t.Fatalf("create api token: %v", err)
	}
	// An object that shares a prefix with "device:" without the colon.
	if err := s.Audit.AppendAudit(operator, &pylon.AuditRecord{Action: pylon.ActionAuthFailed, Object: "devicex"}); err != nil { // seq 6
		t.Fatalf("append: %v", err)
	}

	since, until := T0.Add(time.Hour), T0.Add(3*time.Hour)
	tests := []struct {
		name   string
		filter pylon.AuditFilter
		want   []int64
	}{
		{"all", pylon.AuditFilter{}, []int64{1, 2, 3, 4, 5, 6}},
		{"desc", pylon.AuditFilter{Desc: true}, []int64{6, 5, 4, 3, 2, 1}},
		{"limit", pylon.AuditFilter{Limit: 2}, []int64{1, 2}},
		{"limit desc", pylon.AuditFilter{Limit: 2, Desc: true}, []int64{6, 5}},
		{"after", pylon.AuditFilter{After: 4}, []int64{5, 6}},
		{"after and limit", pylon.AuditFilter{After: 1, Limit: 2}, []int64{2, 3}},
		{"actor", pylon.AuditFilter{Actor: operatorPrincipal.Actor()}, []int64{4, 5, 6}},
		{"action", pylon.AuditFilter{Action: pylon.ActionDeviceCreate}, []int64{1, 2, 3}},
		{"object exact", pylon.AuditFilter{Object: "device:" + devs[0].ID}, []int64{1, 4}},
		{"object prefix", pylon.AuditFilter{Object: "device:"}, []int64{1, 2, 3, 4}},
		{"other prefix", pylon.AuditFilter{Object: "api_token:"}, []int64{5}},
		{"no such object", pylon.AuditFilter{Object: "device:nosuchdevice2345"}, []int64{}},
		{"object is not a prefix without colon", pylon.AuditFilter{Object: "device"}, []int64{}},
		{"since", pylon.AuditFilter{Since: &since}, []int64{2, 3, 4, 5, 6}},
		{"until", pylon.AuditFilter{Until: &until}, []int64{1, 2, 3}},
		{"since and until", pylon.AuditFilter{Since: &since, Until: &until}, []int64{2, 3}},
		{"combined", pylon.AuditFilter{Actor: adminPrincipal.Actor(), Object: "device:", After: 1, Desc: true}, []int64{3, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs, err := s.Audit.FindAuditRecords(context.Background(), tt.filter)
			if err != nil {
				t.Fatalf("find: %v", err)
			}
			got := make([]int64, len(recs))
			for i, r := range recs {
				got[i] = r.Seq
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got seqs %v, want %v", got, tt.want)
			}
		})
	}
}

func testAppendAudit(t *testing.T, s Stores) {
	ctx := pylon.NewContextWithPrincipal(context.Background(), devicePrincipal)
	createDevice(t, s, "first", nil)

	s.SetNow(T0.Add(time.Minute))
	r := &pylon.AuditRecord{Action: pylon.ActionMQTTRefused, Object: "device:" + devicePrincipal.ID, Details: json.RawMessage(`{"reason":"certificate revoked"}`)}
	if err := s.Audit.AppendAudit(ctx, r); err != nil {
		t.Fatalf("append: %v", err)
	}
	if r.Seq != 2 || r.Actor != devicePrincipal.Actor() || !r.Time.Equal(T0.Add(time.Minute)) || r.PrevHash == "" || r.Hash != r.ComputeHash() {
		t.Fatalf("got %+v, want seq 2 by %s at %v, chained", *r, devicePrincipal.Actor(), T0.Add(time.Minute))
	}

	at := T0.Add(-time.Hour + 42)
	r2 := &pylon.AuditRecord{Time: at, Actor: "user:someone", Action: pylon.ActionAuthFailed, Object: "user:someone"}
	if err := s.Audit.AppendAudit(ctx, r2); err != nil {
		t.Fatalf("append: %v", err)
	}
	if r2.Seq != 3 || r2.Actor != "user:someone" || !r2.Time.Equal(at) || r2.PrevHash != r.Hash {
		t.Fatalf("got %+v, want seq 3 by user:someone at %v after record 2", *r2, at)
	}
	recs, err := s.Audit.FindAuditRecords(ctx, pylon.AuditFilter{After: 1})
	if err != nil || len(recs) != 2 {
		t.Fatalf("got %d records (err %v), want 2", len(recs), err)
	}
	for i, want := range []*pylon.AuditRecord{r, r2} {
		got := recs[i]
		if got.Seq != want.Seq || got.Actor != want.Actor || got.Action != want.Action || got.Object != want.Object ||
			!got.Time.Equal(want.Time) || string(got.Details) != string(want.Details) || got.PrevHash != want.PrevHash || got.Hash != want.Hash {
			t.Fatalf("stored %+v, want %+v", *got, *want)
		}
	}

	tests := []struct {
		name string
		r    pylon.AuditRecord
	}{
		{"no action", pylon.AuditRecord{Object: "x"}},
		{"details not JSON", pylon.AuditRecord{Action: pylon.ActionAuthFailed, Details: json.RawMessage(`{`)}},
		{"details not an object", pylon.AuditRecord{Action: pylon.ActionAuthFailed, Details: json.RawMessage(`"s"`)}},
		{"huge details", pylon.AuditRecord{Action: pylon.ActionAuthFailed, Details: json.RawMessage(`{"x":"` + strings.Repeat("x", 1<<20) + `"}`)}},
		{"huge object", pylon.AuditRecord{Action: pylon.ActionAuthFailed, Object: strings.Repeat("o", 1<<20)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.r
			wantCode(t, s.Audit.AppendAudit(ctx, &r), pylon.EINVALID)
		})
	}
	v, err := s.Audit.VerifyAudit(ctx)
	if err != nil || !v.OK || v.Records != 3 {
		t.Fatalf("got %+v (err %v), want OK with 3 records", v, err)
	}
}
