package pylon

import (
	"context"
	"crypto/x509"
	"time"
)

// CertStatus is the status of a device certificate. Expiry is not a status:
// it is computed from NotAfter.
type CertStatus string

// Certificate statuses.
const (
	CertValid      CertStatus = "valid"
	CertSuperseded CertStatus = "superseded" // the device has connected with a newer one
	CertRevoked    CertStatus = "revoked"
)

// Certificate is a device certificate issued by the platform's CA.
type Certificate struct {
	Serial    string     `json:"serial"` // lower-case hex, no leading zeros
	DeviceID  string     `json:"device_id"`
	NotBefore time.Time  `json:"not_before"`
	NotAfter  time.Time  `json:"not_after"`
	Status    CertStatus `json:"status"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Reason    string     `json:"reason,omitempty"` // why revoked or superseded
	KeyType   string     `json:"key_type"`         // "ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-2048", ...
	CreatedAt time.Time  `json:"created_at"`
	DER       []byte     `json:"-"`
}

// Usable reports whether c may authenticate its device at time now.
func (c *Certificate) Usable(now time.Time) bool {
	return c.Status == CertValid && !now.Before(c.NotBefore) && now.Before(c.NotAfter)
}

// CertificateFilter selects certificates. Zero fields do not filter.
type CertificateFilter struct {
	DeviceID *string
	Status   *CertStatus
	Limit    int // 100 if 0, at most 1000
}

// CertificateService stores issued certificates.
type CertificateService interface {
	// FindCertificateBySerial returns ENOTFOUND if there is none.
	FindCertificateBySerial(ctx context.Context, serial string) (*Certificate, error)

	// FindCertificates returns matching certificates, newest first.
	FindCertificates(ctx context.Context, filter CertificateFilter) ([]*Certificate, error)

	// RevokeCertificate revokes the certificate for reason. Revoking a
	// revoked certificate is a no-op. Returns ENOTFOUND.
	RevokeCertificate(ctx context.Context, serial, reason string) (*Certificate, error)

	// FindRevokedCertificates returns the revoked and superseded
	// certificates that have not yet expired at now, for the CRL.
	FindRevokedCertificates(ctx context.Context, now time.Time) ([]*Certificate, error)

	// DeleteExpiredCertificates deletes the certificates that expired
	// before before, whatever their status: they are neither on the CRL
	// nor usable, and the audit log keeps their history. It returns how
	// many it deleted.
	DeleteExpiredCertificates(ctx context.Context, before time.Time) (int64, error)

	// AuthorizeConnection checks, at connect time, that the certificate with
	// the given serial belongs to deviceID, is usable at now, and that the
	// device is active. On success it supersedes the device's older valid
	// certificates (the device has proven it holds the newer key) and
	// returns the device. Returns EUNAUTHORIZED or EFORBIDDEN otherwise.
	AuthorizeConnection(ctx context.Context, deviceID, serial string, now time.Time) (*Device, error)
}

// EnrollmentToken authorizes enrollment over EST. It either enrolls one
// registered device (DeviceID set) or provisions new devices (DeviceID
// empty): each use creates a device named from the CSR's common name, with
// Labels. Its secret is shown once and stored hashed.
type EnrollmentToken struct {
	ID        string            `json:"id"`
	DeviceID  string            `json:"device_id,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Uses      int               `json:"uses"` // how many enrollments it allows
	Used      int               `json:"used"` // how many it has done
	ExpiresAt time.Time         `json:"expires_at"`
	RevokedAt *time.Time        `json:"revoked_at,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	CreatedBy string            `json:"created_by"` // audit actor
}

// Limits on enrollment tokens.
const (
	DefaultEnrollmentTTL = 24 * time.Hour
	MaxEnrollmentTTL     = 365 * 24 * time.Hour
	MaxEnrollmentUses    = 1_000_000
)

// Live reports whether the token may still be used at now.
func (t *EnrollmentToken) Live(now time.Time) bool {
	return t.RevokedAt == nil && now.Before(t.ExpiresAt) && t.Used < t.Uses
}

// EnrollmentTokenService stores enrollment tokens.
type EnrollmentTokenService interface {
	// CreateEnrollmentToken stores t with the hash of its secret. A token
	// for a device requires the device to exist and not be decommissioned.
	// Returns EINVALID, ENOTFOUND, ECONFLICT.
	CreateEnrollmentToken(ctx context.Context, t *EnrollmentToken, secretHash []byte) error

	// FindEnrollmentTokens returns tokens, newest first; with live set, only
	// those usable now.
	FindEnrollmentTokens(ctx context.Context, live bool) ([]*EnrollmentToken, error)

	// FindEnrollmentTokenByID returns ENOTFOUND if there is none.
	FindEnrollmentTokenByID(ctx context.Context, id string) (*EnrollmentToken, error)

	// RevokeEnrollmentToken revokes the token. Returns ENOTFOUND.
	RevokeEnrollmentToken(ctx context.Context, id string) error
}

// IssueFunc signs a certificate for device. The store calls it inside the
// transaction that records the result, so that an enrollment either happens
// whole or not at all.
type IssueFunc func(device *Device) (*Certificate, error)

// EnrollmentStore performs the store side of enrollment atomically.
type EnrollmentStore interface {
	// Enroll consumes one use of the live enrollment token tokenID whose
	// hash equals secretHash (constant-time), finds its device or, for a
	// fleet token, creates one named commonName with the token's labels,
	// calls issue, records the certificate, activates a registered device
	// and writes the audit records, all in one transaction. Concurrent
	// calls never use a token more often than it allows.
	// Returns EUNAUTHORIZED (unknown, expired, revoked or used-up token),
	// EFORBIDDEN (device suspended or decommissioned), EINVALID (bad
	// common name), ECONFLICT (a fleet device of that name exists).
	Enroll(ctx context.Context, tokenID string, secretHash []byte, commonName string, issue IssueFunc) (*Device, *Certificate, error)

	// Reenroll renews for the holder of the certificate with the given
	// serial: it must be usable now and its device active. It calls issue,
	// records the new certificate and writes the audit record in one
	// transaction. Returns EFORBIDDEN otherwise.
	Reenroll(ctx context.Context, serial string, issue IssueFunc) (*Device, *Certificate, error)
}

// EnrollRequest is an EST enrollment as the HTTP layer received it.
type EnrollRequest struct {
	TokenID    string // for simpleenroll: from the enrollment token
	SecretHash []byte
	CSR        *x509.CertificateRequest // parsed, signature not yet checked
	// Peer is the verified client certificate, for simplereenroll.
	Peer *x509.Certificate
}

// ProvisioningService enrolls devices: it checks the CSR, signs it with the
// platform's CA and records the result.
type ProvisioningService interface {
	// CACertificates returns the CA chain that devices trust, leaf-most first.
	CACertificates() []*x509.Certificate

	// Enroll handles simpleenroll. Returns EBADREQUEST (bad CSR signature or
	// key), plus the errors of EnrollmentStore.Enroll.
	Enroll(ctx context.Context, req EnrollRequest) (*x509.Certificate, error)

	// Reenroll handles simplereenroll. Returns EUNAUTHORIZED (no or foreign
	// client certificate), EBADREQUEST, EFORBIDDEN.
	Reenroll(ctx context.Context, req EnrollRequest) (*x509.Certificate, error)

	// CRL returns the current DER-encoded certificate revocation list.
	CRL(ctx context.Context) ([]byte, error)
}

// SessionService controls live MQTT sessions. The embedded broker
// implements it; with an external broker it may do nothing but the CRL.
type SessionService interface {
	// DisconnectDevice ends the device's live session, if any.
	DisconnectDevice(ctx context.Context, deviceID, reason string) error
}
