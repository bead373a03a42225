package httpapi

import (
	"encoding/pem"
	"net/http"
	"strings"

	"github.com/pylonhq/pylon"
)

// MaxListLimit is the largest ?limit= of certificate and audit listings.
const MaxListLimit = 1000

// MaxRevocationReason bounds the reason given for revoking a certificate.
const MaxRevocationReason = 256

// EnrollmentTokenRequest is the body of POST /api/v1/enrollment-tokens:
// either DeviceID (a single-use token for that registered device) or
// Labels and Uses (a fleet token: each use creates a device with Labels).
type EnrollmentTokenRequest struct {
	DeviceID string            `json:"device_id,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Uses     int               `json:"uses,omitempty"` // 1 if 0
	TTL      string            `json:"ttl,omitempty"`  // Go duration, e.g. "24h"; pylon.DefaultEnrollmentTTL if ""
}

// EnrollmentTokenCreated is the body of a 201 answer to
// POST /api/v1/enrollment-tokens. Token is the secret: it is shown here
// and never again.
type EnrollmentTokenCreated struct {
	Token string `json:"token"`
	*pylon.EnrollmentToken
}

// EnrollmentTokenList is the body of GET /api/v1/enrollment-tokens.
type EnrollmentTokenList struct {
	EnrollmentTokens []*pylon.EnrollmentToken `json:"enrollment_tokens"`
}

// CertificateDetail is a certificate with its PEM encoding, the body of
// GET /api/v1/certificates/{serial} and of its revocation.
type CertificateDetail struct {
	*pylon.Certificate
	PEM string `json:"pem,omitempty"`
}

// RevokeCertificateRequest is the optional body of
// POST /api/v1/certificates/{serial}/revoke.
type RevokeCertificateRequest struct {
	Reason string `json:"reason,omitempty"`
}

func (s *Server) handleCreateEnrollmentToken(w http.ResponseWriter, r *http.Request) {
	var req EnrollmentTokenRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		Error(w, r, err)
		return
	}
	ttl, err := parseTTL(req.TTL, pylon.DefaultEnrollmentTTL, pylon.MaxEnrollmentTTL)
	if err != nil {
		Error(w, r, err)
		return
	}
	uses := req.Uses
	switch {
	case req.DeviceID != "":
		if !pylon.ValidID(req.DeviceID) {
			Error(w, r, pylon.Errorf(pylon.EINVALID, "device_id: not a device id"))
			return
		} else if len(req.Labels) > 0 {
			Error(w, r, pylon.Errorf(pylon.EINVALID, "labels: not allowed with device_id (the device has its own)"))
			return
		} else if uses != 0 && uses != 1 {
			Error(w, r, pylon.Errorf(pylon.EINVALID, "uses: a device token has exactly one use"))
			return
		}
		uses = 1
	default:
		if err := pylon.ValidateLabels(req.Labels); err != nil {
			Error(w, r, err)
			return
		}
		if uses == 0 {
			uses = 1
		} else if uses < 1 || uses > pylon.MaxEnrollmentUses {
			Error(w, r, pylon.Errorf(pylon.EINVALID, "uses: must be from 1 to %d", pylon.MaxEnrollmentUses))
			return
		}
	}
	now := s.now()
	secret, id, hash := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	t := &pylon.EnrollmentToken{
		ID:        id,
		DeviceID:  req.DeviceID,
		Labels:    req.Labels,
		Uses:      uses,
		ExpiresAt: now.Add(ttl),
		CreatedAt: now,
		CreatedBy: pylon.PrincipalFromContext(r.Context()).Actor(),
	}
	if err := s.EnrollTokens.CreateEnrollmentToken(r.Context(), t, hash); err != nil {
		Error(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/enrollment-tokens/"+t.ID)
	writeJSON(w, http.StatusCreated, EnrollmentTokenCreated{Token: secret, EnrollmentToken: t})
}

func (s *Server) handleListEnrollmentTokens(w http.ResponseWriter, r *http.Request) {
	live, err := queryBool(r.URL.Query(), "live")
	if err != nil {
		Error(w, r, err)
		return
	}
	tokens, err := s.EnrollTokens.FindEnrollmentTokens(r.Context(), live != nil && *live)
	if err != nil {
		Error(w, r, err)
		return
	}
	if tokens == nil {
		tokens = []*pylon.EnrollmentToken{}
	}
	writeJSON(w, http.StatusOK, EnrollmentTokenList{EnrollmentTokens: tokens})
}

func (s *Server) handleGetEnrollmentToken(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "enrollment token")
	if err != nil {
		Error(w, r, err)
		return
	}
	t, err := s.EnrollTokens.FindEnrollmentTokenByID(r.Context(), id)
	if err != nil {
		Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

func (s *Server) handleRevokeEnrollmentToken(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "enrollment token")
	if err != nil {
		Error(w, r, err)
		return
	}
	if err := s.EnrollTokens.RevokeEnrollmentToken(r.Context(), id); err != nil {
		Error(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleListCertificates(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f pylon.CertificateFilter
	if v := q.Get("device_id"); v != "" {
		if !pylon.ValidID(v) {
			Error(w, r, pylon.Errorf(pylon.EINVALID, "device_id: not a device id"))
			return
		}
		f.DeviceID = &v
	}
	if v := q.Get("status"); v != "" {
		st := pylon.CertStatus(v)
		switch st {
		case pylon.CertValid, pylon.CertSuperseded, pylon.CertRevoked:
		default:
			Error(w, r, pylon.Errorf(pylon.EINVALID, "status: must be valid, superseded or revoked"))
			return
		}
		f.Status = &st
	}
	var err error
	if f.Limit, err = queryLimit(q, MaxListLimit); err != nil {
		Error(w, r, err)
		return
	}
	certs, err := s.Certs.FindCertificates(r.Context(), f)
	if err != nil {
		Error(w, r, err)
		return
	}
	if certs == nil {
		certs = []*pylon.Certificate{}
	}
	writeJSON(w, http.StatusOK, CertificateList{Certificates: certs})
}

// NormalizeSerial returns a certificate serial number in the form Pylon
// stores it (lower-case hex without leading zeros), accepting upper case,
// leading zeros and ':' separators as openssl prints them. It reports false
// for anything that is not a hex serial of at most 20 bytes.
func NormalizeSerial(s string) (string, bool) {
	s = strings.ToLower(strings.ReplaceAll(s, ":", ""))
	if s == "" || len(s) > 64 {
		return "", false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	s = strings.TrimLeft(s, "0")
	if s == "" {
		s = "0"
	}
	if len(s) > 40 {
		return "", false
	}
	return s, true
}

// pathSerial returns the {serial} path value, normalized, or ENOTFOUND.
func pathSerial(r *http.Request) (string, error) {
	serial, ok := NormalizeSerial(r.PathValue("serial"))
	if !ok {
		return "", pylon.Errorf(pylon.ENOTFOUND, "certificate not found")
	}
	return serial, nil
}

// certificateDetail adds the PEM encoding to c.
func certificateDetail(c *pylon.Certificate) CertificateDetail {
	d := CertificateDetail{Certificate: c}
	if len(c.DER) > 0 {
		d.PEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER}))
	}
	return d
}

func (s *Server) handleGetCertificate(w http.ResponseWriter, r *http.Request) {
	serial, err := pathSerial(r)
	if err != nil {
		Error(w, r, err)
		return
	}
	c, err := s.Certs.FindCertificateBySerial(r.Context(), serial)
	if err != nil {
		Error(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, certificateDetail(c))
}

func (s *Server) handleRevokeCertificate(w http.ResponseWriter, r *http.Request) {
	serial, err := pathSerial(r)
	if err != nil {
		Error(w, r, err)
		return
	}
	var req RevokeCertificateRequest
	if err := decodeJSON(w, r, &req, true); err != nil {
		Error(w, r, err)
		return
	}
	if len(req.Reason) > MaxRevocationReason || !printable(req.Reason) {
		Error(w, r, pylon.Errorf(pylon.EINVALID, "reason: at most %d bytes of printable UTF-8", MaxRevocationReason))
		return
	}
	c, err := s.Certs.RevokeCertificate(r.Context(), serial, req.Reason)
	if err != nil {
		Error(w, r, err)
		return
	}
	s.disconnect(r.Context(), c.DeviceID, "certificate revoked")
	writeJSON(w, http.StatusOK, certificateDetail(c))
}

// handleCACert serves the CA chain devices trust, as PEM.
func (s *Server) handleCACert(w http.ResponseWriter, r *http.Request) {
	var b []byte
	for _, c := range s.Provisioning.CACertificates() {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if len(b) == 0 {
		Error(w, r, pylon.Errorf(pylon.EUNAVAILABLE, "no CA certificate"))
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(b)
}

// handleCRL serves the current certificate revocation list, DER-encoded.
func (s *Server) handleCRL(w http.ResponseWriter, r *http.Request) {
	crl, err := s.Provisioning.CRL(r.Context())
	if err != nil {
		Error(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Write(crl)
}
