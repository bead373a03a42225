package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/ed25519voi"
)

// Device certificate parameters.
const (
	deviceOrganization = "Pylon devices"
	minRSABits         = 2048
	maxRSABits         = 8192 // bounds the cost of verifying a CSR
	maxDeviceIDLen     = maxCommonNameLen
	crlValidity        = time.Hour
)

// CRL reason codes (RFC 5280 §5.3.1).
const (
	reasonUnspecified          = 0
	reasonKeyCompromise        = 1
	reasonCACompromise         = 2
	reasonAffiliationChanged   = 3
	reasonSuperseded           = 4
	reasonCessationOfOperation = 5
	reasonPrivilegeWithdrawn   = 9
)

// reasonCodes maps the reason strings of revoked certificates to CRL reason
// codes; anything else is unspecified.
var reasonCodes = map[string]int{
	"key_compromise":         reasonKeyCompromise,
	"ca_compromise":          reasonCACompromise,
	"affiliation_changed":    reasonAffiliationChanged,
	"superseded":             reasonSuperseded,
	"cessation_of_operation": reasonCessationOfOperation,
	"decommissioned":         reasonCessationOfOperation,
	"privilege_withdrawn":    reasonPrivilegeWithdrawn,
}

// allowedCSRSignatures are the CSR signature algorithms accepted as proof
// of possession: no MD5 or SHA-1.
var allowedCSRSignatures = map[x509.SignatureAlgorithm]bool{
	x509.SHA256WithRSA:    true,
	x509.SHA384WithRSA:    true,
	x509.SHA512WithRSA:    true,
	x509.SHA256WithRSAPSS: true,
	x509.SHA384WithRSAPSS: true,
	x509.SHA512WithRSAPSS: true,
	x509.ECDSAWithSHA256:  true,
	x509.ECDSAWithSHA384:  true,
	x509.ECDSAWithSHA512:  true,
	x509.PureEd25519:      true,
}

// SignDevice verifies csr's signature and key (ECDSA P-256 or P-384,
// Ed25519, RSA of 2048 to 8192 bits; anything else is pylon.EBADREQUEST)
// and signs a client certificate for deviceID valid from now-1m to
// now+lifetime (capped at the CA's NotAfter). Only the CSR's public key is
// used: the subject (CN=deviceID, O=Pylon devices) and every extension are
// set here. It returns the certificate and its record.
func (ca *CA) SignDevice(csr *x509.CertificateRequest, deviceID string, lifetime time.Duration, now time.Time) (*x509.Certificate, *pylon.Certificate, error) {
	keyType, err := checkCSR(csr)
	if err != nil {
		return nil, nil, err
	}
	return ca.signDevice(csr.PublicKey, keyType, deviceID, lifetime, now)
}

// checkCSR verifies the CSR's key type and signature and returns the key
// type. Errors are pylon.EBADREQUEST.
func checkCSR(csr *x509.CertificateRequest) (string, error) {
	if csr == nil {
		return "", pylon.Errorf(pylon.EBADREQUEST, "CSR required")
	}
	// The key first, so that an oversized RSA key is refused before its
	// signature costs anything.
	keyType, err := KeyType(csr.PublicKey)
	if err != nil {
		return "", err
	}
	if !allowedCSRSignatures[csr.SignatureAlgorithm] {
		return "", pylon.Errorf(pylon.EBADREQUEST, "CSR signature algorithm %s not allowed", csr.SignatureAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		return "", pylon.Errorf(pylon.EBADREQUEST, "CSR signature invalid")
	}
	return keyType, nil
}

// KeyType names an accepted device public key: "ECDSA-P256", "ECDSA-P384",
// "Ed25519" or "RSA-<bits>". Other keys are pylon.EBADREQUEST, and so are
// Ed25519 keys that ed25519voi.CheckPublicKey refuses: not canonical, not
// a point, of small order (signatures forgeable by anybody, a CSR's
// included) or with a small-order component (signatures that verify or
// not depending on the equation).
func KeyType(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ECDSA-P256", nil
		case elliptic.P384():
			return "ECDSA-P384", nil
		}
	case ed25519.PublicKey:
		if err := ed25519voi.CheckPublicKey(k); err != nil {
			return "", pylon.Errorf(pylon.EBADREQUEST, "%v: generate the key with a standard Ed25519 implementation", err)
		}
		return "Ed25519", nil
	case *rsa.PublicKey:
		switch bits := k.N.BitLen(); {
		case bits < minRSABits:
			return "", pylon.Errorf(pylon.EBADREQUEST, "RSA key of %d bits is too short (at least %d)", bits, minRSABits)
		case bits > maxRSABits:
			return "", pylon.Errorf(pylon.EBADREQUEST, "RSA key of %d bits is too long (at most %d)", bits, maxRSABits)
		default:
			return fmt.Sprintf("RSA-%d", bits), nil
		}
	}
	return "", pylon.Errorf(pylon.EBADREQUEST, "key type not supported: use ECDSA P-256 or P-384, Ed25519 or RSA of at least %d bits", minRSABits)
}

// signDevice signs a device certificate for pub, whose CSR has been
// checked.
func (ca *CA) signDevice(pub crypto.PublicKey, keyType, deviceID string, lifetime time.Duration, now time.Time) (*x509.Certificate, *pylon.Certificate, error) {
	if !validDeviceID(deviceID) {
		return nil, nil, pylon.Errorf(pylon.EINVALID, "device id is not valid")
	}
	if lifetime <= 0 {
		return nil, nil, pylon.Errorf(pylon.EINVALID, "certificate lifetime must be positive")
	}
	if ca.key == nil {
		return nil, nil, errors.New("CA has no private key")
	}
	if !now.Before(ca.Cert.NotAfter) {
		return nil, nil, fmt.Errorf("CA certificate expired at %s", ca.Cert.NotAfter.Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	skid, err := subjectKeyID(pub)
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   deviceID,
			Organization: []string{deviceOrganization},
		},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		BasicConstraintsValid: true, // CA:false, marked critical by crypto/x509
		IsCA:                  false,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		SubjectKeyId:          skid,
		AuthorityKeyId:        ca.Cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("create device certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse device certificate: %w", err)
	}
	rec := &pylon.Certificate{
		Serial:    SerialString(cert.SerialNumber),
		DeviceID:  deviceID,
		NotBefore: cert.NotBefore,
		NotAfter:  cert.NotAfter,
		Status:    pylon.CertValid,
		KeyType:   keyType,
		CreatedAt: now,
		DER:       der,
	}
	return cert, rec, nil
}

// SerialString formats a certificate serial number as Pylon stores it:
// lower-case hex without leading zeros.
func SerialString(n *big.Int) string {
	return fmt.Sprintf("%x", n)
}

// validDeviceID reports whether id can be a device certificate's CN: 1 to
// 64 letters, digits, '.', '_' or '-'.
func validDeviceID(id string) bool {
	if id == "" || len(id) > maxDeviceIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// CRL returns a DER CRL, signed by the CA, that lists revoked: valid from
// now for an hour, numbered by now's Unix time in milliseconds (and always
// higher than the CA's previous CRL). Superseded certificates get reason
// superseded, revoked ones the code of their reason string.
func (ca *CA) CRL(revoked []*pylon.Certificate, now time.Time) ([]byte, error) {
	if ca.key == nil {
		return nil, errors.New("CA has no private key")
	}
	entries := make([]x509.RevocationListEntry, 0, len(revoked))
	for _, c := range revoked {
		if c == nil {
			continue
		}
		serial, ok := new(big.Int).SetString(c.Serial, 16)
		if !ok || serial.Sign() <= 0 {
			return nil, fmt.Errorf("certificate serial %q is not positive hex", truncate(c.Serial, 70))
		}
		at := now
		if c.RevokedAt != nil {
			at = *c.RevokedAt
		}
		entries = append(entries, x509.RevocationListEntry{
			SerialNumber:   serial,
			RevocationTime: at.UTC(),
			ReasonCode:     reasonCode(c),
		})
	}
	tmpl := &x509.RevocationList{
		Number:                    big.NewInt(ca.nextCRLNumber(now)),
		ThisUpdate:                now,
		NextUpdate:                now.Add(crlValidity),
		RevokedCertificateEntries: entries,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.key)
	if err != nil {
		return nil, fmt.Errorf("create CRL: %w", err)
	}
	return der, nil
}

// nextCRLNumber returns now in Unix milliseconds, or one more than the
// last number if that is not higher.
func (ca *CA) nextCRLNumber(now time.Time) int64 {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	n := now.UnixMilli()
	if n <= ca.lastCRL {
		n = ca.lastCRL + 1
	}
	ca.lastCRL = n
	return n
}

func reasonCode(c *pylon.Certificate) int {
	if c.Status == pylon.CertSuperseded {
		return reasonSuperseded
	}
	r := strings.ToLower(strings.TrimSpace(c.Reason))
	r = strings.NewReplacer(" ", "_", "-", "_").Replace(r)
	if code, ok := reasonCodes[r]; ok {
		return code
	}
	return reasonUnspecified
}
