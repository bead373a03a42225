// Package storetest is the conformance suite of Pylon's stores: every
// implementation of the store interfaces of package pylon (sqlite,
// postgres, ...) runs Run from its own tests and must pass it.
//
// The suite checks behaviour only through the root interfaces: device CRUD
// and filters, pagination, lifecycle transitions, connection history, API
// token authentication, enrollment token rules, enrollment and renewal
// (including a real race on a single-use token), connection authorization
// with superseding, the audit log that every mutation writes, and
// telemetry: deduplication and replay refusal, exact round-trips of every
// value type, paging, latest values, aggregates, retention, quarantine and
// deletion with the device.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
)

// Stores are the services under test, all on one fresh, empty store.
type Stores struct {
	Devices      pylon.DeviceService
	APITokens    pylon.APITokenService
	Certs        pylon.CertificateService
	EnrollTokens pylon.EnrollmentTokenService
	Enroll       pylon.EnrollmentStore
	Audit        pylon.AuditService
	Telemetry    pylon.TelemetryService

	// SetNow moves the store's clock (the time it stamps records with and
	// checks expiry against). It must be safe for concurrent use.
	SetNow func(time.Time)

	// NoConcurrency says the store cannot serve concurrent callers; only
	// then does the suite skip its concurrency tests.
	NoConcurrency bool
}

// T0 is where the suite sets the store's clock at the start of each test.
// It has nanoseconds, to check that times round-trip exactly.
var T0 = time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.UTC)

// Run runs the suite. open returns fresh stores for each subtest; it may be
// called from parallel subtests and should register its cleanup with t.
func Run(t *testing.T, open func(t *testing.T) Stores) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s Stores)
	}{
		{"DeviceCRUD", testDeviceCRUD},
		{"DeviceValidation", testDeviceValidation},
		{"DeviceNameUnique", testDeviceNameUnique},
		{"FindDevicesFilters", testFindDevicesFilters},
		{"FindDevicesPagination", testFindDevicesPagination},
		{"FindDevicesBadCursor", testFindDevicesBadCursor},
		{"Transitions", testTransitions},
		{"DecommissionRevokesCertificates", testDecommissionRevokes},
		{"DeleteDeviceRevokesCertificates", testDeleteDeviceRevokesCertificates},
		{"Connections", testConnections},
		{"ConnectionPruning", testConnectionPruning},
		{"ResetConnections", testResetConnections},
		{"DeviceStats", testDeviceStats},
		{"APITokenCreate", testAPITokenCreate},
		{"APITokenAuthenticate", testAPITokenAuthenticate},
		{"EnrollmentTokenRules", testEnrollmentTokenRules},
		{"EnrollmentTokenFind", testEnrollmentTokenFind},
		{"EnrollDeviceToken", testEnrollDeviceToken},
		{"EnrollFleetToken", testEnrollFleetToken},
		{"EnrollRefused", testEnrollRefused},
		{"EnrollIssueErrorRollsBack", testEnrollIssueError},
		{"EnrollConcurrentSingleUse", testEnrollConcurrentSingleUse},
		{"EnrollConcurrentFleet", testEnrollConcurrentFleet},
		{"Reenroll", testReenroll},
		{"ReenrollRefused", testReenrollRefused},
		{"RevokeCertificate", testRevokeCertificate},
		{"DeleteExpiredCertificates", testDeleteExpiredCertificates},
		{"FindCertificates", testFindCertificates},
		{"AuthorizeConnection", testAuthorizeConnection},
		{"AuthorizeConnectionSupersedes", testAuthorizeSupersedes},
		{"AuthorizeConnectionSupersedesSameSecond", testAuthorizeSupersedesSameSecond},
		{"AuditEmpty", testAuditEmpty},
		{"AuditActors", testAuditActors},
		{"AuditChain", testAuditChain},
		{"AuditFilters", testAuditFilters},
		{"AppendAudit", testAppendAudit},
		{"TelemetryStatuses", testTelemetryStatuses},
		{"TelemetryValidation", testTelemetryValidation},
		{"TelemetryRoundTrip", testTelemetryRoundTrip},
		{"TelemetryFindReadings", testTelemetryFindReadings},
		{"TelemetryStorageOrder", testTelemetryStorageOrder},
		{"TelemetryInterleavedMessages", testTelemetryInterleavedMessages},
		{"TelemetryManyDevicesInBatch", testTelemetryManyDevicesInBatch},
		{"TelemetryLatest", testTelemetryLatest},
		{"TelemetryAggregates", testTelemetryAggregates},
		{"TelemetryRetention", testTelemetryRetention},
		{"TelemetryQuarantine", testTelemetryQuarantine},
		{"TelemetryDeleteDevice", testTelemetryDeleteDevice},
		{"TelemetryConcurrent", testTelemetryConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			s.SetNow(T0)
			tt.fn(t, s)
		})
	}
}

// Principals used as actors by the suite.
var (
	adminPrincipal    = pylon.Principal{Kind: pylon.PrincipalAPIToken, ID: "adminadminadmin2", Role: pylon.RoleAdmin}
	operatorPrincipal = pylon.Principal{Kind: pylon.PrincipalUser, ID: "olivia", Role: pylon.RoleOperator}
	devicePrincipal   = pylon.Principal{Kind: pylon.PrincipalDevice, ID: "deviceprincipal2"}
)

// adminCtx returns a context whose principal is adminPrincipal.
func adminCtx() context.Context {
	return pylon.NewContextWithPrincipal(context.Background(), adminPrincipal)
}

// wantCode fails t unless err has the given code ("" for nil).
func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	if got := pylon.ErrorCode(err); got != code {
		t.Fatalf("got error %v (code %q), want code %q", err, got, code)
	}
}

// wantError fails t unless err has the given code and message.
func wantError(t testing.TB, err error, code, msg string) {
	t.Helper()
	wantCode(t, err, code)
	if got := pylon.ErrorMessage(err); got != msg {
		t.Fatalf("got message %q, want %q", got, msg)
	}
}

// createDevice creates a registered device.
func createDevice(t testing.TB, s Stores, name string, labels map[string]string) *pylon.Device {
	t.Helper()
	d := &pylon.Device{Name: name, Labels: labels}
	if err := s.Devices.CreateDevice(adminCtx(), d); err != nil {
		t.Fatalf("create device %q: %v", name, err)
	}
	return d
}

// newSerial returns a random serial in the form of Certificate.Serial.
func newSerial() string {
	var b [16]byte
	rand.Read(b[:])
	b[0] = b[0]&0x7f | 0x10 // no leading zero
	return hex.EncodeToString(b[:])
}

// issuer is a fake CA: its IssueFunc returns certificates valid from
// notBefore for lifetime and remembers what it issued.
type issuer struct {
	NotBefore time.Time
	Lifetime  time.Duration

	mu      sync.Mutex
	devices []pylon.Device // as passed to issue
	certs   []*pylon.Certificate
}

// newIssuer returns an issuer of certificates valid for a year from nb.
func newIssuer(nb time.Time) *issuer {
	return &issuer{NotBefore: nb, Lifetime: 365 * 24 * time.Hour}
}

// Issue implements pylon.IssueFunc.
func (is *issuer) Issue(d *pylon.Device) (*pylon.Certificate, error) {
	der := make([]byte, 200)
	rand.Read(der)
	is.mu.Lock()
	defer is.mu.Unlock()
	c := &pylon.Certificate{
		Serial:    newSerial(),
		DeviceID:  d.ID,
		NotBefore: is.NotBefore,
		NotAfter:  is.NotBefore.Add(is.Lifetime),
		KeyType:   "ECDSA-P256",
		DER:       der,
	}
	is.devices = append(is.devices, *d)
	is.certs = append(is.certs, c)
	return c, nil
}

// createEnrollToken creates an enrollment token and returns its id and
// secret hash.
func createEnrollToken(t testing.TB, s Stores, tok *pylon.EnrollmentToken) (id string, hash []byte) {
	t.Helper()
	_, id, hash = pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	tok.ID = id
	if tok.ExpiresAt.IsZero() {
		tok.ExpiresAt = T0.Add(pylon.DefaultEnrollmentTTL)
	}
	if err := s.EnrollTokens.CreateEnrollmentToken(adminCtx(), tok, hash); err != nil {
		t.Fatalf("create enrollment token: %v", err)
	}
	return id, hash
}

// enrolledDevice creates a device and enrolls it with a device token,
// returning the active device and its certificate.
func enrolledDevice(t testing.TB, s Stores, name string, is *issuer) (*pylon.Device, *pylon.Certificate) {
	t.Helper()
	d := createDevice(t, s, name, nil)
	id, hash := createEnrollToken(t, s, &pylon.EnrollmentToken{DeviceID: d.ID, Uses: 1})
	d, c, err := s.Enroll.Enroll(adminCtx(), id, hash, name, is.Issue)
	if err != nil {
		t.Fatalf("enroll %q: %v", name, err)
	}
	return d, c
}

// auditFor returns the audit records of object, in order.
func auditFor(t testing.TB, s Stores, object string) []*pylon.AuditRecord {
	t.Helper()
	recs, err := s.Audit.FindAuditRecords(context.Background(), pylon.AuditFilter{Object: object, Limit: 1000})
	if err != nil {
		t.Fatalf("find audit records of %s: %v", object, err)
	}
	return recs
}

// allAudit returns every audit record, in order.
func allAudit(t testing.TB, s Stores) []*pylon.AuditRecord {
	t.Helper()
	var all []*pylon.AuditRecord
	var after int64
	for {
		recs, err := s.Audit.FindAuditRecords(context.Background(), pylon.AuditFilter{After: after, Limit: 1000})
		if err != nil {
			t.Fatalf("find audit records: %v", err)
		}
		all = append(all, recs...)
		if len(recs) < 1000 {
			return all
		}
		after = recs[len(recs)-1].Seq
	}
}

// actions returns the actions of recs.
func actions(recs []*pylon.AuditRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Action
	}
	return out
}

// wantAudit fails t unless object has exactly the records with the given
// actions, in order, all by actor.
func wantAudit(t testing.TB, s Stores, object, actor string, want ...string) []*pylon.AuditRecord {
	t.Helper()
	recs := auditFor(t, s, object)
	if got := strings.Join(actions(recs), ","); got != strings.Join(want, ",") {
		t.Fatalf("audit of %s: got actions [%s], want [%s]", object, got, strings.Join(want, ","))
	}
	for _, r := range recs {
		if r.Actor != actor {
			t.Fatalf("audit of %s, %s: got actor %q, want %q", object, r.Action, r.Actor, actor)
		}
	}
	return recs
}

// wantNoSecret fails t if any audit record contains one of the secrets
// (raw or hex).
func wantNoSecret(t testing.TB, s Stores, secrets ...[]byte) {
	t.Helper()
	for _, r := range allAudit(t, s) {
		text := r.Actor + r.Object + string(r.Details)
		for _, sec := range secrets {
			if strings.Contains(text, hex.EncodeToString(sec)) || strings.Contains(text, string(sec)) {
				t.Fatalf("audit record %d (%s) contains a secret or hash: %s", r.Seq, r.Action, r.Details)
			}
		}
	}
}

// timePtr returns &t.
func timePtr(t time.Time) *time.Time { return &t }
