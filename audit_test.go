package pylon_test

import (
	"testing"
	"time"

	"github.com/pylonhq/pylon"
)

func TestAuditRecordComputeHash_CoversEveryField(t *testing.T) {
	base := pylon.AuditRecord{Seq: 7, Time: time.Unix(1700000000, 5), Actor: "system", Action: "device.create", Object: "device:x", Details: []byte(`{"a":1}`), PrevHash: "ab"}
	h := base.ComputeHash()
	changes := map[string]func(r *pylon.AuditRecord){
		"seq":     func(r *pylon.AuditRecord) { r.Seq++ },
		"time":    func(r *pylon.AuditRecord) { r.Time = r.Time.Add(time.Nanosecond) },
		"actor":   func(r *pylon.AuditRecord) { r.Actor = "token:y" },
		"action":  func(r *pylon.AuditRecord) { r.Action = "device.delete" },
		"object":  func(r *pylon.AuditRecord) { r.Object = "device:y" },
		"details": func(r *pylon.AuditRecord) { r.Details = []byte(`{"a":2}`) },
		"prev":    func(r *pylon.AuditRecord) { r.PrevHash = "ac" },
		// Length prefixes keep field boundaries: moving a byte between fields changes the hash.
		"boundary": func(r *pylon.AuditRecord) { r.Actor, r.Action = "systemd", "evice.create" },
	}
	for name, change := range changes {
		t.Run(name, func(t *testing.T) {
			r := base
			change(&r)
			if got := r.ComputeHash(); got == h {
				t.Fatalf("hash unchanged after changing %s", name)
			}
		})
	}
}

func TestVerifyAuditChain(t *testing.T) {
	var recs []*pylon.AuditRecord
	prev := ""
	for i := int64(1); i <= 3; i++ {
		r := &pylon.AuditRecord{Seq: i, Time: time.Unix(i, 0), Actor: "system", Action: "a", Object: "o", PrevHash: prev}
		r.Hash = r.ComputeHash()
		prev = r.Hash
		recs = append(recs, r)
	}
	var v pylon.AuditVerification
	if _, ok := pylon.VerifyAuditChain(recs, "", &v); !ok || !v.OK || v.Records != 3 || v.Head != recs[2].Hash {
		t.Fatalf("intact chain: got %+v", v)
	}
	recs[1].Time = recs[1].Time.Add(time.Second)
	v = pylon.AuditVerification{}
	if _, ok := pylon.VerifyAuditChain(recs, "", &v); ok || v.BadSeq != 2 {
		t.Fatalf("altered time: got %+v, want broken at 2", v)
	}
}
