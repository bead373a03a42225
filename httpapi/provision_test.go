package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
)

func TestCreateEnrollmentToken_SecretOnceHashOnly(t *testing.T) {
	f := newFixture(t)
	var (
		stored     *pylon.EnrollmentToken
		storedHash []byte
		principal  pylon.Principal
	)
	f.enrolls.CreateEnrollmentTokenFn = func(ctx context.Context, tok *pylon.EnrollmentToken, hash []byte) error {
		stored, storedHash, principal = tok, hash, pylon.PrincipalFromContext(ctx)
		return nil
	}
	w := f.serve("POST", "/api/v1/enrollment-tokens", `{"device_id":"`+devID+`"}`, f.as(pylon.RoleOperator))
	var created httpapi.EnrollmentTokenCreated
	decode(t, w, 201, &created)

	id, hash, err := pylon.ParseSecret(pylon.EnrollmentTokenPrefix, created.Token)
	if err != nil {
		t.Fatalf("token %q is not an enrollment token: %v", created.Token, err)
	}
	if id != created.ID || id != stored.ID {
		t.Errorf("got ids %q (secret), %q (response), %q (stored); want equal", id, created.ID, stored.ID)
	}
	if !bytes.Equal(storedHash, hash) {
		t.Error("the store got a different hash than the secret's")
	}
	if stored.DeviceID != devID || stored.Uses != 1 || !stored.ExpiresAt.Equal(t0.Add(pylon.DefaultEnrollmentTTL)) {
		t.Errorf("got stored %+v, want device %s, 1 use, 24h", stored, devID)
	}
	if !created.ExpiresAt.Equal(stored.ExpiresAt) || created.DeviceID != devID {
		t.Errorf("got response %+v, want the token's fields", created.EnrollmentToken)
	}
	if principal.Kind != pylon.PrincipalAPIToken || principal.Role != pylon.RoleOperator {
		t.Errorf("service got principal %+v, want the operator's token", principal)
	}
	if want := principal.Actor(); stored.CreatedBy != want {
		t.Errorf("got created_by %q, want %q", stored.CreatedBy, want)
	}
	// The secret is nowhere else: not in the log, not in a listing.
	if strings.Contains(f.logBuf.String(), created.Token) {
		t.Error("the secret was logged")
	}
	f.enrolls.FindEnrollmentTokensFn = func(context.Context, bool) ([]*pylon.EnrollmentToken, error) {
		return []*pylon.EnrollmentToken{stored}, nil
	}
	if w := f.serve("GET", "/api/v1/enrollment-tokens", "", f.as(pylon.RoleViewer)); strings.Contains(w.Body.String(), created.Token) || strings.Contains(w.Body.String(), `"token"`) {
		t.Errorf("listing shows the secret: %s", w.Body.String())
	}
}

func TestCreateEnrollmentToken_Requests(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantUses  int
		wantTTL   time.Duration
		wantLabel map[string]string
	}{
		{"fleet default", `{}`, 1, pylon.DefaultEnrollmentTTL, nil},
		{"fleet", `{"labels":{"site":"lab"},"uses":100,"ttl":"72h"}`, 100, 72 * time.Hour, map[string]string{"site": "lab"}},
		{"device with ttl", `{"device_id":"` + devID + `","ttl":"30m"}`, 1, 30 * time.Minute, nil},
		{"device uses 1", `{"device_id":"` + devID + `","uses":1}`, 1, pylon.DefaultEnrollmentTTL, nil},
		{"max ttl", `{"ttl":"8760h"}`, 1, pylon.MaxEnrollmentTTL, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var stored *pylon.EnrollmentToken
			f.enrolls.CreateEnrollmentTokenFn = func(ctx context.Context, tok *pylon.EnrollmentToken, hash []byte) error {
				stored = tok
				return nil
			}
			decode(t, f.serve("POST", "/api/v1/enrollment-tokens", tt.body, f.as(pylon.RoleOperator)), 201, &httpapi.EnrollmentTokenCreated{})
			if stored.Uses != tt.wantUses || !stored.ExpiresAt.Equal(t0.Add(tt.wantTTL)) || !reflect.DeepEqual(stored.Labels, tt.wantLabel) {
				t.Errorf("got uses %d, expires %v, labels %v; want %d, %v, %v", stored.Uses, stored.ExpiresAt, stored.Labels, tt.wantUses, t0.Add(tt.wantTTL), tt.wantLabel)
			}
		})
	}
}

func TestCreateEnrollmentToken_Invalid(t *testing.T) {
	tests := []struct {
		name, body string
		svcErr     error
		wantStatus int
		wantCode   string
	}{
		{"bad ttl", `{"ttl":"soon"}`, nil, 422, pylon.EINVALID},
		{"negative ttl", `{"ttl":"-1h"}`, nil, 422, pylon.EINVALID},
		{"ttl over max", `{"ttl":"8761h"}`, nil, 422, pylon.EINVALID},
		{"ttl not a string", `{"ttl":24}`, nil, 422, pylon.EINVALID},
		{"bad device id", `{"device_id":"x"}`, nil, 422, pylon.EINVALID},
		{"device and labels", `{"device_id":"` + devID + `","labels":{"a":"b"}}`, nil, 422, pylon.EINVALID},
		{"device with 2 uses", `{"device_id":"` + devID + `","uses":2}`, nil, 422, pylon.EINVALID},
		{"negative uses", `{"uses":-1}`, nil, 422, pylon.EINVALID},
		{"too many uses", `{"uses":1000001}`, nil, 422, pylon.EINVALID},
		{"bad label", `{"labels":{"a b":"c"}}`, nil, 422, pylon.EINVALID},
		{"unknown device", `{"device_id":"` + devID + `"}`, pylon.Errorf(pylon.ENOTFOUND, "device not found"), 404, pylon.ENOTFOUND},
		{"decommissioned device", `{"device_id":"` + devID + `"}`, pylon.Errorf(pylon.ECONFLICT, "device is decommissioned"), 409, pylon.ECONFLICT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.enrolls.CreateEnrollmentTokenFn = func(context.Context, *pylon.EnrollmentToken, []byte) error { return tt.svcErr }
			checkError(t, f.serve("POST", "/api/v1/enrollment-tokens", tt.body, f.as(pylon.RoleOperator)), tt.wantStatus, tt.wantCode)
		})
	}
}

func TestEnrollmentTokens_ListGetRevoke(t *testing.T) {
	f := newFixture(t)
	var gotLive []bool
	f.enrolls.FindEnrollmentTokensFn = func(ctx context.Context, live bool) ([]*pylon.EnrollmentToken, error) {
		gotLive = append(gotLive, live)
		return nil, nil
	}
	var list httpapi.EnrollmentTokenList
	decode(t, f.serve("GET", "/api/v1/enrollment-tokens", "", f.as(pylon.RoleViewer)), 200, &list)
	decode(t, f.serve("GET", "/api/v1/enrollment-tokens?live=true", "", f.as(pylon.RoleViewer)), 200, &list)
	if !reflect.DeepEqual(gotLive, []bool{false, true}) || list.EnrollmentTokens == nil {
		t.Errorf("got live %v, tokens %v; want [false true], []", gotLive, list.EnrollmentTokens)
	}
	checkError(t, f.serve("GET", "/api/v1/enrollment-tokens?live=maybe", "", f.as(pylon.RoleViewer)), 422, pylon.EINVALID)

	var tok pylon.EnrollmentToken
	decode(t, f.serve("GET", "/api/v1/enrollment-tokens/"+tokID, "", f.as(pylon.RoleViewer)), 200, &tok)
	if tok.ID != tokID {
		t.Errorf("got %q, want %q", tok.ID, tokID)
	}

	var revoked string
	f.enrolls.RevokeEnrollmentTokenFn = func(ctx context.Context, id string) error {
		revoked = id
		return nil
	}
	if w := f.serve("DELETE", "/api/v1/enrollment-tokens/"+tokID, "", f.as(pylon.RoleOperator)); w.Code != 204 || revoked != tokID {
		t.Errorf("got %d, revoked %q; want 204, %q", w.Code, revoked, tokID)
	}
	f.enrolls.RevokeEnrollmentTokenFn = func(context.Context, string) error {
		return pylon.Errorf(pylon.ENOTFOUND, "enrollment token not found")
	}
	checkError(t, f.serve("DELETE", "/api/v1/enrollment-tokens/"+tokID, "", f.as(pylon.RoleOperator)), 404, pylon.ENOTFOUND)
	checkError(t, f.serve("DELETE", "/api/v1/enrollment-tokens/bad", "", f.as(pylon.RoleOperator)), 404, pylon.ENOTFOUND)
}

func TestListCertificates_Query(t *testing.T) {
	str := func(s string) *string { return &s }
	cs := func(s pylon.CertStatus) *pylon.CertStatus { return &s }
	tests := []struct {
		name, query string
		want        pylon.CertificateFilter
	}{
		{"none", "", pylon.CertificateFilter{}},
		{"all", "?device_id=" + devID + "&status=revoked&limit=10", pylon.CertificateFilter{DeviceID: str(devID), Status: cs(pylon.CertRevoked), Limit: 10}},
		{"superseded", "?status=superseded", pylon.CertificateFilter{Status: cs(pylon.CertSuperseded)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var got pylon.CertificateFilter
			f.certs.FindCertificatesFn = func(ctx context.Context, filter pylon.CertificateFilter) ([]*pylon.Certificate, error) {
				got = filter
				return nil, nil
			}
			var list httpapi.CertificateList
			decode(t, f.serve("GET", "/api/v1/certificates"+tt.query, "", f.as(pylon.RoleViewer)), 200, &list)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	for _, q := range []string{"?status=expired", "?device_id=x", "?limit=0", "?limit=1001"} {
		t.Run(q, func(t *testing.T) {
			f := newFixture(t)
			checkError(t, f.serve("GET", "/api/v1/certificates"+q, "", f.as(pylon.RoleViewer)), 422, pylon.EINVALID)
		})
	}
}

func TestGetCertificate(t *testing.T) {
	f := newFixture(t)
	var asked []string
	f.certs.FindCertificateBySerialFn = func(ctx context.Context, s string) (*pylon.Certificate, error) {
		asked = append(asked, s)
		return f.sampleCert(s), nil
	}
	for _, in := range []string{"1a2b3c", "1A2B3C", "001a2b3c", "1a:2b:3c"} {
		w := f.serve("GET", "/api/v1/certificates/"+in, "", f.as(pylon.RoleViewer))
		var d httpapi.CertificateDetail
		decode(t, w, 200, &d)
		block, _ := pem.Decode([]byte(d.PEM))
		if block == nil || !bytes.Equal(block.Bytes, f.ca.cert.Raw) {
			t.Errorf("%s: got pem %q, want the certificate", in, d.PEM)
		}
		var m map[string]json.RawMessage
		json.Unmarshal(w.Body.Bytes(), &m)
		if _, ok := m["serial"]; !ok {
			t.Errorf("%s: certificate fields missing: %s", in, w.Body.String())
		}
	}
	if !reflect.DeepEqual(asked, []string{serial, serial, serial, serial}) {
		t.Errorf("store asked for %v, want the normalized serial each time", asked)
	}
	for _, bad := range []string{"xyz", strings.Repeat("f", 41)} {
		checkError(t, f.serve("GET", "/api/v1/certificates/"+bad, "", f.as(pylon.RoleViewer)), 404, pylon.ENOTFOUND)
	}
}

func TestNormalizeSerial(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"1a2b", "1a2b", true},
		{"00FF", "ff", true},
		{"0", "0", true},
		{"000", "0", true},
		{"0a:0b", "a0b", true},
		{"", "", false},
		{"g1", "", false},
		{strings.Repeat("a", 40), strings.Repeat("a", 40), true},
		{strings.Repeat("a", 41), "", false},
		{strings.Repeat("0", 30) + "1", "1", true},
	}
	for _, tt := range tests {
		got, ok := httpapi.NormalizeSerial(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("NormalizeSerial(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestRevokeCertificate(t *testing.T) {
	tests := []struct {
		name, body, wantReason string
	}{
		{"no body", "", ""},
		{"empty object", "{}", ""},
		{"reason", `{"reason":"key_compromise"}`, "key_compromise"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var gotSerial, gotReason string
			f.certs.RevokeCertificateFn = func(ctx context.Context, s, reason string) (*pylon.Certificate, error) {
				gotSerial, gotReason = s, reason
				c := f.sampleCert(s)
				c.Status = pylon.CertRevoked
				return c, nil
			}
			var d httpapi.CertificateDetail
			decode(t, f.serve("POST", "/api/v1/certificates/"+serial+"/revoke", tt.body, f.as(pylon.RoleOperator)), 200, &d)
			if gotSerial != serial || gotReason != tt.wantReason || d.Status != pylon.CertRevoked {
				t.Errorf("got serial %q reason %q status %q", gotSerial, gotReason, d.Status)
			}
			if got, want := f.disconnectList(), []string{devID + " certificate revoked"}; !reflect.DeepEqual(got, want) {
				t.Errorf("got disconnects %v, want %v", got, want)
			}
		})
	}
	f := newFixture(t)
	checkError(t, f.serve("POST", "/api/v1/certificates/"+serial+"/revoke", `{"reason":"`+strings.Repeat("r", 257)+`"}`, f.as(pylon.RoleOperator)), 422, pylon.EINVALID)
	checkError(t, f.serve("POST", "/api/v1/certificates/"+serial+"/revoke", `{"reason":"a\u0000b"}`, f.as(pylon.RoleOperator)), 422, pylon.EINVALID)
	f.certs.RevokeCertificateFn = func(context.Context, string, string) (*pylon.Certificate, error) {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "certificate not found")
	}
	checkError(t, f.serve("POST", "/api/v1/certificates/"+serial+"/revoke", "", f.as(pylon.RoleOperator)), 404, pylon.ENOTFOUND)
	if got := f.disconnectList(); len(got) != 0 {
		t.Errorf("got disconnects %v after failures, want none", got)
	}
}

func TestCAEndpoints(t *testing.T) {
	f := newFixture(t)
	w := f.serve("GET", "/api/v1/ca/cert", "")
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/x-pem-file" || !bytes.Equal(w.Body.Bytes(), f.ca.pem()) {
		t.Errorf("ca/cert: got %d %q %q", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
	w = f.serve("GET", "/api/v1/ca/crl", "")
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/pkix-crl" || !bytes.Equal(w.Body.Bytes(), []byte{0x30, 0x03, 0x02, 0x01, 0x01}) {
		t.Errorf("ca/crl: got %d %q %x", w.Code, w.Header().Get("Content-Type"), w.Body.Bytes())
	}
}
