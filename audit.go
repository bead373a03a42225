package pylon

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"
)

// Audit actions. Each state change of the platform writes one record.
const (
	ActionDeviceCreate       = "device.create"
	ActionDeviceUpdate       = "device.update"
	ActionDeviceDelete       = "device.delete"
	ActionDeviceActivate     = "device.activate"
	ActionDeviceSuspend      = "device.suspend"
	ActionDeviceResume       = "device.resume"
	ActionDeviceDecommission = "device.decommission"
	ActionEnrollTokenCreate  = "enrollment_token.create"
	ActionEnrollTokenUse     = "enrollment_token.use"
	ActionEnrollTokenRevoke  = "enrollment_token.revoke"
	ActionCertIssue          = "certificate.issue"
	ActionCertRenew          = "certificate.renew"
	ActionCertRevoke         = "certificate.revoke"
	ActionCertSupersede      = "certificate.supersede"
	ActionAPITokenCreate     = "api_token.create"
	ActionAPITokenRevoke     = "api_token.revoke"
	ActionAuthFailed         = "auth.failed"
	ActionACLDenied          = "mqtt.acl_denied"
	ActionMQTTRefused        = "mqtt.connect_refused"
)

// AuditRecord is one entry of the append-only audit log. Records form a hash
// chain: each Hash covers the record's fields and the previous record's
// Hash, so that changing, removing or reordering a record breaks the chain
// from there on.
type AuditRecord struct {
	Seq      int64           `json:"seq"` // 1, 2, 3, ...
	Time     time.Time       `json:"time"`
	Actor    string          `json:"actor"`  // Principal.Actor()
	Action   string          `json:"action"` // one of the Action constants
	Object   string          `json:"object"` // "device:ID", "certificate:SERIAL", ...
	Details  json.RawMessage `json:"details,omitempty"`
	PrevHash string          `json:"prev_hash"` // hex; "" for the first record
	Hash     string          `json:"hash"`      // hex SHA-256
}

// ComputeHash returns the hex SHA-256 of the record's canonical encoding:
// each of Seq, Time (UTC, nanoseconds since the epoch), Actor, Action,
// Object, Details and PrevHash, length-prefixed, in that order. Stores call
// it with PrevHash set to the previous record's Hash.
func (r *AuditRecord) ComputeHash() string {
	h := sha256.New()
	var n [8]byte
	field := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	var seq, at [8]byte
	binary.BigEndian.PutUint64(seq[:], uint64(r.Seq))
	field(seq[:])
	binary.BigEndian.PutUint64(at[:], uint64(r.Time.UTC().UnixNano()))
	field(at[:])
	field([]byte(r.Actor))
	field([]byte(r.Action))
	field([]byte(r.Object))
	field(r.Details)
	field([]byte(r.PrevHash))
	return hex.EncodeToString(h.Sum(nil))
}

// AuditFilter selects audit records. Zero fields do not filter.
type AuditFilter struct {
	Actor  string
	Object string // exact, or a prefix ending in ':' ("device:")
	Action string
	Since  *time.Time
	Until  *time.Time
	After  int64 // records with Seq greater than this, for paging
	Limit  int   // 100 if 0, at most 1000
	Desc   bool  // newest first
}

// AuditVerification is the result of checking the chain.
type AuditVerification struct {
	OK      bool   `json:"ok"`
	Records int64  `json:"records"`           // how many were checked
	BadSeq  int64  `json:"bad_seq,omitempty"` // first broken record
	Problem string `json:"problem,omitempty"` // what is wrong with it
	Head    string `json:"head,omitempty"`    // Hash of the last intact record; keep it to detect truncation later
}

// AuditService reads and appends the audit log.
type AuditService interface {
	// AppendAudit appends a record for an event that is not itself a store
	// mutation (a failed login, aggregated ACL denials). Seq, PrevHash and
	// Hash are set by the store; Time if zero; Actor from ctx if empty.
	AppendAudit(ctx context.Context, r *AuditRecord) error

	// FindAuditRecords returns matching records in Seq order.
	FindAuditRecords(ctx context.Context, filter AuditFilter) ([]*AuditRecord, error)

	// VerifyAudit recomputes the chain from the first record and reports the
	// first record whose Seq, PrevHash or Hash does not match.
	VerifyAudit(ctx context.Context) (AuditVerification, error)
}

// VerifyAuditChain checks records, which must start at Seq first and follow
// prev (the Hash of the record before, "" at the start). It returns the
// verification so far and the last hash, so that stores can verify in
// batches.
func VerifyAuditChain(records []*AuditRecord, prev string, v *AuditVerification) (string, bool) {
	for _, r := range records {
		want := v.Records + 1
		switch {
		case r.Seq != want:
			v.OK, v.BadSeq, v.Problem = false, r.Seq, "sequence gap: expected record "+itoa(want)
		case r.PrevHash != prev:
			v.OK, v.BadSeq, v.Problem = false, r.Seq, "prev_hash does not match the record before"
		case r.ComputeHash() != r.Hash:
			v.OK, v.BadSeq, v.Problem = false, r.Seq, "hash does not match the record's contents"
		}
		if v.Problem != "" {
			return prev, false
		}
		v.Records++
		prev = r.Hash
		v.Head = prev
	}
	v.OK = true
	return prev, true
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
