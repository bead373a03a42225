package sqlite

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pylonhq/pylon"
)

// Limits of API tokens.
const (
	maxAPITokenNameLen = 64
	// lastUsedInterval is how stale an API token's last_used_at may get:
	// recording every request would make every read a write.
	lastUsedInterval = time.Minute
)

// APITokenService stores API tokens.
type APITokenService struct {
	db *DB
}

var _ pylon.APITokenService = (*APITokenService)(nil)

// NewAPITokenService returns an APITokenService on db.
func NewAPITokenService(db *DB) *APITokenService {
	return &APITokenService{db: db}
}

// errInvalidCredentials is the one error of every failed authentication.
func errInvalidCredentials() error { return pylon.Errorf(pylon.EUNAUTHORIZED, "invalid credentials") }

// validateTokenName returns EINVALID unless name is 1 to 64 bytes of
// printable UTF-8 without leading or trailing space.
func validateTokenName(name string) error {
	switch {
	case name == "":
		return pylon.Errorf(pylon.EINVALID, "name: required")
	case len(name) > maxAPITokenNameLen:
		return pylon.Errorf(pylon.EINVALID, "name: longer than %d bytes", maxAPITokenNameLen)
	case !utf8.ValidString(name):
		return pylon.Errorf(pylon.EINVALID, "name: not valid UTF-8")
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return pylon.Errorf(pylon.EINVALID, "name: contains a control or non-printable character")
		}
	}
	if unicode.IsSpace(rune(name[0])) || unicode.IsSpace(rune(name[len(name)-1])) {
		return pylon.Errorf(pylon.EINVALID, "name: leading or trailing space")
	}
	return nil
}

// CreateAPIToken stores t, whose ID the caller set (see pylon.NewSecret),
// with the SHA-256 hash of its secret, and sets its CreatedAt. Returns
// EINVALID (bad id, name, role, hash or expiry) and ECONFLICT (id taken).
func (s *APITokenService) CreateAPIToken(ctx context.Context, t *pylon.APIToken, secretHash []byte) error {
	switch {
	case t == nil:
		return pylon.Errorf(pylon.EINVALID, "api token required")
	case !pylon.ValidID(t.ID):
		return pylon.Errorf(pylon.EINVALID, "id: invalid")
	case len(secretHash) != sha256.Size:
		return pylon.Errorf(pylon.EINVALID, "secret hash: must be %d bytes", sha256.Size)
	case !t.Role.Valid():
		return pylon.Errorf(pylon.EINVALID, "role: must be admin, operator or viewer")
	}
	if err := validateTokenName(t.Name); err != nil {
		return err
	}

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if t.ExpiresAt != nil && !t.ExpiresAt.After(tx.now) {
		return pylon.Errorf(pylon.EINVALID, "expires_at: must be in the future")
	}
	nt := *t
	nt.CreatedAt = tx.now
	nt.LastUsedAt, nt.RevokedAt = nil, nil
	if t.ExpiresAt != nil {
		e := t.ExpiresAt.UTC()
		nt.ExpiresAt = &e
	}
	_, err = tx.ExecContext(ctx, `
		INSERT INTO api_tokens (id, name, role, hash, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?)`,
		nt.ID, nt.Name, string(nt.Role), secretHash, timeArg(nt.CreatedAt), nullTimeArg(nt.ExpiresAt))
	if isUniqueViolation(err) {
		return pylon.Errorf(pylon.ECONFLICT, "api token already exists")
	} else if err != nil {
		return fmt.Errorf("insert api token: %w", err)
	}
	det := details{"name": nt.Name, "role": nt.Role}
	if nt.ExpiresAt != nil {
		det["expires_at"] = nt.ExpiresAt
	}
	if err := tx.audit(ctx, pylon.ActionAPITokenCreate, "api_token:"+nt.ID, det); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit api token: %w", err)
	}
	*t = nt
	return nil
}

const apiTokenColumns = `id, name, role, created_at, expires_at, last_used_at, revoked_at`

// scanAPIToken scans apiTokenColumns, and the hash if hash is not nil.
func scanAPIToken(row rowScanner, hash *[]byte) (*pylon.APIToken, error) {
	var (
		t    pylon.APIToken
		role string
	)
	dest := []any{&t.ID, &t.Name, &role, timeScanner{&t.CreatedAt},
		nullTimeScanner{&t.ExpiresAt}, nullTimeScanner{&t.LastUsedAt}, nullTimeScanner{&t.RevokedAt}}
	if hash != nil {
		dest = append(dest, hash)
	}
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	t.Role = pylon.Role(role)
	return &t, nil
}

// AuthenticateAPIToken returns the live token with the given id whose
// stored hash equals secretHash (compared in constant time), and records
// its use at most once a minute. Every failure is EUNAUTHORIZED "invalid
// credentials".
func (s *APITokenService) AuthenticateAPIToken(ctx context.Context, id string, secretHash []byte) (*pylon.APIToken, error) {
	if !pylon.ValidID(id) || len(secretHash) != sha256.Size {
		return nil, errInvalidCredentials()
	}
	var stored []byte
	t, err := scanAPIToken(s.db.reader.QueryRowContext(ctx,
		`SELECT `+apiTokenColumns+`, hash FROM api_tokens WHERE id = ?`, id), &stored)
	if errors.Is(err, sql.ErrNoRows) {
		// Compare anyway, so that an unknown id takes as long as a wrong
		// secret.
		subtle.ConstantTimeCompare(make([]byte, sha256.Size), secretHash)
		return nil, errInvalidCredentials()
	} else if err != nil {
		return nil, fmt.Errorf("find api token: %w", err)
	}
	now := s.db.now()
	if subtle.ConstantTimeCompare(stored, secretHash) != 1 ||
		t.RevokedAt != nil ||
		(t.ExpiresAt != nil && !now.Before(*t.ExpiresAt)) ||
		!t.Role.Valid() {
		return nil, errInvalidCredentials()
	}
	if t.LastUsedAt == nil || now.Sub(*t.LastUsedAt) >= lastUsedInterval {
		// The update re-checks revocation, so that a token revoked since
		// the read above fails closed.
		res, err := s.db.writer.ExecContext(ctx, `UPDATE api_tokens SET last_used_at = ? WHERE id = ? AND revoked_at IS NULL`, timeArg(now), id)
		if err != nil {
			return nil, fmt.Errorf("record api token use: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, fmt.Errorf("record api token use: %w", err)
		} else if n == 0 {
			return nil, errInvalidCredentials()
		}
		s.db.kickCheckpointer() // an autocommit: Tx.Commit did not
		t.LastUsedAt = &now
	}
	return t, nil
}

// FindAPITokens returns all API tokens, newest first.
func (s *APITokenService) FindAPITokens(ctx context.Context) ([]*pylon.APIToken, error) {
	scan := func(row rowScanner) (*pylon.APIToken, error) { return scanAPIToken(row, nil) }
	return queryAll(ctx, s.db.reader, "api tokens", scan, `SELECT `+apiTokenColumns+` FROM api_tokens ORDER BY seq DESC`)
}

// RevokeAPIToken revokes the token; revoking a revoked token changes
// nothing. Returns ENOTFOUND.
func (s *APITokenService) RevokeAPIToken(ctx context.Context, id string) error {
	if !pylon.ValidID(id) {
		return pylon.Errorf(pylon.ENOTFOUND, "api token not found")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()

	t, err := scanAPIToken(tx.QueryRowContext(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE id = ?`, id), nil)
	if errors.Is(err, sql.ErrNoRows) {
		return pylon.Errorf(pylon.ENOTFOUND, "api token not found")
	} else if err != nil {
		return fmt.Errorf("find api token: %w", err)
	}
	if t.RevokedAt != nil {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = ? WHERE id = ?`, timeArg(tx.now), id); err != nil {
		return fmt.Errorf("revoke api token: %w", err)
	}
	if err := tx.audit(ctx, pylon.ActionAPITokenRevoke, "api_token:"+id, details{"name": t.Name}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit api token revoke: %w", err)
	}
	return nil
}

// CountAPITokens returns how many API tokens exist, revoked included.
func (s *APITokenService) CountAPITokens(ctx context.Context) (int, error) {
	var n int
	if err := s.db.reader.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_tokens`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count api tokens: %w", err)
	}
	return n, nil
}
