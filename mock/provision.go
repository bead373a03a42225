package mock

import (
	"context"
	"crypto/x509"
	"time"

	"github.com/pylonhq/pylon"
)

var (
	_ pylon.CertificateService     = (*CertificateService)(nil)
	_ pylon.EnrollmentTokenService = (*EnrollmentTokenService)(nil)
	_ pylon.EnrollmentStore        = (*EnrollmentStore)(nil)
	_ pylon.ProvisioningService    = (*ProvisioningService)(nil)
	_ pylon.SessionService         = (*SessionService)(nil)
)

// CertificateService is a fake pylon.CertificateService.
type CertificateService struct {
	FindCertificateBySerialFn   func(ctx context.Context, serial string) (*pylon.Certificate, error)
	FindCertificatesFn          func(ctx context.Context, filter pylon.CertificateFilter) ([]*pylon.Certificate, error)
	RevokeCertificateFn         func(ctx context.Context, serial, reason string) (*pylon.Certificate, error)
	FindRevokedCertificatesFn   func(ctx context.Context, now time.Time) ([]*pylon.Certificate, error)
	DeleteExpiredCertificatesFn func(ctx context.Context, before time.Time) (int64, error)
	AuthorizeConnectionFn       func(ctx context.Context, deviceID, serial string, now time.Time) (*pylon.Device, error)
}

// FindCertificateBySerial calls FindCertificateBySerialFn.
func (s *CertificateService) FindCertificateBySerial(ctx context.Context, serial string) (*pylon.Certificate, error) {
	return s.FindCertificateBySerialFn(ctx, serial)
}

// FindCertificates calls FindCertificatesFn.
func (s *CertificateService) FindCertificates(ctx context.Context, filter pylon.CertificateFilter) ([]*pylon.Certificate, error) {
	return s.FindCertificatesFn(ctx, filter)
}

// RevokeCertificate calls RevokeCertificateFn.
func (s *CertificateService) RevokeCertificate(ctx context.Context, serial, reason string) (*pylon.Certificate, error) {
	return s.RevokeCertificateFn(ctx, serial, reason)
}

// DeleteExpiredCertificates calls DeleteExpiredCertificatesFn.
func (s *CertificateService) DeleteExpiredCertificates(ctx context.Context, before time.Time) (int64, error) {
	return s.DeleteExpiredCertificatesFn(ctx, before)
}

// FindRevokedCertificates calls FindRevokedCertificatesFn.
func (s *CertificateService) FindRevokedCertificates(ctx context.Context, now time.Time) ([]*pylon.Certificate, error) {
	return s.FindRevokedCertificatesFn(ctx, now)
}

// AuthorizeConnection calls AuthorizeConnectionFn.
func (s *CertificateService) AuthorizeConnection(ctx context.Context, deviceID, serial string, now time.Time) (*pylon.Device, error) {
	return s.AuthorizeConnectionFn(ctx, deviceID, serial, now)
}

// EnrollmentTokenService is a fake pylon.EnrollmentTokenService.
type EnrollmentTokenService struct {
	CreateEnrollmentTokenFn   func(ctx context.Context, t *pylon.EnrollmentToken, secretHash []byte) error
	FindEnrollmentTokensFn    func(ctx context.Context, live bool) ([]*pylon.EnrollmentToken, error)
	FindEnrollmentTokenByIDFn func(ctx context.Context, id string) (*pylon.EnrollmentToken, error)
	RevokeEnrollmentTokenFn   func(ctx context.Context, id string) error
}

// CreateEnrollmentToken calls CreateEnrollmentTokenFn.
func (s *EnrollmentTokenService) CreateEnrollmentToken(ctx context.Context, t *pylon.EnrollmentToken, secretHash []byte) error {
	return s.CreateEnrollmentTokenFn(ctx, t, secretHash)
}

// FindEnrollmentTokens calls FindEnrollmentTokensFn.
func (s *EnrollmentTokenService) FindEnrollmentTokens(ctx context.Context, live bool) ([]*pylon.EnrollmentToken, error) {
	return s.FindEnrollmentTokensFn(ctx, live)
}

// FindEnrollmentTokenByID calls FindEnrollmentTokenByIDFn.
func (s *EnrollmentTokenService) FindEnrollmentTokenByID(ctx context.Context, id string) (*pylon.EnrollmentToken, error) {
	return s.FindEnrollmentTokenByIDFn(ctx, id)
}

// RevokeEnrollmentToken calls RevokeEnrollmentTokenFn.
func (s *EnrollmentTokenService) RevokeEnrollmentToken(ctx context.Context, id string) error {
	return s.RevokeEnrollmentTokenFn(ctx, id)
}

// EnrollmentStore is a fake pylon.EnrollmentStore.
type EnrollmentStore struct {
	EnrollFn   func(ctx context.Context, tokenID string, secretHash []byte, commonName string, issue pylon.IssueFunc) (*pylon.Device, *pylon.Certificate, error)
	ReenrollFn func(ctx context.Context, serial string, issue pylon.IssueFunc) (*pylon.Device, *pylon.Certificate, error)
}

// Enroll calls EnrollFn.
func (s *EnrollmentStore) Enroll(ctx context.Context, tokenID string, secretHash []byte, commonName string, issue pylon.IssueFunc) (*pylon.Device, *pylon.Certificate, error) {
	return s.EnrollFn(ctx, tokenID, secretHash, commonName, issue)
}

// Reenroll calls ReenrollFn.
func (s *EnrollmentStore) Reenroll(ctx context.Context, serial string, issue pylon.IssueFunc) (*pylon.Device, *pylon.Certificate, error) {
	return s.ReenrollFn(ctx, serial, issue)
}

// ProvisioningService is a fake pylon.ProvisioningService.
type ProvisioningService struct {
	CACertificatesFn func() []*x509.Certificate
	EnrollFn         func(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error)
	ReenrollFn       func(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error)
	CRLFn            func(ctx context.Context) ([]byte, error)
}

// CACertificates calls CACertificatesFn.
func (s *ProvisioningService) CACertificates() []*x509.Certificate {
	return s.CACertificatesFn()
}

// Enroll calls EnrollFn.
func (s *ProvisioningService) Enroll(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error) {
	return s.EnrollFn(ctx, req)
}

// Reenroll calls ReenrollFn.
func (s *ProvisioningService) Reenroll(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error) {
	return s.ReenrollFn(ctx, req)
}

// CRL calls CRLFn.
func (s *ProvisioningService) CRL(ctx context.Context) ([]byte, error) {
	return s.CRLFn(ctx)
}

// SessionService is a fake pylon.SessionService.
type SessionService struct {
	DisconnectDeviceFn func(ctx context.Context, deviceID, reason string) error
}

// DisconnectDevice calls DisconnectDeviceFn.
func (s *SessionService) DisconnectDevice(ctx context.Context, deviceID, reason string) error {
	return s.DisconnectDeviceFn(ctx, deviceID, reason)
}
