package mock

import (
	"context"

	"github.com/pylonhq/pylon"
)

var _ pylon.AuditService = (*AuditService)(nil)

// AuditService is a fake pylon.AuditService.
type AuditService struct {
	AppendAuditFn      func(ctx context.Context, r *pylon.AuditRecord) error
	FindAuditRecordsFn func(ctx context.Context, filter pylon.AuditFilter) ([]*pylon.AuditRecord, error)
	VerifyAuditFn      func(ctx context.Context) (pylon.AuditVerification, error)
}

// AppendAudit calls AppendAuditFn.
func (s *AuditService) AppendAudit(ctx context.Context, r *pylon.AuditRecord) error {
	return s.AppendAuditFn(ctx, r)
}

// FindAuditRecords calls FindAuditRecordsFn.
func (s *AuditService) FindAuditRecords(ctx context.Context, filter pylon.AuditFilter) ([]*pylon.AuditRecord, error) {
	return s.FindAuditRecordsFn(ctx, filter)
}

// VerifyAudit calls VerifyAuditFn.
func (s *AuditService) VerifyAudit(ctx context.Context) (pylon.AuditVerification, error) {
	return s.VerifyAuditFn(ctx)
}
