package sqlite

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
)

// Limits of certificates.
const (
	maxSerialLen          = 128 // hex digits; RFC 5280 allows 20 octets
	maxReasonLen          = 256
	maxKeyTypeLen         = 64
	maxCertDERLen         = 64 << 10
	defaultCertLimit      = 100
	maxCertLimit          = 1000
	reasonDecommissioned  = "decommissioned"
	reasonSuperseded      = "superseded"
	defaultRevokeReason   = "unspecified"
	revokeReasonDeleted   = "device deleted"
	errInvalidEnrollToken = "invalid or expired enrollment token"
)

// CertificateService stores issued certificates.
type CertificateService struct {
	db *DB
}

var _ pylon.CertificateService = (*CertificateService)(nil)

// NewCertificateService returns a CertificateService on db.
func NewCertificateService(db *DB) *CertificateService {
	return &CertificateService{db: db}
}

const certColumns = `serial, device_id, not_before, not_after, status, revoked_at, reason, key_type, der, created_at`

// scanCertificate scans one row of certColumns.
func scanCertificate(row rowScanner) (*pylon.Certificate, error) {
	var (
		c      pylon.Certificate
		status string
	)
	if err := row.Scan(&c.Serial, &c.DeviceID, timeScanner{&c.NotBefore}, timeScanner{&c.NotAfter}, &status,
		nullTimeScanner{&c.RevokedAt}, &c.Reason, &c.KeyType, &c.DER, timeScanner{&c.CreatedAt}); err != nil {
		return nil, err
	}
	c.Status = pylon.CertStatus(status)
	return &c, nil
}

// queryCertificates runs a query of certColumns.
func queryCertificates(ctx context.Context, q queryer, query string, args ...any) ([]*pylon.Certificate, error) {
	return queryAll(ctx, q, "certificates", scanCertificate, query, args...)
}

// findCertificate returns the certificate with serial, or ENOTFOUND.
func findCertificate(ctx context.Context, q queryer, serial string) (*pylon.Certificate, error) {
	if serial == "" || len(serial) > maxSerialLen {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "certificate not found")
	}
	c, err := scanCertificate(q.QueryRowContext(ctx, `SELECT `+certColumns+` FROM certificates WHERE serial = ?`, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "certificate not found")
	} else if err != nil {
		return nil, fmt.Errorf("find certificate: %w", err)
	}
	return c, nil
}

// FindCertificateBySerial returns the certificate. Returns ENOTFOUND.
func (s *CertificateService) FindCertificateBySerial(ctx context.Context, serial string) (*pylon.Certificate, error) {
	return findCertificate(ctx, s.db.reader, serial)
}

// FindCertificates returns matching certificates, newest first. Returns
// EINVALID for an unknown status.
func (s *CertificateService) FindCertificates(ctx context.Context, filter pylon.CertificateFilter) ([]*pylon.Certificate, error) {
	var (
		where []string
		args  []any
	)
	if filter.DeviceID != nil {
		where, args = append(where, "device_id = ?"), append(args, *filter.DeviceID)
	}
	if filter.Status != nil {
		switch *filter.Status {
		case pylon.CertValid, pylon.CertSuperseded, pylon.CertRevoked:
		default:
			return nil, pylon.Errorf(pylon.EINVALID, "status: unknown status")
		}
		where, args = append(where, "status = ?"), append(args, string(*filter.Status))
	}
	q := `SELECT ` + certColumns + ` FROM certificates`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY seq DESC LIMIT ?`
	args = append(args, clampLimit(filter.Limit, defaultCertLimit, maxCertLimit))
	return queryCertificates(ctx, s.db.reader, q, args...)
}

// setCertStatus marks a certificate revoked or superseded at tx.now.
func setCertStatus(ctx context.Context, tx *Tx, c *pylon.Certificate, status pylon.CertStatus, reason string) error {
	if _, err := tx.ExecContext(ctx, `UPDATE certificates SET status = ?, revoked_at = ?, reason = ? WHERE serial = ?`,
		string(status), timeArg(tx.now), reason, c.Serial); err != nil {
		return fmt.Errorf("update certificate status: %w", err)
	}
	now := tx.now
	c.Status, c.RevokedAt, c.Reason = status, &now, reason
	return nil
}

// revokeCertificate revokes c with its audit record.
func revokeCertificate(ctx context.Context, tx *Tx, c *pylon.Certificate, reason string) error {
	if err := setCertStatus(ctx, tx, c, pylon.CertRevoked, reason); err != nil {
		return err
	}
	return tx.audit(ctx, pylon.ActionCertRevoke, "certificate:"+c.Serial, details{"device_id": c.DeviceID, "reason": reason})
}

// revokeDeviceCertificates revokes every certificate of the device that is
// not revoked yet.
func revokeDeviceCertificates(ctx context.Context, tx *Tx, deviceID, reason string) error {
	certs, err := queryCertificates(ctx, tx, `SELECT `+certColumns+` FROM certificates WHERE device_id = ? AND status != 'revoked' ORDER BY seq`, deviceID)
	if err != nil {
		return err
	}
	for _, c := range certs {
		if err := revokeCertificate(ctx, tx, c, reason); err != nil {
			return err
		}
	}
	return nil
}

// RevokeCertificate revokes the certificate for reason ("unspecified" if
// empty). Revoking a revoked certificate is a no-op. Returns ENOTFOUND and
// EINVALID (reason too long).
func (s *CertificateService) RevokeCertificate(ctx context.Context, serial, reason string) (*pylon.Certificate, error) {
	if len(reason) > maxReasonLen {
		return nil, pylon.Errorf(pylon.EINVALID, "reason: longer than %d bytes", maxReasonLen)
	} else if reason == "" {
		reason = defaultRevokeReason
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()

	c, err := findCertificate(ctx, tx, serial)
	if err != nil {
		return nil, err
	}
	if c.Status == pylon.CertRevoked {
		return c, nil
	}
	if err := revokeCertificate(ctx, tx, c, reason); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit certificate revoke: %w", err)
	}
	return c, nil
}

// FindRevokedCertificates returns the revoked and superseded certificates
// that have not expired at now, oldest first.
func (s *CertificateService) FindRevokedCertificates(ctx context.Context, now time.Time) ([]*pylon.Certificate, error) {
	return queryCertificates(ctx, s.db.reader,
		`SELECT `+certColumns+` FROM certificates WHERE status IN ('revoked', 'superseded') AND not_after > ? ORDER BY seq`,
		timeArg(now))
}

// DeleteExpiredCertificates deletes the certificates that expired before
// before, in chunks (see deleteChunked).
func (s *CertificateService) DeleteExpiredCertificates(ctx context.Context, before time.Time) (int64, error) {
	// certificates_status_idx (status, not_after) finds them.
	n, err := s.db.deleteChunked(ctx, `DELETE FROM certificates WHERE seq IN (
		SELECT seq FROM certificates WHERE status IN ('valid', 'superseded', 'revoked') AND not_after < ? LIMIT ?)`,
		timeArg(before))
	if err != nil {
		return n, fmt.Errorf("delete expired certificates: %w", err)
	}
	return n, nil
}

// checkConnection returns the device if the certificate with serial
// belongs to deviceID, is usable at now and the device is active.
func checkConnection(ctx context.Context, q queryer, deviceID, serial string, now time.Time) (*pylon.Device, error) {
	c, err := findCertificate(ctx, q, serial)
	if pylon.ErrorCode(err) == pylon.ENOTFOUND {
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "unknown certificate")
	} else if err != nil {
		return nil, err
	}
	switch {
	case c.DeviceID != deviceID:
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "certificate does not belong to the device")
	case c.Status == pylon.CertRevoked:
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "certificate revoked")
	case c.Status == pylon.CertSuperseded:
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "certificate superseded")
	case now.Before(c.NotBefore):
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "certificate not yet valid")
	case !c.Usable(now):
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "certificate expired")
	}
	d, _, err := findDevice(ctx, q, deviceID)
	if pylon.ErrorCode(err) == pylon.ENOTFOUND {
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "unknown certificate")
	} else if err != nil {
		return nil, err
	}
	if err := deviceUsable(d); err != nil {
		return nil, err
	}
	return d, nil
}

// deviceUsable returns EFORBIDDEN unless d is active.
func deviceUsable(d *pylon.Device) error {
	switch d.State {
	case pylon.DeviceActive:
		return nil
	case pylon.DeviceSuspended:
		return pylon.Errorf(pylon.EFORBIDDEN, "device suspended")
	case pylon.DeviceDecommissioned:
		return pylon.Errorf(pylon.EFORBIDDEN, "device decommissioned")
	}
	return pylon.Errorf(pylon.EFORBIDDEN, "device not active")
}

// olderValid is the query of the device's valid certificates issued
// before the one given (?1: device ID, ?2: its serial). Issue order is
// the table's seq: not_before has a resolution of one second, and a
// device may renew twice in one.
const olderValid = `SELECT ` + certColumns + ` FROM certificates
	WHERE device_id = ?1 AND status = 'valid'
		AND seq < (SELECT c.seq FROM certificates c WHERE c.serial = ?2) ORDER BY seq`

// AuthorizeConnection checks that the certificate with serial belongs to
// deviceID, is usable at now, and that the device is active. On success it
// marks the device's older valid certificates superseded. Returns
// EUNAUTHORIZED (unknown, revoked, superseded, expired certificate) or
// EFORBIDDEN (device not active).
func (s *CertificateService) AuthorizeConnection(ctx context.Context, deviceID, serial string, now time.Time) (*pylon.Device, error) {
	// The common case (nothing to supersede) needs no write transaction.
	d, err := checkConnection(ctx, s.db.reader, deviceID, serial, now)
	if err != nil {
		return nil, err
	}
	var n int
	if err := s.db.reader.QueryRowContext(ctx, `SELECT COUNT(*) FROM (`+olderValid+`)`, deviceID, serial).Scan(&n); err != nil {
		return nil, fmt.Errorf("count older certificates: %w", err)
	} else if n == 0 {
		return d, nil
	}

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	if d, err = checkConnection(ctx, tx, deviceID, serial, now); err != nil {
		return nil, err
	}
	older, err := queryCertificates(ctx, tx, olderValid, deviceID, serial)
	if err != nil {
		return nil, err
	}
	for _, o := range older {
		if err := setCertStatus(ctx, tx, o, pylon.CertSuperseded, reasonSuperseded); err != nil {
			return nil, err
		}
		if err := tx.audit(ctx, pylon.ActionCertSupersede, "certificate:"+o.Serial, details{"device_id": deviceID, "by": serial}); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit supersede: %w", err)
	}
	s.db.logger.Info("superseded certificates", "device", deviceID, "count", len(older))
	return d, nil
}

// EnrollmentTokenService stores enrollment tokens.
type EnrollmentTokenService struct {
	db *DB
}

var _ pylon.EnrollmentTokenService = (*EnrollmentTokenService)(nil)

// NewEnrollmentTokenService returns an EnrollmentTokenService on db.
func NewEnrollmentTokenService(db *DB) *EnrollmentTokenService {
	return &EnrollmentTokenService{db: db}
}

// CreateEnrollmentToken stores t, whose ID the caller set (see
// pylon.NewSecret), with the hash of its secret, and sets its Used,
// CreatedAt and CreatedBy. A device token (DeviceID set) has no labels and
// one use; a fleet token has 1 to MaxEnrollmentUses. Returns EINVALID,
// ENOTFOUND (no such device), ECONFLICT (device decommissioned, id taken).
func (s *EnrollmentTokenService) CreateEnrollmentToken(ctx context.Context, t *pylon.EnrollmentToken, secretHash []byte) error {
	switch {
	case t == nil:
		return pylon.Errorf(pylon.EINVALID, "enrollment token required")
	case !pylon.ValidID(t.ID):
		return pylon.Errorf(pylon.EINVALID, "id: invalid")
	case len(secretHash) != sha256.Size:
		return pylon.Errorf(pylon.EINVALID, "secret hash: must be %d bytes", sha256.Size)
	case t.DeviceID != "" && len(t.Labels) > 0:
		return pylon.Errorf(pylon.EINVALID, "labels: only for fleet tokens, not with a device")
	case t.Uses < 1 || t.Uses > pylon.MaxEnrollmentUses:
		return pylon.Errorf(pylon.EINVALID, "uses: must be 1 to %d", pylon.MaxEnrollmentUses)
	case t.DeviceID != "" && t.Uses != 1:
		return pylon.Errorf(pylon.EINVALID, "uses: must be 1 for a device token")
	case t.RevokedAt != nil:
		return pylon.Errorf(pylon.EINVALID, "revoked_at: must be empty")
	}
	if err := pylon.ValidateLabels(t.Labels); err != nil {
		return err
	}

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if !t.ExpiresAt.After(tx.now) {
		return pylon.Errorf(pylon.EINVALID, "expires_at: must be in the future")
	} else if t.ExpiresAt.Sub(tx.now) > pylon.MaxEnrollmentTTL {
		return pylon.Errorf(pylon.EINVALID, "expires_at: more than %s ahead", pylon.MaxEnrollmentTTL)
	}
	det := details{"uses": t.Uses, "expires_at": t.ExpiresAt.UTC()}
	var deviceID any
	if t.DeviceID != "" {
		d, _, err := findDevice(ctx, tx, t.DeviceID)
		if err != nil {
			return err
		} else if d.State == pylon.DeviceDecommissioned {
			return pylon.Errorf(pylon.ECONFLICT, "device is decommissioned")
		}
		deviceID, det["device_id"] = t.DeviceID, t.DeviceID
	} else {
		det["labels"] = copyLabels(t.Labels)
	}
	nt := *t
	nt.Labels = nil
	if t.DeviceID == "" {
		nt.Labels = copyLabels(t.Labels)
	}
	nt.Used = 0
	nt.ExpiresAt = t.ExpiresAt.UTC()
	nt.CreatedAt = tx.now
	nt.CreatedBy = pylon.PrincipalFromContext(ctx).Actor()
	labels, err := encodeLabels(nt.Labels)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `
		INSERT INTO enrollment_tokens (id, hash, device_id, labels, uses, used, expires_at, created_at, created_by)
		VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)`,
		nt.ID, secretHash, deviceID, labels, nt.Uses, timeArg(nt.ExpiresAt), timeArg(nt.CreatedAt), nt.CreatedBy)
	if isUniqueViolation(err) {
		return pylon.Errorf(pylon.ECONFLICT, "enrollment token already exists")
	} else if err != nil {
		return fmt.Errorf("insert enrollment token: %w", err)
	}
	if err := tx.audit(ctx, pylon.ActionEnrollTokenCreate, "enrollment_token:"+nt.ID, det); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit enrollment token: %w", err)
	}
	*t = nt
	return nil
}

const enrollTokenColumns = `id, device_id, labels, uses, used, expires_at, revoked_at, created_at, created_by`

// scanEnrollToken scans enrollTokenColumns, and the hash if hash is not nil.
func scanEnrollToken(row rowScanner, hash *[]byte) (*pylon.EnrollmentToken, error) {
	var (
		t        pylon.EnrollmentToken
		deviceID sql.NullString
		labels   string
	)
	dest := []any{&t.ID, &deviceID, &labels, &t.Uses, &t.Used, timeScanner{&t.ExpiresAt},
		nullTimeScanner{&t.RevokedAt}, timeScanner{&t.CreatedAt}, &t.CreatedBy}
	if hash != nil {
		dest = append(dest, hash)
	}
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	t.DeviceID = deviceID.String
	if t.DeviceID == "" {
		var err error
		if t.Labels, err = decodeLabels(labels); err != nil {
			return nil, err
		}
	}
	return &t, nil
}

// FindEnrollmentTokens returns tokens, newest first; with live set, only
// those usable now.
func (s *EnrollmentTokenService) FindEnrollmentTokens(ctx context.Context, live bool) ([]*pylon.EnrollmentToken, error) {
	q := `SELECT ` + enrollTokenColumns + ` FROM enrollment_tokens`
	var args []any
	if live {
		q += ` WHERE revoked_at IS NULL AND used < uses AND expires_at > ?`
		args = append(args, timeArg(s.db.now()))
	}
	q += ` ORDER BY seq DESC`
	scan := func(row rowScanner) (*pylon.EnrollmentToken, error) { return scanEnrollToken(row, nil) }
	return queryAll(ctx, s.db.reader, "enrollment tokens", scan, q, args...)
}

// findEnrollToken returns the token with id, or ENOTFOUND.
func findEnrollToken(ctx context.Context, q queryer, id string, hash *[]byte) (*pylon.EnrollmentToken, error) {
	if !pylon.ValidID(id) {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "enrollment token not found")
	}
	cols := enrollTokenColumns
	if hash != nil {
		cols += `, hash`
	}
	t, err := scanEnrollToken(q.QueryRowContext(ctx, `SELECT `+cols+` FROM enrollment_tokens WHERE id = ?`, id), hash)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "enrollment token not found")
	} else if err != nil {
		return nil, fmt.Errorf("find enrollment token: %w", err)
	}
	return t, nil
}

// FindEnrollmentTokenByID returns the token. Returns ENOTFOUND.
func (s *EnrollmentTokenService) FindEnrollmentTokenByID(ctx context.Context, id string) (*pylon.EnrollmentToken, error) {
	return findEnrollToken(ctx, s.db.reader, id, nil)
}

// RevokeEnrollmentToken revokes the token; revoking a revoked token changes
// nothing. Returns ENOTFOUND.
func (s *EnrollmentTokenService) RevokeEnrollmentToken(ctx context.Context, id string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	t, err := findEnrollToken(ctx, tx, id, nil)
	if err != nil {
		return err
	}
	if t.RevokedAt != nil {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE enrollment_tokens SET revoked_at = ? WHERE id = ?`, timeArg(tx.now), id); err != nil {
		return fmt.Errorf("revoke enrollment token: %w", err)
	}
	if err := tx.audit(ctx, pylon.ActionEnrollTokenRevoke, "enrollment_token:"+id, details{"used": t.Used, "uses": t.Uses}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit enrollment token revoke: %w", err)
	}
	return nil
}

// EnrollmentStore performs the store side of enrollment, each call in one
// write transaction.
type EnrollmentStore struct {
	db *DB
}

var _ pylon.EnrollmentStore = (*EnrollmentStore)(nil)

// NewEnrollmentStore returns an EnrollmentStore on db.
func NewEnrollmentStore(db *DB) *EnrollmentStore {
	return &EnrollmentStore{db: db}
}

// issueCertificate calls issue for d, checks the result and records it.
func issueCertificate(ctx context.Context, tx *Tx, d *pylon.Device, issue pylon.IssueFunc) (*pylon.Certificate, error) {
	if issue == nil {
		return nil, fmt.Errorf("issue certificate: no issue function")
	}
	dc := *d
	dc.Labels = copyLabels(d.Labels)
	c, err := issue(&dc)
	if err != nil {
		return nil, err
	}
	switch {
	case c == nil:
		return nil, fmt.Errorf("issue certificate: no certificate")
	case c.Serial == "" || len(c.Serial) > maxSerialLen || strings.Trim(c.Serial, "0123456789abcdef") != "":
		return nil, fmt.Errorf("issue certificate: serial %q is not lower-case hex", truncate(c.Serial, maxSerialLen))
	case c.DeviceID != "" && c.DeviceID != d.ID:
		return nil, fmt.Errorf("issue certificate: issued for device %q, want %q", c.DeviceID, d.ID)
	case !c.NotAfter.After(c.NotBefore):
		return nil, fmt.Errorf("issue certificate: not_after is not after not_before")
	case len(c.DER) == 0 || len(c.DER) > maxCertDERLen:
		return nil, fmt.Errorf("issue certificate: DER of %d bytes", len(c.DER))
	case len(c.KeyType) > maxKeyTypeLen:
		return nil, fmt.Errorf("issue certificate: key type too long")
	}
	nc := *c
	nc.DeviceID = d.ID
	nc.Status = pylon.CertValid
	nc.RevokedAt, nc.Reason = nil, ""
	nc.NotBefore, nc.NotAfter = c.NotBefore.UTC(), c.NotAfter.UTC()
	nc.CreatedAt = tx.now
	nc.DER = slices.Clone(c.DER)
	_, err = tx.ExecContext(ctx, `
		INSERT INTO certificates (serial, device_id, not_before, not_after, status, reason, key_type, der, created_at)
		VALUES (?, ?, ?, ?, 'valid', '', ?, ?, ?)`,
		nc.Serial, nc.DeviceID, timeArg(nc.NotBefore), timeArg(nc.NotAfter), nc.KeyType, nc.DER, timeArg(nc.CreatedAt))
	if isUniqueViolation(err) {
		return nil, fmt.Errorf("issue certificate: serial %s already recorded", nc.Serial)
	} else if err != nil {
		return nil, fmt.Errorf("insert certificate: %w", err)
	}
	return &nc, nil
}

// Enroll consumes one use of the live enrollment token tokenID whose hash
// equals secretHash, finds its device or, for a fleet token, creates one
// named commonName with the token's labels, calls issue, records the
// certificate, activates a registered device and writes the audit records,
// all in one write transaction. Returns EUNAUTHORIZED (unknown, expired,
// revoked or used-up token, all alike), EFORBIDDEN (device suspended or
// decommissioned), EINVALID (bad common name), ECONFLICT (a device of that
// name exists), or the error of issue.
func (s *EnrollmentStore) Enroll(ctx context.Context, tokenID string, secretHash []byte, commonName string, issue pylon.IssueFunc) (*pylon.Device, *pylon.Certificate, error) {
	if len(secretHash) != sha256.Size {
		return nil, nil, pylon.Errorf(pylon.EUNAUTHORIZED, errInvalidEnrollToken)
	}
	// Enrollments are small writes that arrive in bursts (a fleet coming
	// online): they share transactions through the group committer.
	var (
		d *pylon.Device
		c *pylon.Certificate
		t *pylon.EnrollmentToken
	)
	err := s.db.runBatched(ctx, func(ctx context.Context, tx *Tx) (err error) {
		d, c, t, err = enroll(ctx, tx, tokenID, secretHash, commonName, issue)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	s.db.logger.Info("enrolled device", "device", d.ID, "serial", c.Serial, "token", t.ID)
	return d, c, nil
}

// enroll is Enroll inside the caller's transaction.
func enroll(ctx context.Context, tx *Tx, tokenID string, secretHash []byte, commonName string, issue pylon.IssueFunc) (*pylon.Device, *pylon.Certificate, *pylon.EnrollmentToken, error) {
	invalid := pylon.Errorf(pylon.EUNAUTHORIZED, errInvalidEnrollToken)
	var stored []byte
	t, err := findEnrollToken(ctx, tx, tokenID, &stored)
	if pylon.ErrorCode(err) == pylon.ENOTFOUND {
		subtle.ConstantTimeCompare(make([]byte, sha256.Size), secretHash)
		return nil, nil, nil, invalid
	} else if err != nil {
		return nil, nil, nil, err
	}
	if subtle.ConstantTimeCompare(stored, secretHash) != 1 || !t.Live(tx.now) {
		return nil, nil, nil, invalid
	}

	var d *pylon.Device
	if t.DeviceID != "" {
		if d, _, err = findDevice(ctx, tx, t.DeviceID); err != nil {
			return nil, nil, nil, err
		}
		switch d.State {
		case pylon.DeviceDecommissioned:
			return nil, nil, nil, pylon.Errorf(pylon.EFORBIDDEN, "device is decommissioned")
		case pylon.DeviceSuspended:
			return nil, nil, nil, pylon.Errorf(pylon.EFORBIDDEN, "device is suspended")
		}
	} else {
		if err := pylon.ValidateDeviceName(commonName); err != nil {
			return nil, nil, nil, err
		}
		d = &pylon.Device{Name: commonName, Labels: copyLabels(t.Labels)}
		if err := createDevice(ctx, tx, d); err != nil {
			return nil, nil, nil, err
		}
	}

	c, err := issueCertificate(ctx, tx, d, issue)
	if err != nil {
		return nil, nil, nil, err
	}
	res, err := tx.ExecContext(ctx, `UPDATE enrollment_tokens SET used = used + 1 WHERE id = ? AND used < uses AND revoked_at IS NULL`, t.ID)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("use enrollment token: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return nil, nil, nil, fmt.Errorf("use enrollment token: %w", err)
	} else if n != 1 {
		return nil, nil, nil, invalid
	}
	if err := tx.audit(ctx, pylon.ActionEnrollTokenUse, "enrollment_token:"+t.ID,
		details{"device_id": d.ID, "used": t.Used + 1, "uses": t.Uses}); err != nil {
		return nil, nil, nil, err
	}
	if err := tx.audit(ctx, pylon.ActionCertIssue, "certificate:"+c.Serial,
		details{"device_id": d.ID, "key_type": c.KeyType, "not_after": c.NotAfter, "enrollment_token": t.ID}); err != nil {
		return nil, nil, nil, err
	}
	if d.State == pylon.DeviceRegistered {
		if err := transition(ctx, tx, d, pylon.DeviceActive); err != nil {
			return nil, nil, nil, err
		}
	}
	return d, c, t, nil
}

// unusableReason says why c is not usable at now.
func unusableReason(c *pylon.Certificate, now time.Time) string {
	switch {
	case c.Status == pylon.CertRevoked && (c.Reason == reasonDecommissioned || c.Reason == revokeReasonDeleted):
		return "revoked (" + c.Reason + ")"
	case c.Status == pylon.CertRevoked:
		// An operator's reason is free text, not for whoever holds the
		// certificate (perhaps who stole its key).
		return "revoked"
	case c.Status == pylon.CertSuperseded:
		return "superseded: the device has connected with a newer certificate, renew with that one"
	case now.Before(c.NotBefore):
		return "not valid yet"
	}
	return "expired at " + c.NotAfter.UTC().Format(time.RFC3339) + ": enroll again with a new token"
}

// Reenroll renews for the holder of the certificate with serial, which
// must be usable now, of an active device: it calls issue, records the new
// certificate and audits certificate.renew in one transaction. The old
// certificate stays valid until the device connects with the new one (see
// AuthorizeConnection). Returns EFORBIDDEN otherwise, or the error of
// issue.
func (s *EnrollmentStore) Reenroll(ctx context.Context, serial string, issue pylon.IssueFunc) (*pylon.Device, *pylon.Certificate, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, err
	}
	defer tx.Rollback()

	old, err := findCertificate(ctx, tx, serial)
	if pylon.ErrorCode(err) == pylon.ENOTFOUND {
		return nil, nil, pylon.Errorf(pylon.EFORBIDDEN, "certificate not valid for renewal")
	} else if err != nil {
		return nil, nil, err
	}
	if !old.Usable(tx.now) {
		return nil, nil, pylon.Errorf(pylon.EFORBIDDEN, "certificate not valid for renewal: %s", unusableReason(old, tx.now))
	}
	d, _, err := findDevice(ctx, tx, old.DeviceID)
	if err != nil {
		return nil, nil, err
	}
	switch d.State {
	case pylon.DeviceActive:
	case pylon.DeviceSuspended:
		return nil, nil, pylon.Errorf(pylon.EFORBIDDEN, "device is suspended")
	case pylon.DeviceDecommissioned:
		return nil, nil, pylon.Errorf(pylon.EFORBIDDEN, "device is decommissioned")
	default:
		return nil, nil, pylon.Errorf(pylon.EFORBIDDEN, "device is not active")
	}
	c, err := issueCertificate(ctx, tx, d, issue)
	if err != nil {
		return nil, nil, err
	}
	if err := tx.audit(ctx, pylon.ActionCertRenew, "certificate:"+c.Serial,
		details{"device_id": d.ID, "old_serial": old.Serial, "key_type": c.KeyType, "not_after": c.NotAfter}); err != nil {
		return nil, nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, nil, fmt.Errorf("commit reenrollment: %w", err)
	}
	s.db.logger.Info("renewed certificate", "device", d.ID, "serial", c.Serial, "old_serial", old.Serial)
	return d, c, nil
}
