package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
)

func TestNewClient(t *testing.T) {
	ca := newTestCA(t)
	tests := []struct {
		name    string
		url     string
		ca      []byte
		wantErr bool
	}{
		{"https", "https://pylon.example:8443", nil, false},
		{"https with CA", "https://pylon.example:8443/", ca.pem(), false},
		{"http loopback", "http://127.0.0.1:8080", nil, false},
		{"http localhost", "http://localhost:8080", nil, false},
		{"http remote", "http://pylon.example", nil, true},
		{"no scheme", "pylon.example:8443", nil, true},
		{"ftp", "ftp://pylon.example", nil, true},
		{"user info", "https://u:p@pylon.example", nil, true},
		{"bad CA", "https://pylon.example", []byte("not pem"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := httpapi.NewClient(tt.url, "tok", tt.ca)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error: %v", err, tt.wantErr)
			}
			if err == nil && (c.BaseURL[len(c.BaseURL)-1] == '/' || c.Token != "tok" || c.HTTP == nil) {
				t.Errorf("got %+v", c)
			}
		})
	}
}

func TestClient_PinsCA(t *testing.T) {
	f := newFixture(t)
	url := f.start()
	other := newTestCA(t)
	c, err := httpapi.NewClient(url, "", other.pem())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Health(context.Background()); err == nil {
		t.Error("got nil error from a server outside the pinned CA, want a TLS error")
	}
}

func TestClient_Errors(t *testing.T) {
	f := newFixture(t)
	url := f.start()
	ctx := context.Background()
	f.devices.FindDeviceByIDFn = func(context.Context, string) (*pylon.Device, error) {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "device not found")
	}
	tests := []struct {
		name     string
		call     func() error
		wantCode string
		wantMsg  string
	}{
		{"not found", func() error { _, err := f.client(url, pylon.RoleViewer).GetDevice(ctx, devID); return err },
			pylon.ENOTFOUND, "device not found"},
		{"forbidden", func() error { _, err := f.client(url, pylon.RoleViewer).SuspendDevice(ctx, devID); return err },
			pylon.EFORBIDDEN, `role "viewer" does not have the operate permission`},
		{"unauthorized", func() error { _, err := f.client(url, "").ListAPITokens(ctx); return err },
			pylon.EUNAUTHORIZED, "missing API token (Authorization: Bearer ...)"},
		{"invalid", func() error {
			_, err := f.client(url, pylon.RoleOperator).CreateDevice(ctx, &pylon.Device{Name: ""})
			return err
		}, pylon.EINVALID, "name: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var e *pylon.Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v (%T), want *pylon.Error", err, err)
			}
			if e.Code != tt.wantCode || e.Message != tt.wantMsg {
				t.Errorf("got %s %q, want %s %q", e.Code, e.Message, tt.wantCode, tt.wantMsg)
			}
		})
	}
	f.srv.SetReady(false)
	if err := f.client(url, "").Health(ctx); pylon.ErrorCode(err) != pylon.EUNAVAILABLE {
		t.Errorf("health when not ready: got %v, want unavailable", err)
	}
}

// TestClient_RoundTrips calls every Client method against the real handler
// over TLS, checking what the services received and what came back.
func TestClient_RoundTrips(t *testing.T) {
	f := newFixture(t)
	url := f.start()
	ctx := context.Background()
	admin := f.client(url, pylon.RoleAdmin)

	// last records the arguments of the latest service call.
	var (
		mu   sync.Mutex // the server's goroutines write last
		last []any
	)
	set := func(args ...any) {
		mu.Lock()
		defer mu.Unlock()
		last = args
	}
	take := func() []any {
		mu.Lock()
		defer mu.Unlock()
		l := last
		last = nil
		return l
	}
	check := func(t *testing.T, want ...any) {
		t.Helper()
		if got := take(); !reflect.DeepEqual(got, want) {
			t.Errorf("service got %#v, want %#v", got, want)
		}
	}

	f.devices.CreateDeviceFn = func(_ context.Context, d *pylon.Device) error {
		set(d.Name, d.Labels, string(d.Metadata))
		d.ID, d.State = devID, pylon.DeviceRegistered
		return nil
	}
	f.devices.FindDevicesFn = func(_ context.Context, filter pylon.DeviceFilter) ([]*pylon.Device, string, error) {
		set(filter)
		return []*pylon.Device{sampleDevice(devID)}, "c2", nil
	}
	f.devices.UpdateDeviceFn = func(_ context.Context, id string, upd pylon.DeviceUpdate) (*pylon.Device, error) {
		set(id, *upd.Name)
		d := sampleDevice(id)
		d.Name = *upd.Name
		return d, nil
	}
	f.devices.DeleteDeviceFn = func(_ context.Context, id string) error { set(id); return nil }
	f.devices.TransitionDeviceFn = func(_ context.Context, id string, next pylon.DeviceState) (*pylon.Device, error) {
		set(id, next)
		d := sampleDevice(id)
		d.State = next
		return d, nil
	}
	f.devices.FindConnectionsFn = func(_ context.Context, id string, limit int) ([]*pylon.ConnectionEvent, error) {
		set(id, limit)
		return []*pylon.ConnectionEvent{{DeviceID: id, Online: false, At: t0, Reason: "gone"}}, nil
	}
	f.enrolls.CreateEnrollmentTokenFn = func(_ context.Context, tok *pylon.EnrollmentToken, hash []byte) error {
		set(tok.Labels, tok.Uses, tok.ExpiresAt.Sub(t0))
		return nil
	}
	f.enrolls.FindEnrollmentTokensFn = func(_ context.Context, live bool) ([]*pylon.EnrollmentToken, error) {
		set(live)
		return []*pylon.EnrollmentToken{{ID: tokID, Uses: 5, Used: 2, ExpiresAt: t0}}, nil
	}
	f.enrolls.RevokeEnrollmentTokenFn = func(_ context.Context, id string) error { set(id); return nil }
	f.certs.FindCertificatesFn = func(_ context.Context, filter pylon.CertificateFilter) ([]*pylon.Certificate, error) {
		set(filter)
		return []*pylon.Certificate{f.sampleCert(serial)}, nil
	}
	f.certs.RevokeCertificateFn = func(_ context.Context, s, reason string) (*pylon.Certificate, error) {
		set(s, reason)
		c := f.sampleCert(s)
		c.Status = pylon.CertRevoked
		return c, nil
	}
	f.apiToks.CreateAPITokenFn = func(_ context.Context, tok *pylon.APIToken, hash []byte) error {
		set(tok.Name, tok.Role, tok.ExpiresAt != nil)
		return nil
	}
	f.apiToks.RevokeAPITokenFn = func(_ context.Context, id string) error { set(id); return nil }
	f.audit.FindAuditRecordsFn = func(_ context.Context, filter pylon.AuditFilter) ([]*pylon.AuditRecord, error) {
		set(filter)
		return []*pylon.AuditRecord{{Seq: 9, Time: t0, Actor: "system", Action: pylon.ActionCertIssue, Object: "certificate:" + serial,
			Details: json.RawMessage(`{"device":"x"}`), Hash: "ab"}}, nil
	}

	t.Run("Info", func(t *testing.T) {
		info, err := admin.Info(ctx)
		if err != nil || info.MQTTAddr != ":8883" || info.Version != pylon.Version {
			t.Errorf("got %+v, %v", info, err)
		}
	})
	t.Run("Health", func(t *testing.T) {
		if err := admin.Health(ctx); err != nil {
			t.Error(err)
		}
	})
	t.Run("CreateDevice", func(t *testing.T) {
		d, err := admin.CreateDevice(ctx, &pylon.Device{Name: "s1", Labels: map[string]string{"a": "b"}, Metadata: json.RawMessage(`{"k":1}`)})
		if err != nil || d.ID != devID || d.State != pylon.DeviceRegistered {
			t.Fatalf("got %+v, %v", d, err)
		}
		check(t, "s1", map[string]string{"a": "b"}, `{"k":1}`)
	})
	t.Run("ListDevices", func(t *testing.T) {
		st, on, name := pylon.DeviceActive, true, "sensor-1"
		filter := pylon.DeviceFilter{Labels: map[string]string{"site": "lab", "tier": "gold"}, State: &st, Query: "sen",
			Online: &on, Name: &name, Cursor: "c1", Limit: 10}
		devices, next, err := admin.ListDevices(ctx, filter)
		if err != nil || len(devices) != 1 || next != "c2" {
			t.Fatalf("got %d devices, %q, %v", len(devices), next, err)
		}
		check(t, filter)
	})
	t.Run("GetDevice", func(t *testing.T) {
		d, err := admin.GetDevice(ctx, devID)
		if err != nil || d.ID != devID || d.Labels["site"] != "lab" || !d.CreatedAt.Equal(t0) {
			t.Errorf("got %+v, %v", d, err)
		}
	})
	t.Run("UpdateDevice", func(t *testing.T) {
		name := "renamed"
		d, err := admin.UpdateDevice(ctx, devID, pylon.DeviceUpdate{Name: &name})
		if err != nil || d.Name != "renamed" {
			t.Fatalf("got %+v, %v", d, err)
		}
		check(t, devID, "renamed")
	})
	t.Run("DeleteDevice", func(t *testing.T) {
		if err := admin.DeleteDevice(ctx, devID); err != nil {
			t.Fatal(err)
		}
		check(t, devID)
	})
	suspendSample(f)
	transitions := []struct {
		name string
		call func(context.Context, string) (*pylon.Device, error)
		want pylon.DeviceState
	}{
		{"SuspendDevice", admin.SuspendDevice, pylon.DeviceSuspended},
		{"ResumeDevice", admin.ResumeDevice, pylon.DeviceActive},
		{"DecommissionDevice", admin.DecommissionDevice, pylon.DeviceDecommissioned},
	}
	for _, tt := range transitions {
		t.Run(tt.name, func(t *testing.T) {
			d, err := tt.call(ctx, devID)
			if err != nil || d.State != tt.want {
				t.Fatalf("got %+v, %v", d, err)
			}
			check(t, devID, tt.want)
		})
	}
	t.Run("DeviceConnections", func(t *testing.T) {
		evs, err := admin.DeviceConnections(ctx, devID, 7)
		if err != nil || len(evs) != 1 || evs[0].Reason != "gone" {
			t.Fatalf("got %+v, %v", evs, err)
		}
		check(t, devID, 7)
	})
	t.Run("DeviceCertificates", func(t *testing.T) {
		certs, err := admin.DeviceCertificates(ctx, devID)
		if err != nil || len(certs) != 1 || certs[0].Serial != serial {
			t.Fatalf("got %+v, %v", certs, err)
		}
		id := devID
		check(t, pylon.CertificateFilter{DeviceID: &id, Limit: httpapi.MaxListLimit})
	})
	t.Run("Stats", func(t *testing.T) {
		st, err := admin.Stats(ctx)
		if err != nil || st.Total != 3 {
			t.Errorf("got %+v, %v", st, err)
		}
	})
	t.Run("CreateEnrollmentToken", func(t *testing.T) {
		tok, err := admin.CreateEnrollmentToken(ctx, httpapi.EnrollmentTokenRequest{Labels: map[string]string{"site": "lab"}, Uses: 10, TTL: "2h"})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := pylon.ParseSecret(pylon.EnrollmentTokenPrefix, tok.Token); err != nil || tok.Uses != 10 || !tok.ExpiresAt.Equal(t0.Add(2*time.Hour)) {
			t.Errorf("got %+v (%v)", tok, err)
		}
		check(t, map[string]string{"site": "lab"}, 10, 2*time.Hour)
	})
	t.Run("ListEnrollmentTokens", func(t *testing.T) {
		toks, err := admin.ListEnrollmentTokens(ctx, true)
		if err != nil || len(toks) != 1 || toks[0].Used != 2 {
			t.Fatalf("got %+v, %v", toks, err)
		}
		check(t, true)
	})
	t.Run("GetEnrollmentToken", func(t *testing.T) {
		tok, err := admin.GetEnrollmentToken(ctx, tokID)
		if err != nil || tok.ID != tokID {
			t.Errorf("got %+v, %v", tok, err)
		}
	})
	t.Run("RevokeEnrollmentToken", func(t *testing.T) {
		if err := admin.RevokeEnrollmentToken(ctx, tokID); err != nil {
			t.Fatal(err)
		}
		check(t, tokID)
	})
	t.Run("ListCertificates", func(t *testing.T) {
		id, st := devID, pylon.CertValid
		filter := pylon.CertificateFilter{DeviceID: &id, Status: &st, Limit: 3}
		certs, err := admin.ListCertificates(ctx, filter)
		if err != nil || len(certs) != 1 {
			t.Fatalf("got %+v, %v", certs, err)
		}
		check(t, filter)
	})
	t.Run("GetCertificate", func(t *testing.T) {
		c, err := admin.GetCertificate(ctx, "1A2B3C")
		if err != nil || c.Serial != serial || !bytes.Equal(c.DER, f.ca.cert.Raw) || c.PEM == "" {
			t.Errorf("got %+v, %v", c, err)
		}
	})
	t.Run("RevokeCertificate", func(t *testing.T) {
		c, err := admin.RevokeCertificate(ctx, serial, "lost")
		if err != nil || c.Status != pylon.CertRevoked || !bytes.Equal(c.DER, f.ca.cert.Raw) {
			t.Fatalf("got %+v, %v", c, err)
		}
		check(t, serial, "lost")
	})
	t.Run("CreateAPIToken", func(t *testing.T) {
		tok, err := admin.CreateAPIToken(ctx, httpapi.APITokenRequest{Name: "ci", Role: "operator", TTL: "24h"})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := pylon.ParseSecret(pylon.APITokenPrefix, tok.Token); err != nil || tok.Role != pylon.RoleOperator || tok.ExpiresAt == nil {
			t.Errorf("got %+v (%v)", tok, err)
		}
		check(t, "ci", pylon.RoleOperator, true)
	})
	t.Run("ListAPITokens", func(t *testing.T) {
		toks, err := admin.ListAPITokens(ctx)
		if err != nil || len(toks) != 1 || toks[0].ID != tokID {
			t.Errorf("got %+v, %v", toks, err)
		}
	})
	t.Run("RevokeAPIToken", func(t *testing.T) {
		if err := admin.RevokeAPIToken(ctx, tokID); err != nil {
			t.Fatal(err)
		}
		check(t, tokID)
	})
	t.Run("ListAudit", func(t *testing.T) {
		since, until := t0.Add(-time.Hour), t0.Add(123*time.Nanosecond)
		filter := pylon.AuditFilter{Actor: "system", Object: "device:", Action: pylon.ActionCertIssue, Since: &since, Until: &until, After: 3, Limit: 20, Desc: true}
		recs, err := admin.ListAudit(ctx, filter)
		if err != nil || len(recs) != 1 || recs[0].Seq != 9 || string(recs[0].Details) != `{"device":"x"}` {
			t.Fatalf("got %+v, %v", recs, err)
		}
		args := take()
		if len(args) != 1 {
			t.Fatalf("service got %v", args)
		}
		got := args[0].(pylon.AuditFilter)
		if !got.Since.Equal(since) || !got.Until.Equal(until) {
			t.Errorf("got since %v until %v, want %v %v", got.Since, got.Until, since, until)
		}
		got.Since, got.Until, filter.Since, filter.Until = nil, nil, nil, nil
		if !reflect.DeepEqual(got, filter) {
			t.Errorf("got %+v, want %+v", got, filter)
		}
	})
	t.Run("VerifyAudit", func(t *testing.T) {
		v, err := admin.VerifyAudit(ctx)
		if err != nil || !v.OK || v.Records != 1 {
			t.Errorf("got %+v, %v", v, err)
		}
	})
	t.Run("CRL", func(t *testing.T) {
		crl, err := admin.CRL(ctx)
		if err != nil || !bytes.Equal(crl, []byte{0x30, 0x03, 0x02, 0x01, 0x01}) {
			t.Errorf("got %x, %v", crl, err)
		}
	})
	t.Run("CACert", func(t *testing.T) {
		pemBytes, err := admin.CACert(ctx)
		if err != nil || !bytes.Equal(pemBytes, f.ca.pem()) {
			t.Errorf("got %q, %v", pemBytes, err)
		}
	})
	// Every service call of an authenticated route carried the admin
	// token's principal.
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, p := range f.principals {
		if f.calls[i] == "CRL" {
			continue
		}
		if p.Kind != pylon.PrincipalAPIToken || p.Role != pylon.RoleAdmin {
			t.Errorf("call %d (%s): got principal %+v, want the admin token", i, f.calls[i], p)
		}
	}
}
