package pylon

import (
	"context"
	"time"
)

// Role is what an API token or user may do.
type Role string

// Roles, from most to least privileged.
const (
	RoleAdmin    Role = "admin"    // everything, including API tokens
	RoleOperator Role = "operator" // devices, enrollment tokens, certificates, commands
	RoleViewer   Role = "viewer"   // read-only
)

// Permission is a class of operations checked against a Role.
type Permission string

// Permissions.
const (
	PermRead    Permission = "read"    // list and get anything but secrets
	PermOperate Permission = "operate" // change devices, enrollment tokens, certificates
	PermAdmin   Permission = "admin"   // manage API tokens, read metrics
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case RoleAdmin, RoleOperator, RoleViewer:
		return true
	}
	return false
}

// Allows reports whether r grants permission p. Unknown roles grant nothing.
func (r Role) Allows(p Permission) bool {
	switch r {
	case RoleAdmin:
		return p == PermRead || p == PermOperate || p == PermAdmin
	case RoleOperator:
		return p == PermRead || p == PermOperate
	case RoleViewer:
		return p == PermRead
	}
	return false
}

// APIToken is a bearer credential for the REST API. Its secret is shown once
// at creation and stored only as a hash.
type APIToken struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Role       Role       `json:"role"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

// APITokenService stores API tokens.
type APITokenService interface {
	// CreateAPIToken stores t (its ID is set by the caller, see NewSecret)
	// with the SHA-256 hash of its secret. Returns EINVALID, ECONFLICT.
	CreateAPIToken(ctx context.Context, t *APIToken, secretHash []byte) error

	// AuthenticateAPIToken returns the live (not revoked, not expired) token
	// with the given id whose stored hash equals secretHash, compared in
	// constant time, and records its use. Returns EUNAUTHORIZED otherwise.
	AuthenticateAPIToken(ctx context.Context, id string, secretHash []byte) (*APIToken, error)

	// FindAPITokens returns all API tokens, newest first.
	FindAPITokens(ctx context.Context) ([]*APIToken, error)

	// RevokeAPIToken revokes the token. Returns ENOTFOUND.
	RevokeAPIToken(ctx context.Context, id string) error

	// CountAPITokens returns how many API tokens exist (revoked included).
	CountAPITokens(ctx context.Context) (int, error)
}
