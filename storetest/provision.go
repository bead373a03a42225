package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
)

// serials returns the serials of certs.
func serials(certs []*pylon.Certificate) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = c.Serial
	}
	return out
}

// sameSet reports whether a and b hold the same strings.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// sameCert fails t unless got matches want.
func sameCert(t testing.TB, got, want *pylon.Certificate) {
	t.Helper()
	switch {
	case got.Serial != want.Serial || got.DeviceID != want.DeviceID:
		t.Fatalf("got certificate %s of %s, want %s of %s", got.Serial, got.DeviceID, want.Serial, want.DeviceID)
	case !got.NotBefore.Equal(want.NotBefore) || !got.NotAfter.Equal(want.NotAfter):
		t.Fatalf("got validity %v..%v, want %v..%v", got.NotBefore, got.NotAfter, want.NotBefore, want.NotAfter)
	case got.Status != want.Status || got.Reason != want.Reason:
		t.Fatalf("got status %s (%q), want %s (%q)", got.Status, got.Reason, want.Status, want.Reason)
	case got.KeyType != want.KeyType || !bytes.Equal(got.DER, want.DER):
		t.Fatalf("got key type %q and %d DER bytes, want %q and %d", got.KeyType, len(got.DER), want.KeyType, len(want.DER))
	case !got.CreatedAt.Equal(want.CreatedAt):
		t.Fatalf("got created_at %v, want %v", got.CreatedAt, want.CreatedAt)
	}
}

func testEnrollmentTokenRules(t *testing.T, s Stores) {
	ctx := adminCtx()
	reg := createDevice(t, s, "registered", nil)
	gone := stateSetup(t, s, "gone", pylon.DeviceDecommissioned)
	_, id, hash := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	exp := T0.Add(time.Hour)
	tests := []struct {
		name string
		tok  pylon.EnrollmentToken
		hash []byte
		code string
	}{
		{"device token", pylon.EnrollmentToken{DeviceID: reg.ID, Uses: 1, ExpiresAt: exp}, hash, ""},
		{"fleet token", pylon.EnrollmentToken{Labels: map[string]string{"site": "lab"}, Uses: 100, ExpiresAt: exp}, hash, ""},
		{"fleet token without labels", pylon.EnrollmentToken{Uses: 1, ExpiresAt: exp}, hash, ""},
		{"max uses", pylon.EnrollmentToken{Uses: pylon.MaxEnrollmentUses, ExpiresAt: exp}, hash, ""},
		{"device and labels", pylon.EnrollmentToken{DeviceID: reg.ID, Labels: map[string]string{"site": "lab"}, Uses: 1, ExpiresAt: exp}, hash, pylon.EINVALID},
		{"zero uses", pylon.EnrollmentToken{Uses: 0, ExpiresAt: exp}, hash, pylon.EINVALID},
		{"negative uses", pylon.EnrollmentToken{Uses: -1, ExpiresAt: exp}, hash, pylon.EINVALID},
		{"too many uses", pylon.EnrollmentToken{Uses: pylon.MaxEnrollmentUses + 1, ExpiresAt: exp}, hash, pylon.EINVALID},
		{"device token with two uses", pylon.EnrollmentToken{DeviceID: reg.ID, Uses: 2, ExpiresAt: exp}, hash, pylon.EINVALID},
		{"expires now", pylon.EnrollmentToken{Uses: 1, ExpiresAt: T0}, hash, pylon.EINVALID},
		{"expired", pylon.EnrollmentToken{Uses: 1, ExpiresAt: T0.Add(-time.Hour)}, hash, pylon.EINVALID},
		{"no expiry", pylon.EnrollmentToken{Uses: 1}, hash, pylon.EINVALID},
		{"bad labels", pylon.EnrollmentToken{Labels: map[string]string{"bad key": "v"}, Uses: 1, ExpiresAt: exp}, hash, pylon.EINVALID},
		{"short hash", pylon.EnrollmentToken{Uses: 1, ExpiresAt: exp}, hash[:8], pylon.EINVALID},
		{"unknown device", pylon.EnrollmentToken{DeviceID: "nosuchdevice2345", Uses: 1, ExpiresAt: exp}, hash, pylon.ENOTFOUND},
		{"decommissioned device", pylon.EnrollmentToken{DeviceID: gone.ID, Uses: 1, ExpiresAt: exp}, hash, pylon.ECONFLICT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := tt.tok
			_, tok.ID, _ = pylon.NewSecret(pylon.EnrollmentTokenPrefix)
			err := s.EnrollTokens.CreateEnrollmentToken(ctx, &tok, tt.hash)
			wantCode(t, err, tt.code)
			if err != nil {
				_, err := s.EnrollTokens.FindEnrollmentTokenByID(ctx, tok.ID)
				wantCode(t, err, pylon.ENOTFOUND)
				if recs := auditFor(t, s, "enrollment_token:"+tok.ID); len(recs) != 0 {
					t.Fatalf("refused token wrote %d audit records", len(recs))
				}
				return
			}
			got, err := s.EnrollTokens.FindEnrollmentTokenByID(ctx, tok.ID)
			if err != nil {
				t.Fatalf("find: %v", err)
			}
			if got.DeviceID != tt.tok.DeviceID || got.Uses != tt.tok.Uses || got.Used != 0 || !got.ExpiresAt.Equal(exp) ||
				!got.CreatedAt.Equal(T0) || got.CreatedBy != adminPrincipal.Actor() || got.RevokedAt != nil ||
				!maps.Equal(got.Labels, tt.tok.Labels) {
				t.Fatalf("got %+v, want %+v created at %v by %s", *got, tt.tok, T0, adminPrincipal.Actor())
			}
			if tok.CreatedBy != adminPrincipal.Actor() || !tok.CreatedAt.Equal(T0) {
				t.Fatalf("got created %v by %q on the argument, want %v by %q", tok.CreatedAt, tok.CreatedBy, T0, adminPrincipal.Actor())
			}
			recs := wantAudit(t, s, "enrollment_token:"+tok.ID, adminPrincipal.Actor(), pylon.ActionEnrollTokenCreate)
			if !strings.Contains(string(recs[0].Details), `"uses"`) {
				t.Fatalf("got details %s, want uses", recs[0].Details)
			}
		})
	}

	// A taken id is a conflict.
	tok := pylon.EnrollmentToken{ID: id, Uses: 1, ExpiresAt: exp}
	if err := s.EnrollTokens.CreateEnrollmentToken(ctx, &tok, hash); err != nil {
		t.Fatalf("create: %v", err)
	}
	tok = pylon.EnrollmentToken{ID: id, Uses: 1, ExpiresAt: exp}
	wantCode(t, s.EnrollTokens.CreateEnrollmentToken(ctx, &tok, hash), pylon.ECONFLICT)
	wantNoSecret(t, s, hash)
}

func testEnrollmentTokenFind(t *testing.T, s Stores) {
	ctx := adminCtx()
	is := newIssuer(T0)
	live, _ := createEnrollToken(t, s, &pylon.EnrollmentToken{Uses: 5, Labels: map[string]string{"a": "b"}})
	short, _ := createEnrollToken(t, s, &pylon.EnrollmentToken{Uses: 5, ExpiresAt: T0.Add(time.Minute)})
	revoked, _ := createEnrollToken(t, s, &pylon.EnrollmentToken{Uses: 5})
	used, usedHash := createEnrollToken(t, s, &pylon.EnrollmentToken{Uses: 1})
	if err := s.EnrollTokens.RevokeEnrollmentToken(ctx, revoked); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if err := s.EnrollTokens.RevokeEnrollmentToken(ctx, revoked); err != nil {
		t.Fatalf("revoke again: %v", err)
	}
	wantCode(t, s.EnrollTokens.RevokeEnrollmentToken(ctx, "nosuchtoken23456"), pylon.ENOTFOUND)
	if _, _, err := s.Enroll.Enroll(ctx, used, usedHash, "fleet-1", is.Issue); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	_, err := s.EnrollTokens.FindEnrollmentTokenByID(ctx, "nosuchtoken23456")
	wantCode(t, err, pylon.ENOTFOUND)

	ids := func(toks []*pylon.EnrollmentToken) []string {
		out := make([]string, len(toks))
		for i, tok := range toks {
			out[i] = tok.ID
		}
		return out
	}
	tests := []struct {
		name string
		now  time.Time
		live bool
		want []string
	}{
		{"all, newest first", T0, false, []string{used, revoked, short, live}},
		{"live", T0, true, []string{short, live}},
		{"live after a short expiry", T0.Add(time.Minute), true, []string{live}},
		{"all after expiry", T0.Add(pylon.DefaultEnrollmentTTL), false, []string{used, revoked, short, live}},
		{"live after all expired", T0.Add(pylon.DefaultEnrollmentTTL), true, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.SetNow(tt.now)
			toks, err := s.EnrollTokens.FindEnrollmentTokens(ctx, tt.live)
			if err != nil {
				t.Fatalf("find: %v", err)
			}
			if got := ids(toks); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
	s.SetNow(T0)
	got, err := s.EnrollTokens.FindEnrollmentTokenByID(ctx, revoked)
	if err != nil || got.RevokedAt == nil || !got.RevokedAt.Equal(T0) {
		t.Fatalf("got revoked_at %v (err %v), want %v", got.RevokedAt, err, T0)
	}
	if got, err := s.EnrollTokens.FindEnrollmentTokenByID(ctx, used); err != nil || got.Used != 1 {
		t.Fatalf("got used %d (err %v), want 1", got.Used, err)
	}
	if got, err := s.EnrollTokens.FindEnrollmentTokenByID(ctx, live); err != nil || got.Labels["a"] != "b" {
		t.Fatalf("got labels %v (err %v), want a=b", got.Labels, err)
	}
	wantAudit(t, s, "enrollment_token:"+revoked, adminPrincipal.Actor(), pylon.ActionEnrollTokenCreate, pylon.ActionEnrollTokenRevoke)
}

func testEnrollDeviceToken(t *testing.T, s Stores) {
	d := createDevice(t, s, "sensor-1", map[string]string{"site": "lab"})
	id, hash := createEnrollToken(t, s, &pylon.EnrollmentToken{DeviceID: d.ID, Uses: 1})
	is := newIssuer(T0.Add(-time.Minute))

	t1 := T0.Add(time.Minute)
	s.SetNow(t1)
	// The device enrolls itself: the records' actor is what the caller says.
	ctx := pylon.NewContextWithPrincipal(context.Background(), pylon.Principal{Kind: pylon.PrincipalDevice, ID: d.ID})
	got, c, err := s.Enroll.Enroll(ctx, id, hash, "ignored-for-device-tokens", is.Issue)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if got.ID != d.ID || got.State != pylon.DeviceActive || got.Name != "sensor-1" {
		t.Fatalf("got device %s %q state %s, want %s %q active", got.ID, got.Name, got.State, d.ID, "sensor-1")
	}
	if len(is.devices) != 1 || is.devices[0].ID != d.ID {
		t.Fatalf("issue was called with %v, want the device", is.devices)
	}
	want := *is.certs[0]
	want.Status, want.CreatedAt = pylon.CertValid, t1
	sameCert(t, c, &want)
	stored, err := s.Certs.FindCertificateBySerial(ctx, c.Serial)
	if err != nil {
		t.Fatalf("find certificate: %v", err)
	}
	sameCert(t, stored, &want)
	if stored, err := s.Devices.FindDeviceByID(ctx, d.ID); err != nil || stored.State != pylon.DeviceActive {
		t.Fatalf("stored state %v (err %v), want active", stored.State, err)
	}
	tok, err := s.EnrollTokens.FindEnrollmentTokenByID(ctx, id)
	if err != nil || tok.Used != 1 {
		t.Fatalf("got used %d (err %v), want 1", tok.Used, err)
	}

	actor := "device:" + d.ID
	all := allAudit(t, s)
	var mine []string
	for _, r := range all {
		if r.Actor == actor {
			mine = append(mine, r.Action+" "+r.Object)
		}
	}
	wantMine := []string{
		pylon.ActionEnrollTokenUse + " enrollment_token:" + id,
		pylon.ActionCertIssue + " certificate:" + c.Serial,
		pylon.ActionDeviceActivate + " device:" + d.ID,
	}
	if !sameSet(mine, wantMine) {
		t.Fatalf("got records by %s: %q, want %q", actor, mine, wantMine)
	}

	// The token is used up.
	_, _, err = s.Enroll.Enroll(ctx, id, hash, "x", is.Issue)
	wantError(t, err, pylon.EUNAUTHORIZED, "invalid or expired enrollment token")

	// A new device token for the active device issues another certificate
	// without a second activation.
	id2, hash2 := createEnrollToken(t, s, &pylon.EnrollmentToken{DeviceID: d.ID, Uses: 1})
	if got, c2, err := s.Enroll.Enroll(ctx, id2, hash2, "", is.Issue); err != nil || got.State != pylon.DeviceActive || c2.Serial == c.Serial {
		t.Fatalf("re-enroll with a new token: %v", err)
	}
	devRecs := auditFor(t, s, "device:"+d.ID)
	if got := actions(devRecs); !slices.Equal(got, []string{pylon.ActionDeviceCreate, pylon.ActionDeviceActivate}) {
		t.Fatalf("got device actions %v, want one create and one activate", got)
	}
	wantNoSecret(t, s, hash, hash2)
}

func testEnrollFleetToken(t *testing.T, s Stores) {
	labels := map[string]string{"site": "plant-7", "kind": "meter"}
	id, hash := createEnrollToken(t, s, &pylon.EnrollmentToken{Labels: labels, Uses: 3})
	is := newIssuer(T0)
	ctx := context.Background() // system actor

	var enrolled []*pylon.Device
	for _, name := range []string{"meter-1", "meter-2"} {
		d, c, err := s.Enroll.Enroll(ctx, id, hash, name, is.Issue)
		if err != nil {
			t.Fatalf("enroll %s: %v", name, err)
		}
		if d.Name != name || d.State != pylon.DeviceActive || !maps.Equal(d.Labels, labels) || !pylon.ValidID(d.ID) {
			t.Fatalf("got %+v, want an active device %q with the token's labels", *d, name)
		}
		if c.DeviceID != d.ID {
			t.Fatalf("got certificate of %s, want %s", c.DeviceID, d.ID)
		}
		stored, err := s.Devices.FindDeviceByID(ctx, d.ID)
		if err != nil {
			t.Fatalf("find: %v", err)
		}
		sameDevice(t, stored, d)
		wantAudit(t, s, "device:"+d.ID, "system", pylon.ActionDeviceCreate, pylon.ActionDeviceActivate)
		enrolled = append(enrolled, d)
	}
	if is.devices[0].Name != "meter-1" || is.devices[0].ID != enrolled[0].ID {
		t.Fatalf("issue got %+v, want the new device", is.devices[0])
	}

	tests := []struct {
		name string
		cn   string
		code string
	}{
		{"name taken", "meter-1", pylon.ECONFLICT},
		{"empty name", "", pylon.EINVALID},
		{"control character", "meter\x00", pylon.EINVALID},
		{"too long", strings.Repeat("m", pylon.MaxDeviceNameLen+1), pylon.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := s.Enroll.Enroll(ctx, id, hash, tt.cn, is.Issue)
			wantCode(t, err, tt.code)
			if tok, err := s.EnrollTokens.FindEnrollmentTokenByID(ctx, id); err != nil || tok.Used != 2 {
				t.Fatalf("got used %d (err %v), want 2: a refused enrollment uses nothing", tok.Used, err)
			}
		})
	}

	if _, _, err := s.Enroll.Enroll(ctx, id, hash, "meter-3", is.Issue); err != nil {
		t.Fatalf("third enrollment: %v", err)
	}
	_, _, err := s.Enroll.Enroll(ctx, id, hash, "meter-4", is.Issue)
	wantError(t, err, pylon.EUNAUTHORIZED, "invalid or expired enrollment token")
	if devs, _, err := s.Devices.FindDevices(ctx, pylon.DeviceFilter{Labels: labels}); err != nil || len(devs) != 3 {
		t.Fatalf("got %d fleet devices (err %v), want 3", len(devs), err)
	}
	recs := auditFor(t, s, "enrollment_token:"+id)
	if got := actions(recs); !slices.Equal(got, []string{pylon.ActionEnrollTokenCreate, pylon.ActionEnrollTokenUse, pylon.ActionEnrollTokenUse, pylon.ActionEnrollTokenUse}) {
		t.Fatalf("got token actions %v, want create and three uses", got)
	}
}

func testEnrollRefused(t *testing.T, s Stores) {
	ctx := adminCtx()
	is := newIssuer(T0)
	reg := createDevice(t, s, "reg", nil)
	susp := stateSetup(t, s, "susp", pylon.DeviceSuspended)
	doomed := createDevice(t, s, "doomed", nil)

	expID, expHash := createEnrollToken(t, s, &pylon.EnrollmentToken{Uses: 5, ExpiresAt: T0.Add(time.Minute)})
	revID, revHash := createEnrollToken(t, s, &pylon.EnrollmentToken{Uses: 5})
	if err := s.EnrollTokens.RevokeEnrollmentToken(ctx, revID); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	regID, regHash := createEnrollToken(t, s, &pylon.EnrollmentToken{DeviceID: reg.ID, Uses: 1})
	suspID, suspHash := createEnrollToken(t, s, &pylon.EnrollmentToken{DeviceID: susp.ID, Uses: 1})
	doomID, doomHash := createEnrollToken(t, s, &pylon.EnrollmentToken{DeviceID: doomed.ID, Uses: 1})
	if _, err := s.Devices.TransitionDevice(ctx, doomed.ID, pylon.DeviceDecommissioned); err != nil {
		t.Fatalf("decommission: %v", err)
	}

	const invalid = "invalid or expired enrollment token"
	tests := []struct {
		name string
		now  time.Time
		id   string
		hash []byte
		code string
		msg  string
	}{
		{"expired", T0.Add(time.Minute), expID, expHash, pylon.EUNAUTHORIZED, invalid},
		{"revoked", T0, revID, revHash, pylon.EUNAUTHORIZED, invalid},
		{"unknown", T0, "nosuchtoken23456", revHash, pylon.EUNAUTHORIZED, invalid},
		{"malformed id", T0, "'; DROP TABLE devices; --", revHash, pylon.EUNAUTHORIZED, invalid},
		{"wrong secret", T0, regID, pylon.HashSecret("pyl_et_wrong"), pylon.EUNAUTHORIZED, invalid},
		{"another token's secret", T0, regID, suspHash, pylon.EUNAUTHORIZED, invalid},
		{"no secret", T0, regID, nil, pylon.EUNAUTHORIZED, invalid},
		{"suspended device", T0, suspID, suspHash, pylon.EFORBIDDEN, ""},
		{"decommissioned device", T0, doomID, doomHash, pylon.EFORBIDDEN, ""},
	}
	before := len(allAudit(t, s))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.SetNow(tt.now)
			defer s.SetNow(T0)
			_, _, err := s.Enroll.Enroll(ctx, tt.id, tt.hash, "new-device", is.Issue)
			wantCode(t, err, tt.code)
			if tt.msg != "" {
				wantError(t, err, tt.code, tt.msg)
			}
		})
	}
	if len(is.certs) != 0 {
		t.Fatalf("issue was called %d times for refused enrollments, want 0", len(is.certs))
	}
	if n := len(allAudit(t, s)); n != before {
		t.Fatalf("refused enrollments wrote %d audit records, want 0", n-before)
	}
	// The right secret still works after the failures.
	if _, _, err := s.Enroll.Enroll(ctx, regID, regHash, "", is.Issue); err != nil {
		t.Fatalf("enroll: %v", err)
	}
}

func testEnrollIssueError(t *testing.T, s Stores) {
	ctx := adminCtx()
	d := createDevice(t, s, "unlucky", nil)
	devID, devHash := createEnrollToken(t, s, &pylon.EnrollmentToken{DeviceID: d.ID, Uses: 1})
	fleetID, fleetHash := createEnrollToken(t, s, &pylon.EnrollmentToken{Uses: 1})
	before := len(allAudit(t, s))

	errCA := errors.New("ca offline")
	fail := func(*pylon.Device) (*pylon.Certificate, error) { return nil, errCA }
	for _, tc := range []struct{ name, id string }{{"device token", devID}, {"fleet token", fleetID}} {
		t.Run(tc.name, func(t *testing.T) {
			hash := devHash
			if tc.id == fleetID {
				hash = fleetHash
			}
			_, _, err := s.Enroll.Enroll(ctx, tc.id, hash, "fleet-new", fail)
			if !errors.Is(err, errCA) {
				t.Fatalf("got error %v, want the issue error", err)
			}
			if tok, err := s.EnrollTokens.FindEnrollmentTokenByID(ctx, tc.id); err != nil || tok.Used != 0 {
				t.Fatalf("got used %d (err %v), want 0 after a failed issue", tok.Used, err)
			}
		})
	}
	if got, err := s.Devices.FindDeviceByID(ctx, d.ID); err != nil || got.State != pylon.DeviceRegistered {
		t.Fatalf("got state %v (err %v), want registered", got.State, err)
	}
	if devs, _, err := s.Devices.FindDevices(ctx, pylon.DeviceFilter{Name: ptr("fleet-new")}); err != nil || len(devs) != 0 {
		t.Fatalf("got %d fleet devices (err %v), want 0: creation must roll back", len(devs), err)
	}
	if n := len(allAudit(t, s)); n != before {
		t.Fatalf("failed enrollments wrote %d audit records, want 0", n-before)
	}
	// The token still works.
	if _, _, err := s.Enroll.Enroll(ctx, fleetID, fleetHash, "fleet-new", newIssuer(T0).Issue); err != nil {
		t.Fatalf("enroll after failure: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// race runs n calls of fn at once and returns their errors.
func race(n int, fn func(i int) error) []error {
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		errs  = make([]error, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = fn(i)
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

func testEnrollConcurrentSingleUse(t *testing.T, s Stores) {
	if s.NoConcurrency {
		t.Skip("the store cannot run concurrently")
	}
	d := createDevice(t, s, "contested", nil)
	id, hash := createEnrollToken(t, s, &pylon.EnrollmentToken{DeviceID: d.ID, Uses: 1})
	is := newIssuer(T0)
	const n = 10
	errs := race(n, func(i int) error {
		_, _, err := s.Enroll.Enroll(adminCtx(), id, hash, "", is.Issue)
		return err
	})
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if pylon.ErrorCode(err) != pylon.EUNAUTHORIZED {
			t.Fatalf("got error %v, want EUNAUTHORIZED for the losers", err)
		}
	}
	if ok != 1 {
		t.Fatalf("got %d successful enrollments with a single-use token, want exactly 1", ok)
	}
	certs, err := s.Certs.FindCertificates(adminCtx(), pylon.CertificateFilter{DeviceID: &d.ID})
	if err != nil || len(certs) != 1 {
		t.Fatalf("got %d certificates (err %v), want 1", len(certs), err)
	}
	if tok, err := s.EnrollTokens.FindEnrollmentTokenByID(adminCtx(), id); err != nil || tok.Used != 1 {
		t.Fatalf("got used %d (err %v), want 1", tok.Used, err)
	}
	if v, err := s.Audit.VerifyAudit(adminCtx()); err != nil || !v.OK {
		t.Fatalf("verify after the race: %+v (err %v), want OK", v, err)
	}
}

func testEnrollConcurrentFleet(t *testing.T, s Stores) {
	if s.NoConcurrency {
		t.Skip("the store cannot run concurrently")
	}
	id, hash := createEnrollToken(t, s, &pylon.EnrollmentToken{Uses: 3})
	is := newIssuer(T0)
	const n = 10
	errs := race(n, func(i int) error {
		_, _, err := s.Enroll.Enroll(adminCtx(), id, hash, fmt.Sprintf("swarm-%d", i), is.Issue)
		return err
	})
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if pylon.ErrorCode(err) != pylon.EUNAUTHORIZED {
			t.Fatalf("got error %v, want EUNAUTHORIZED for the losers", err)
		}
	}
	if ok != 3 {
		t.Fatalf("got %d enrollments with a 3-use token, want 3", ok)
	}
	if st, err := s.Devices.DeviceStats(adminCtx()); err != nil || st.Total != 3 || st.ByState[pylon.DeviceActive] != 3 {
		t.Fatalf("got stats %+v (err %v), want 3 active devices", st, err)
	}
	if v, err := s.Audit.VerifyAudit(adminCtx()); err != nil || !v.OK {
		t.Fatalf("verify after the race: %+v (err %v), want OK", v, err)
	}
}

func testReenroll(t *testing.T, s Stores) {
	is := newIssuer(T0)
	d, old := enrolledDevice(t, s, "renewer", is)

	t1 := T0.Add(200 * 24 * time.Hour)
	s.SetNow(t1)
	is.NotBefore = t1
	ctx := pylon.NewContextWithPrincipal(context.Background(), pylon.Principal{Kind: pylon.PrincipalDevice, ID: d.ID})
	got, c, err := s.Enroll.Reenroll(ctx, old.Serial, is.Issue)
	if err != nil {
		t.Fatalf("reenroll: %v", err)
	}
	if got.ID != d.ID || got.State != pylon.DeviceActive {
		t.Fatalf("got device %s %s, want %s active", got.ID, got.State, d.ID)
	}
	if c.Serial == old.Serial || c.DeviceID != d.ID || c.Status != pylon.CertValid || !c.CreatedAt.Equal(t1) || !c.NotBefore.Equal(t1) {
		t.Fatalf("got %+v, want a new valid certificate of the device created at %v", *c, t1)
	}
	stored, err := s.Certs.FindCertificateBySerial(ctx, c.Serial)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	sameCert(t, stored, c)
	if o, err := s.Certs.FindCertificateBySerial(ctx, old.Serial); err != nil || o.Status != pylon.CertValid {
		t.Fatalf("old certificate: got %v (err %v), want still valid", o.Status, err)
	}
	recs := wantAudit(t, s, "certificate:"+c.Serial, "device:"+d.ID, pylon.ActionCertRenew)
	if !strings.Contains(string(recs[0].Details), old.Serial) {
		t.Fatalf("got renew details %s, want the old serial", recs[0].Details)
	}
	// Renewing with the old certificate still works until the device has
	// used the new one.
	if _, _, err := s.Enroll.Reenroll(ctx, old.Serial, is.Issue); err != nil {
		t.Fatalf("reenroll with the old certificate: %v", err)
	}
}

func testReenrollRefused(t *testing.T, s Stores) {
	ctx := adminCtx()
	is := newIssuer(T0)
	_, revoked := enrolledDevice(t, s, "revoked", is)
	if _, err := s.Certs.RevokeCertificate(ctx, revoked.Serial, "key compromise"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	susp, suspCert := enrolledDevice(t, s, "suspended", is)
	if _, err := s.Devices.TransitionDevice(ctx, susp.ID, pylon.DeviceSuspended); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	retired, retiredCert := enrolledDevice(t, s, "retired", is)
	if _, err := s.Devices.TransitionDevice(ctx, retired.ID, pylon.DeviceDecommissioned); err != nil {
		t.Fatalf("decommission: %v", err)
	}
	_, good := enrolledDevice(t, s, "good", is)
	future := newIssuer(T0.Add(time.Hour))
	_, early := enrolledDevice(t, s, "early", future)

	tests := []struct {
		name   string
		now    time.Time
		serial string
		msg    string // the error says why
	}{
		{"unknown", T0, "abc123", "certificate not valid for renewal"},
		{"revoked", T0, revoked.Serial, "certificate not valid for renewal: revoked"},
		{"suspended device", T0, suspCert.Serial, "suspended"},
		{"decommissioned device", T0, retiredCert.Serial, "revoked (decommissioned)"},
		{"expired", good.NotAfter, good.Serial, "expired at"},
		{"not yet valid", T0, early.Serial, "not valid yet"},
	}
	before := len(allAudit(t, s))
	issued := len(is.certs)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.SetNow(tt.now)
			defer s.SetNow(T0)
			_, _, err := s.Enroll.Reenroll(ctx, tt.serial, is.Issue)
			wantCode(t, err, pylon.EFORBIDDEN)
			if got := pylon.ErrorMessage(err); !strings.Contains(got, tt.msg) || strings.Contains(got, "compromise") {
				t.Fatalf("got message %q, want it to say %q, and not the operator's reason", got, tt.msg)
			}
		})
	}
	if len(is.certs) != issued {
		t.Fatalf("issue was called for refused renewals")
	}
	if n := len(allAudit(t, s)); n != before {
		t.Fatalf("refused renewals wrote %d audit records", n-before)
	}
}

func testRevokeCertificate(t *testing.T, s Stores) {
	is := newIssuer(T0)
	d, c := enrolledDevice(t, s, "compromised", is)
	ctx := pylon.NewContextWithPrincipal(context.Background(), operatorPrincipal)

	t1 := T0.Add(time.Hour)
	s.SetNow(t1)
	got, err := s.Certs.RevokeCertificate(ctx, c.Serial, "key compromise")
	if err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if got.Status != pylon.CertRevoked || got.Reason != "key compromise" || got.RevokedAt == nil || !got.RevokedAt.Equal(t1) {
		t.Fatalf("got %s %q at %v, want revoked for key compromise at %v", got.Status, got.Reason, got.RevokedAt, t1)
	}
	stored, err := s.Certs.FindCertificateBySerial(ctx, c.Serial)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	sameCert(t, stored, got)

	s.SetNow(t1.Add(time.Hour))
	again, err := s.Certs.RevokeCertificate(ctx, c.Serial, "other reason")
	if err != nil {
		t.Fatalf("revoke again: %v", err)
	}
	if again.Reason != "key compromise" || !again.RevokedAt.Equal(t1) {
		t.Fatalf("second revoke changed the certificate to %q at %v", again.Reason, again.RevokedAt)
	}
	_, err = s.Certs.RevokeCertificate(ctx, "deadbeef", "x")
	wantCode(t, err, pylon.ENOTFOUND)
	_, err = s.Certs.FindCertificateBySerial(ctx, "deadbeef")
	wantCode(t, err, pylon.ENOTFOUND)

	recs := auditFor(t, s, "certificate:"+c.Serial)
	if got := actions(recs); !slices.Equal(got, []string{pylon.ActionCertIssue, pylon.ActionCertRevoke}) {
		t.Fatalf("got actions %v, want one issue and one revoke", got)
	}
	if recs[1].Actor != operatorPrincipal.Actor() {
		t.Fatalf("got actor %q, want %q", recs[1].Actor, operatorPrincipal.Actor())
	}
	// A revoked certificate stays on the CRL until it expires.
	for _, tc := range []struct {
		now  time.Time
		want int
	}{{t1, 1}, {c.NotAfter.Add(-time.Nanosecond), 1}, {c.NotAfter, 0}} {
		revoked, err := s.Certs.FindRevokedCertificates(ctx, tc.now)
		if err != nil || len(revoked) != tc.want {
			t.Fatalf("at %v got %d revoked (err %v), want %d", tc.now, len(revoked), err, tc.want)
		}
	}
	if dev, err := s.Devices.FindDeviceByID(ctx, d.ID); err != nil || dev.State != pylon.DeviceActive {
		t.Fatalf("revoking a certificate changed the device: %v (err %v)", dev.State, err)
	}
}

func testFindCertificates(t *testing.T, s Stores) {
	ctx := adminCtx()
	is := newIssuer(T0)
	a, a1 := enrolledDevice(t, s, "a", is)
	_, a2, err := s.Enroll.Reenroll(ctx, a1.Serial, is.Issue)
	if err != nil {
		t.Fatalf("reenroll: %v", err)
	}
	_, b1 := enrolledDevice(t, s, "b", is)
	if _, err := s.Certs.RevokeCertificate(ctx, a1.Serial, ""); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	status := func(st pylon.CertStatus) *pylon.CertStatus { return &st }
	tests := []struct {
		name   string
		filter pylon.CertificateFilter
		want   []string
	}{
		{"all newest first", pylon.CertificateFilter{}, []string{b1.Serial, a2.Serial, a1.Serial}},
		{"device", pylon.CertificateFilter{DeviceID: &a.ID}, []string{a2.Serial, a1.Serial}},
		{"revoked", pylon.CertificateFilter{Status: status(pylon.CertRevoked)}, []string{a1.Serial}},
		{"valid of device", pylon.CertificateFilter{DeviceID: &a.ID, Status: status(pylon.CertValid)}, []string{a2.Serial}},
		{"limit", pylon.CertificateFilter{Limit: 2}, []string{b1.Serial, a2.Serial}},
		{"unknown device", pylon.CertificateFilter{DeviceID: ptr("nosuchdevice2345")}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, err := s.Certs.FindCertificates(ctx, tt.filter)
			if err != nil {
				t.Fatalf("find: %v", err)
			}
			if got := serials(certs); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func testAuthorizeConnection(t *testing.T, s Stores) {
	ctx := pylon.NewContextWithPrincipal(context.Background(), devicePrincipal)
	is := newIssuer(T0)
	d, c := enrolledDevice(t, s, "connector", is)
	other, otherCert := enrolledDevice(t, s, "other", is)
	susp, suspCert := enrolledDevice(t, s, "suspended", is)
	if _, err := s.Devices.TransitionDevice(ctx, susp.ID, pylon.DeviceSuspended); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	_, revoked := enrolledDevice(t, s, "revoked", is)
	if _, err := s.Certs.RevokeCertificate(ctx, revoked.Serial, "lost"); err != nil {
		t.Fatalf("revoke: %v", err)
	}

	got, err := s.Certs.AuthorizeConnection(ctx, d.ID, c.Serial, T0.Add(time.Hour))
	if err != nil {
		t.Fatalf("authorize: %v", err)
	}
	if got.ID != d.ID || got.State != pylon.DeviceActive {
		t.Fatalf("got %s %s, want %s active", got.ID, got.State, d.ID)
	}

	tests := []struct {
		name     string
		deviceID string
		serial   string
		now      time.Time
		code     string
		msg      string
	}{
		{"unknown certificate", d.ID, "abcdef", T0, pylon.EUNAUTHORIZED, "unknown certificate"},
		{"other device's certificate", d.ID, otherCert.Serial, T0, pylon.EUNAUTHORIZED, ""},
		{"certificate for unknown device", "nosuchdevice2345", c.Serial, T0, pylon.EUNAUTHORIZED, ""},
		{"revoked", revoked.DeviceID, revoked.Serial, T0, pylon.EUNAUTHORIZED, "certificate revoked"},
		{"expired", d.ID, c.Serial, c.NotAfter, pylon.EUNAUTHORIZED, "certificate expired"},
		{"not yet valid", d.ID, c.Serial, c.NotBefore.Add(-time.Nanosecond), pylon.EUNAUTHORIZED, ""},
		{"suspended device", susp.ID, suspCert.Serial, T0, pylon.EFORBIDDEN, "device suspended"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Certs.AuthorizeConnection(ctx, tt.deviceID, tt.serial, tt.now)
			wantCode(t, err, tt.code)
			if tt.msg != "" {
				wantError(t, err, tt.code, tt.msg)
			}
		})
	}
	if _, err := s.Certs.AuthorizeConnection(ctx, other.ID, otherCert.Serial, T0); err != nil {
		t.Fatalf("authorize other: %v", err)
	}
}

// testAuthorizeSupersedesSameSecond renews twice within one second, so
// that the three certificates have the same not-before: issue order, not
// that time, decides which are older.
func testAuthorizeSupersedesSameSecond(t *testing.T, s Stores) {
	ctx := pylon.NewContextWithPrincipal(context.Background(), devicePrincipal)
	is := newIssuer(T0)
	d, first := enrolledDevice(t, s, "twice-in-a-second", is)
	_, second, err := s.Enroll.Reenroll(ctx, first.Serial, is.Issue)
	if err != nil {
		t.Fatalf("reenroll: %v", err)
	}
	_, third, err := s.Enroll.Reenroll(ctx, first.Serial, is.Issue) // a retry of a lost answer
	if err != nil {
		t.Fatalf("reenroll again: %v", err)
	}
	now := T0.Add(time.Minute)
	s.SetNow(now)
	status := func(serial string) pylon.CertStatus {
		t.Helper()
		c, err := s.Certs.FindCertificateBySerial(ctx, serial)
		if err != nil {
			t.Fatalf("find: %v", err)
		}
		return c.Status
	}

	// The middle one supersedes the first only.
	if _, err := s.Certs.AuthorizeConnection(ctx, d.ID, second.Serial, now); err != nil {
		t.Fatalf("authorize second: %v", err)
	}
	if got := []pylon.CertStatus{status(first.Serial), status(second.Serial), status(third.Serial)}; got[0] != pylon.CertSuperseded || got[1] != pylon.CertValid || got[2] != pylon.CertValid {
		t.Fatalf("after the second connected: got %v, want superseded, valid, valid", got)
	}
	// The last one supersedes the middle one, which can connect no more.
	if _, err := s.Certs.AuthorizeConnection(ctx, d.ID, third.Serial, now); err != nil {
		t.Fatalf("authorize third: %v", err)
	}
	if got := status(second.Serial); got != pylon.CertSuperseded {
		t.Fatalf("second after the third connected: got %s, want superseded", got)
	}
	_, err = s.Certs.AuthorizeConnection(ctx, d.ID, second.Serial, now)
	wantError(t, err, pylon.EUNAUTHORIZED, "certificate superseded")
}

func testAuthorizeSupersedes(t *testing.T, s Stores) {
	ctx := pylon.NewContextWithPrincipal(context.Background(), devicePrincipal)
	is := newIssuer(T0)
	d, oldest := enrolledDevice(t, s, "rotating", is)
	_, bystander := enrolledDevice(t, s, "bystander", is)
	is.NotBefore = T0.Add(time.Hour)
	s.SetNow(is.NotBefore)
	_, older, err := s.Enroll.Reenroll(ctx, oldest.Serial, is.Issue)
	if err != nil {
		t.Fatalf("reenroll: %v", err)
	}
	is.NotBefore = T0.Add(2 * time.Hour)
	s.SetNow(is.NotBefore)
	_, newest, err := s.Enroll.Reenroll(ctx, older.Serial, is.Issue)
	if err != nil {
		t.Fatalf("reenroll: %v", err)
	}
	now := T0.Add(3 * time.Hour)
	s.SetNow(now)

	// Connecting with an older certificate supersedes nothing newer.
	if _, err := s.Certs.AuthorizeConnection(ctx, d.ID, older.Serial, now); err != nil {
		t.Fatalf("authorize middle: %v", err)
	}
	status := func(serial string) *pylon.Certificate {
		t.Helper()
		c, err := s.Certs.FindCertificateBySerial(ctx, serial)
		if err != nil {
			t.Fatalf("find: %v", err)
		}
		return c
	}
	if c := status(newest.Serial); c.Status != pylon.CertValid {
		t.Fatalf("newest: got %s, want valid", c.Status)
	}
	if c := status(oldest.Serial); c.Status != pylon.CertSuperseded || c.Reason != "superseded" {
		t.Fatalf("oldest: got %s %q, want superseded by the middle one", c.Status, c.Reason)
	}

	if _, err := s.Certs.AuthorizeConnection(ctx, d.ID, newest.Serial, now); err != nil {
		t.Fatalf("authorize newest: %v", err)
	}
	for _, serial := range []string{oldest.Serial, older.Serial} {
		c := status(serial)
		if c.Status != pylon.CertSuperseded || c.Reason != "superseded" || c.RevokedAt == nil {
			t.Fatalf("%s: got %s %q revoked_at %v, want superseded", serial, c.Status, c.Reason, c.RevokedAt)
		}
		_, err := s.Certs.AuthorizeConnection(ctx, d.ID, serial, now)
		wantCode(t, err, pylon.EUNAUTHORIZED)
		_, _, err = s.Enroll.Reenroll(ctx, serial, is.Issue)
		wantCode(t, err, pylon.EFORBIDDEN)
	}
	if c := status(bystander.Serial); c.Status != pylon.CertValid {
		t.Fatalf("another device's certificate: got %s, want valid", c.Status)
	}
	// Each superseded certificate has one supersede record by the caller.
	for _, serial := range []string{oldest.Serial, older.Serial} {
		recs := auditFor(t, s, "certificate:"+serial)
		n := 0
		for _, r := range recs {
			if r.Action == pylon.ActionCertSupersede {
				n++
				if r.Actor != devicePrincipal.Actor() {
					t.Fatalf("got actor %q, want %q", r.Actor, devicePrincipal.Actor())
				}
			}
		}
		if n != 1 {
			t.Fatalf("%s: got %d supersede records, want 1", serial, n)
		}
	}
	revoked, err := s.Certs.FindRevokedCertificates(ctx, now)
	if err != nil {
		t.Fatalf("find revoked: %v", err)
	}
	if got := serials(revoked); !sameSet(got, []string{oldest.Serial, older.Serial}) {
		t.Fatalf("got CRL entries %v, want the superseded certificates", got)
	}
	// Revoking a superseded certificate makes it revoked.
	if c, err := s.Certs.RevokeCertificate(ctx, oldest.Serial, "key compromise"); err != nil || c.Status != pylon.CertRevoked {
		t.Fatalf("revoke superseded: got %v (err %v), want revoked", c.Status, err)
	}
}

func testDeleteExpiredCertificates(t *testing.T, s Stores) {
	ctx := adminCtx()
	old := newIssuer(T0.Add(-2 * 365 * 24 * time.Hour)) // expired a year before T0
	_, expiredValid := enrolledDevice(t, s, "expired-valid", old)
	gone, expiredRevoked := enrolledDevice(t, s, "expired-revoked", old)
	if err := s.Devices.DeleteDevice(ctx, gone.ID); err != nil { // revoked, kept for the CRL
		t.Fatal(err)
	}
	_, live := enrolledDevice(t, s, "live", newIssuer(T0))
	liveGone, liveRevoked := enrolledDevice(t, s, "live-deleted", newIssuer(T0))
	if err := s.Devices.DeleteDevice(ctx, liveGone.ID); err != nil {
		t.Fatal(err)
	}

	n, err := s.Certs.DeleteExpiredCertificates(ctx, T0)
	if err != nil || n != 2 {
		t.Fatalf("got %d deleted (%v), want the 2 expired", n, err)
	}
	for _, c := range []*pylon.Certificate{expiredValid, expiredRevoked} {
		_, err := s.Certs.FindCertificateBySerial(ctx, c.Serial)
		wantCode(t, err, pylon.ENOTFOUND)
	}
	for _, c := range []*pylon.Certificate{live, liveRevoked} {
		if _, err := s.Certs.FindCertificateBySerial(ctx, c.Serial); err != nil {
			t.Fatalf("unexpired certificate %s: %v", c.Serial, err)
		}
	}
	// The CRL still lists the deleted device's unexpired certificate.
	revoked, err := s.Certs.FindRevokedCertificates(ctx, T0)
	if err != nil || !slices.Contains(serials(revoked), liveRevoked.Serial) {
		t.Fatalf("got revoked %v (%v), want %s among them", serials(revoked), err, liveRevoked.Serial)
	}
	if n, err := s.Certs.DeleteExpiredCertificates(ctx, T0); err != nil || n != 0 {
		t.Fatalf("second run: got %d deleted (%v), want 0", n, err)
	}
}
