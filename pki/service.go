package pki

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pylonhq/pylon"
)

// DefaultLifetime is the device certificate lifetime when Service.Lifetime
// is zero.
const DefaultLifetime = 30 * 24 * time.Hour

// Service implements pylon.ProvisioningService: it checks CSRs, signs them
// with CA and records the result through Store.
type Service struct {
	CA       *CA
	Store    pylon.EnrollmentStore
	Certs    pylon.CertificateService
	Lifetime time.Duration    // device certificate lifetime; 30 days if 0
	Now      func() time.Time // time.Now if nil
	Logger   *slog.Logger
}

var _ pylon.ProvisioningService = (*Service)(nil)

// CACertificates returns the CA certificate that devices trust.
func (s *Service) CACertificates() []*x509.Certificate {
	return []*x509.Certificate{s.CA.Cert}
}

// Enroll handles simpleenroll: it checks the CSR, then lets the store
// consume the enrollment token and record a certificate for the token's
// device, signed for the device's id. Returns EBADREQUEST (no CSR, bad
// signature or key) and the errors of EnrollmentStore.Enroll.
func (s *Service) Enroll(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	if req.TokenID == "" || len(req.SecretHash) == 0 {
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "invalid enrollment token")
	}
	keyType, err := checkCSR(req.CSR)
	if err != nil {
		return nil, err
	}
	now := s.now()
	var issued *x509.Certificate
	issue := func(device *pylon.Device) (*pylon.Certificate, error) {
		cert, rec, err := s.CA.signDevice(req.CSR.PublicKey, keyType, device.ID, s.lifetime(), now)
		if err != nil {
			return nil, err
		}
		issued = cert
		return rec, nil
	}
	device, rec, err := s.Store.Enroll(ctx, req.TokenID, req.SecretHash, req.CSR.Subject.CommonName, issue)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if err := checkRecorded(issued, device, rec); err != nil {
		return nil, err
	}
	s.logger().InfoContext(ctx, "certificate issued", "device", device.ID, "serial", rec.Serial,
		"key_type", rec.KeyType, "not_after", rec.NotAfter, "token", req.TokenID)
	return issued, nil
}

// Reenroll handles simplereenroll for the holder of the certificate
// req.Peer: the certificate must be one the CA issued and the store knows,
// for the device it names; the CSR's subject must be empty or name the same
// device. A CSR with the current public key is a renewal, another key a
// rekey. Returns EUNAUTHORIZED (no or foreign certificate), EBADREQUEST,
// EFORBIDDEN and the errors of EnrollmentStore.Reenroll.
func (s *Service) Reenroll(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	if s.Certs == nil {
		return nil, errors.New("provisioning service has no certificate store")
	}
	peer := req.Peer
	if peer == nil {
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "client certificate required")
	}
	// The HTTP layer verified the chain; check again that it is ours.
	if peer.SerialNumber == nil || peer.CheckSignatureFrom(s.CA.Cert) != nil {
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "client certificate not issued by this CA")
	}
	keyType, err := checkCSR(req.CSR)
	if err != nil {
		return nil, err
	}
	deviceID := peer.Subject.CommonName
	if cn := req.CSR.Subject.CommonName; cn != "" && cn != deviceID {
		return nil, pylon.Errorf(pylon.EFORBIDDEN, "subject does not match the current certificate: the CSR's common name %q is not the device id %s; leave it empty or use the device id", truncate(cn, 64), deviceID)
	}
	serial := SerialString(peer.SerialNumber)
	stored, err := s.Certs.FindCertificateBySerial(ctx, serial)
	if pylon.ErrorCode(err) == pylon.ENOTFOUND {
		return nil, pylon.Errorf(pylon.EFORBIDDEN, "certificate not recognised")
	} else if err != nil {
		return nil, fmt.Errorf("find certificate: %w", err)
	}
	if deviceID == "" || stored.DeviceID != deviceID {
		return nil, pylon.Errorf(pylon.EFORBIDDEN, "certificate does not belong to its subject")
	}
	kind := "rekey"
	if publicKeysEqual(peer.PublicKey, req.CSR.PublicKey) {
		kind = "renewal"
	}
	now := s.now()
	var issued *x509.Certificate
	issue := func(device *pylon.Device) (*pylon.Certificate, error) {
		if device.ID != deviceID {
			return nil, pylon.Errorf(pylon.EFORBIDDEN, "certificate does not belong to its subject")
		}
		cert, rec, err := s.CA.signDevice(req.CSR.PublicKey, keyType, deviceID, s.lifetime(), now)
		if err != nil {
			return nil, err
		}
		issued = cert
		return rec, nil
	}
	device, rec, err := s.Store.Reenroll(ctx, serial, issue)
	if err != nil {
		return nil, fmt.Errorf("reenroll: %w", err)
	}
	if err := checkRecorded(issued, device, rec); err != nil {
		return nil, err
	}
	s.logger().InfoContext(ctx, "certificate reissued", "device", device.ID, "kind", kind,
		"serial", rec.Serial, "previous", serial, "key_type", rec.KeyType, "not_after", rec.NotAfter)
	return issued, nil
}

// CRL returns the current DER CRL of the revoked and superseded
// certificates that have not expired.
func (s *Service) CRL(ctx context.Context) ([]byte, error) {
	if s.CA == nil || s.Certs == nil {
		return nil, errors.New("provisioning service not configured")
	}
	now := s.now()
	revoked, err := s.Certs.FindRevokedCertificates(ctx, now)
	if err != nil {
		return nil, fmt.Errorf("find revoked certificates: %w", err)
	}
	return s.CA.CRL(revoked, now)
}

// checkRecorded makes sure the store recorded the certificate last signed.
func checkRecorded(issued *x509.Certificate, device *pylon.Device, rec *pylon.Certificate) error {
	if issued == nil || device == nil || rec == nil || rec.Serial != SerialString(issued.SerialNumber) {
		return errors.New("store did not record the issued certificate")
	}
	return nil
}

func (s *Service) ready() error {
	if s.CA == nil || s.Store == nil {
		return errors.New("provisioning service not configured")
	}
	return nil
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Service) lifetime() time.Duration {
	if s.Lifetime > 0 {
		return s.Lifetime
	}
	return DefaultLifetime
}

func (s *Service) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}
