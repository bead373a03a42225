package mock

import (
	"context"

	"github.com/pylonhq/pylon"
)

var _ pylon.APITokenService = (*APITokenService)(nil)

// APITokenService is a fake pylon.APITokenService.
type APITokenService struct {
	CreateAPITokenFn       func(ctx context.Context, t *pylon.APIToken, secretHash []byte) error
	AuthenticateAPITokenFn func(ctx context.Context, id string, secretHash []byte) (*pylon.APIToken, error)
	FindAPITokensFn        func(ctx context.Context) ([]*pylon.APIToken, error)
	RevokeAPITokenFn       func(ctx context.Context, id string) error
	CountAPITokensFn       func(ctx context.Context) (int, error)
}

// CreateAPIToken calls CreateAPITokenFn.
func (s *APITokenService) CreateAPIToken(ctx context.Context, t *pylon.APIToken, secretHash []byte) error {
	return s.CreateAPITokenFn(ctx, t, secretHash)
}

// AuthenticateAPIToken calls AuthenticateAPITokenFn.
func (s *APITokenService) AuthenticateAPIToken(ctx context.Context, id string, secretHash []byte) (*pylon.APIToken, error) {
	return s.AuthenticateAPITokenFn(ctx, id, secretHash)
}

// FindAPITokens calls FindAPITokensFn.
func (s *APITokenService) FindAPITokens(ctx context.Context) ([]*pylon.APIToken, error) {
	return s.FindAPITokensFn(ctx)
}

// RevokeAPIToken calls RevokeAPITokenFn.
func (s *APITokenService) RevokeAPIToken(ctx context.Context, id string) error {
	return s.RevokeAPITokenFn(ctx, id)
}

// CountAPITokens calls CountAPITokensFn.
func (s *APITokenService) CountAPITokens(ctx context.Context) (int, error) {
	return s.CountAPITokensFn(ctx)
}
