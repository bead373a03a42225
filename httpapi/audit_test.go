package httpapi_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/httpapi"
)

func TestListAudit_Query(t *testing.T) {
	since := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	until := time.Date(2030, 1, 2, 12, 30, 0, 500, time.UTC)
	tests := []struct {
		name, query string
		want        pylon.AuditFilter
	}{
		{"none", "", pylon.AuditFilter{}},
		{"all", "?object=device:&actor=system&action=device.create&since=2030-01-01T00:00:00Z&until=2030-01-02T12:30:00.0000005Z&after=7&limit=50&order=desc",
			pylon.AuditFilter{Object: "device:", Actor: "system", Action: "device.create", Since: &since, Until: &until, After: 7, Limit: 50, Desc: true}},
		{"asc", "?order=asc", pylon.AuditFilter{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var got pylon.AuditFilter
			f.audit.FindAuditRecordsFn = func(ctx context.Context, filter pylon.AuditFilter) ([]*pylon.AuditRecord, error) {
				got = filter
				return nil, nil
			}
			var list httpapi.AuditList
			decode(t, f.serve("GET", "/api/v1/audit"+tt.query, "", f.as(pylon.RoleViewer)), 200, &list)
			if list.Records == nil {
				t.Error("got null records, want []")
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	for _, q := range []string{"?since=yesterday", "?until=2030-01-01", "?after=-1", "?after=x", "?limit=0", "?order=up"} {
		t.Run(q, func(t *testing.T) {
			f := newFixture(t)
			checkError(t, f.serve("GET", "/api/v1/audit"+q, "", f.as(pylon.RoleViewer)), 422, pylon.EINVALID)
		})
	}
}

func TestVerifyAudit(t *testing.T) {
	f := newFixture(t)
	f.audit.VerifyAuditFn = func(context.Context) (pylon.AuditVerification, error) {
		return pylon.AuditVerification{OK: false, Records: 4, BadSeq: 5, Problem: "hash does not match the record's contents"}, nil
	}
	var v pylon.AuditVerification
	decode(t, f.serve("GET", "/api/v1/audit/verify", "", f.as(pylon.RoleViewer)), 200, &v)
	if v.OK || v.BadSeq != 5 || v.Records != 4 {
		t.Errorf("got %+v", v)
	}
}
