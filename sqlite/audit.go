package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
)

// Limits on audit records written through AppendAudit and on filters.
const (
	maxAuditActorLen   = 256
	maxAuditActionLen  = 64
	maxAuditObjectLen  = 256
	maxAuditDetailsLen = 4 << 10
	defaultAuditLimit  = 100
	maxAuditLimit      = 1000
	auditVerifyBatch   = 1000
)

// The span of times an audit record may carry: AuditRecord.ComputeHash uses
// nanoseconds since the epoch in an int64.
var (
	minAuditTime = time.Unix(0, 0)
	maxAuditTime = time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)
)

// details is the Details object of an audit record. encoding/json sorts
// map keys, so the encoding is deterministic.
type details map[string]any

// audit appends a record for a mutation made in tx, with the principal in
// ctx as actor and the transaction's time.
func (tx *Tx) audit(ctx context.Context, action, object string, d details) error {
	r := &pylon.AuditRecord{
		Time:   tx.now,
		Actor:  pylon.PrincipalFromContext(ctx).Actor(),
		Action: action,
		Object: object,
	}
	if d != nil {
		b, err := json.Marshal(d)
		if err != nil {
			return fmt.Errorf("encode audit details: %w", err)
		}
		r.Details = b
	}
	return tx.appendAudit(ctx, r)
}

// appendAudit sets r's Seq, PrevHash and Hash from the last record and
// inserts it. The caller holds the write transaction, so no other record
// can be appended in between.
func (tx *Tx) appendAudit(ctx context.Context, r *pylon.AuditRecord) error {
	var (
		seq  int64
		prev string
	)
	if tx.auditHead != nil {
		seq, prev = tx.auditHead.seq, tx.auditHead.hash
	} else {
		err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`).Scan(&seq, &prev)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("read last audit record: %w", err)
		}
	}
	r.Seq = seq + 1
	r.PrevHash = prev
	r.Time = r.Time.UTC()
	r.Hash = r.ComputeHash()
	var d any
	if len(r.Details) > 0 {
		d = string(r.Details)
	}
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO audit (seq, time, actor, action, object, details, prev_hash, hash)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		r.Seq, timeArg(r.Time), r.Actor, r.Action, r.Object, d, r.PrevHash, r.Hash,
	); err != nil {
		tx.auditHead = nil
		return fmt.Errorf("insert audit record: %w", err)
	}
	tx.auditHead = &auditHead{seq: r.Seq, hash: r.Hash}
	return nil
}

// auditHead is the last audit record written in a transaction, so that a
// transaction appending several records reads the chain's head only once.
type auditHead struct {
	seq  int64
	hash string
}

// AuditService reads and appends the audit log.
type AuditService struct {
	db *DB
}

var _ pylon.AuditService = (*AuditService)(nil)

// NewAuditService returns an AuditService on db.
func NewAuditService(db *DB) *AuditService {
	return &AuditService{db: db}
}

// AppendAudit appends r, setting its Seq, PrevHash and Hash; its Time if
// zero, and its Actor from ctx if empty. Returns EINVALID for a record out
// of bounds (action required, details a small JSON object).
func (s *AuditService) AppendAudit(ctx context.Context, r *pylon.AuditRecord) error {
	if r == nil {
		return pylon.Errorf(pylon.EINVALID, "audit record required")
	}
	rec := *r
	if rec.Actor == "" {
		rec.Actor = pylon.PrincipalFromContext(ctx).Actor()
	}
	switch {
	case rec.Action == "":
		return pylon.Errorf(pylon.EINVALID, "action: required")
	case len(rec.Action) > maxAuditActionLen:
		return pylon.Errorf(pylon.EINVALID, "action: longer than %d bytes", maxAuditActionLen)
	case len(rec.Actor) > maxAuditActorLen:
		return pylon.Errorf(pylon.EINVALID, "actor: longer than %d bytes", maxAuditActorLen)
	case len(rec.Object) > maxAuditObjectLen:
		return pylon.Errorf(pylon.EINVALID, "object: longer than %d bytes", maxAuditObjectLen)
	case len(rec.Details) > maxAuditDetailsLen:
		return pylon.Errorf(pylon.EINVALID, "details: larger than %d bytes", maxAuditDetailsLen)
	}
	if len(rec.Details) > 0 {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(rec.Details, &obj); err != nil || obj == nil {
			return pylon.Errorf(pylon.EINVALID, "details: must be a JSON object")
		}
		rec.Details = bytes.Clone(rec.Details)
	}

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if rec.Time.IsZero() {
		rec.Time = tx.now
	} else if rec.Time.Before(minAuditTime) || !rec.Time.Before(maxAuditTime) {
		return pylon.Errorf(pylon.EINVALID, "time: out of range")
	}
	if err := tx.appendAudit(ctx, &rec); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit audit record: %w", err)
	}
	*r = rec
	return nil
}

const auditColumns = `seq, time, actor, action, object, details, prev_hash, hash`

// scanAudit scans one row of auditColumns.
func scanAudit(rows *sql.Rows) (*pylon.AuditRecord, error) {
	var (
		r       pylon.AuditRecord
		details []byte
	)
	if err := rows.Scan(&r.Seq, timeScanner{&r.Time}, &r.Actor, &r.Action, &r.Object, &details, &r.PrevHash, &r.Hash); err != nil {
		return nil, fmt.Errorf("scan audit record: %w", err)
	}
	if len(details) > 0 {
		r.Details = json.RawMessage(details)
	}
	return &r, nil
}

// FindAuditRecords returns matching records, ascending by Seq unless
// filter.Desc. Object matches exactly, or as a prefix when it ends in ':'.
// Since is inclusive, Until exclusive. Returns EINVALID for an oversized
// filter.
func (s *AuditService) FindAuditRecords(ctx context.Context, filter pylon.AuditFilter) ([]*pylon.AuditRecord, error) {
	if len(filter.Actor) > maxAuditActorLen || len(filter.Object) > maxAuditObjectLen || len(filter.Action) > maxAuditActionLen {
		return nil, pylon.Errorf(pylon.EINVALID, "audit filter: field too long")
	}
	var (
		where []string
		args  []any
	)
	if filter.Actor != "" {
		where, args = append(where, "actor = ?"), append(args, filter.Actor)
	}
	if filter.Object != "" {
		if prefix, ok := strings.CutSuffix(filter.Object, ":"); ok {
			// [prefix+":", prefix+";") is every string starting with
			// prefix+":" (';' follows ':'), and can use the index.
			where, args = append(where, "object >= ? AND object < ?"), append(args, prefix+":", prefix+";")
		} else {
			where, args = append(where, "object = ?"), append(args, filter.Object)
		}
	}
	if filter.Action != "" {
		where, args = append(where, "action = ?"), append(args, filter.Action)
	}
	if filter.Since != nil {
		where, args = append(where, "time >= ?"), append(args, timeArg(*filter.Since))
	}
	if filter.Until != nil {
		where, args = append(where, "time < ?"), append(args, timeArg(*filter.Until))
	}
	if filter.After > 0 {
		where, args = append(where, "seq > ?"), append(args, filter.After)
	}
	q := `SELECT ` + auditColumns + ` FROM audit`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	if filter.Desc {
		q += ` ORDER BY seq DESC`
	} else {
		q += ` ORDER BY seq`
	}
	q += ` LIMIT ?`
	args = append(args, clampLimit(filter.Limit, defaultAuditLimit, maxAuditLimit))

	rows, err := s.db.reader.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query audit records: %w", err)
	}
	defer rows.Close()
	records := []*pylon.AuditRecord{}
	for rows.Next() {
		r, err := scanAudit(rows)
		if err != nil {
			return nil, err
		}
		records = append(records, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query audit records: %w", err)
	}
	return records, nil
}

// VerifyAudit recomputes the hash chain from the first record, in batches,
// on one read snapshot. An empty log verifies.
func (s *AuditService) VerifyAudit(ctx context.Context) (pylon.AuditVerification, error) {
	var v pylon.AuditVerification
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return v, err
	}
	defer tx.Rollback()

	var (
		prev  string
		after int64
	)
	for {
		rows, err := tx.QueryContext(ctx, `SELECT `+auditColumns+` FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`, after, auditVerifyBatch)
		if err != nil {
			return v, fmt.Errorf("read audit records: %w", err)
		}
		batch := make([]*pylon.AuditRecord, 0, auditVerifyBatch)
		for rows.Next() {
			r, err := scanAudit(rows)
			if err != nil {
				rows.Close()
				return v, err
			}
			batch = append(batch, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return v, fmt.Errorf("read audit records: %w", err)
		}
		var ok bool
		if prev, ok = pylon.VerifyAuditChain(batch, prev, &v); !ok {
			s.db.logger.Warn("audit chain broken", "seq", v.BadSeq, "problem", v.Problem)
			return v, nil
		}
		if len(batch) < auditVerifyBatch {
			return v, nil
		}
		after = batch[len(batch)-1].Seq
	}
}
