package httpapi

import (
	"crypto/x509"
	"errors"
	"io"
	"net/http"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/est"
)

// EST content types (RFC 7030 §4.1.3, §4.2.3).
const (
	contentTypePKCS7     = "application/pkcs7-mime"
	contentTypeCertsOnly = "application/pkcs7-mime; smime-type=certs-only"
)

// handleESTCACerts serves the CA certificates as a base64 certs-only
// message (RFC 7030 §4.1). No authentication.
func (s *Server) handleESTCACerts(w http.ResponseWriter, r *http.Request) {
	certs := s.Provisioning.CACertificates()
	if len(certs) == 0 {
		Error(w, r, pylon.Errorf(pylon.EUNAVAILABLE, "no CA certificate"))
		return
	}
	body, err := est.EncodeCertsOnly(certs...)
	if err != nil {
		Error(w, r, err)
		return
	}
	writeCertsOnly(w, contentTypePKCS7, body)
}

// handleESTEnroll is simpleenroll (RFC 7030 §4.2.1), authenticated by an
// enrollment token: "Authorization: Bearer <token>", or the token as the
// password of HTTP Basic authentication with any user name.
func (s *Server) handleESTEnroll(w http.ResponseWriter, r *http.Request) {
	if s.rateLimited(w, r) {
		return
	}
	secret, ok := enrollmentSecret(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", estChallenge)
		Error(w, r, pylon.Errorf(pylon.EUNAUTHORIZED, "missing enrollment token (Authorization: Bearer or Basic)"))
		return
	}
	tokenID, hash, err := pylon.ParseSecret(pylon.EnrollmentTokenPrefix, secret)
	if err != nil {
		s.authFailed(w, r, estChallenge)
		return
	}
	csr, err := readCSR(w, r)
	if err != nil {
		Error(w, r, err)
		return
	}
	// The enrollment token is the actor of what the enrollment changes.
	ctx := pylon.NewContextWithPrincipal(r.Context(), pylon.Principal{Kind: pylon.PrincipalEnrollToken, ID: tokenID})
	cert, err := s.Provisioning.Enroll(ctx, pylon.EnrollRequest{TokenID: tokenID, SecretHash: hash, CSR: csr})
	if err != nil {
		if pylon.ErrorCode(err) == pylon.EUNAUTHORIZED {
			s.authFailed(w, r, estChallenge)
			return
		}
		Error(w, r, err)
		return
	}
	s.writeIssued(w, r, cert)
}

// handleESTReenroll is simplereenroll (RFC 7030 §4.2.2), authenticated by
// the client certificate of the TLS connection, verified against ClientCAs.
func (s *Server) handleESTReenroll(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		w.Header().Set("WWW-Authenticate", estChallenge)
		Error(w, r, pylon.Errorf(pylon.EUNAUTHORIZED, "simplereenroll requires the current device certificate as TLS client certificate"))
		return
	}
	peer := r.TLS.VerifiedChains[0][0]
	ctx := r.Context()
	if id := peer.Subject.CommonName; pylon.ValidID(id) {
		ctx = pylon.NewContextWithPrincipal(ctx, pylon.Principal{Kind: pylon.PrincipalDevice, ID: id})
		r = r.WithContext(ctx)
	}
	csr, err := readCSR(w, r)
	if err != nil {
		Error(w, r, err)
		return
	}
	cert, err := s.Provisioning.Reenroll(ctx, pylon.EnrollRequest{CSR: csr, Peer: peer})
	if err != nil {
		if pylon.ErrorCode(err) == pylon.EUNAUTHORIZED {
			w.Header().Set("WWW-Authenticate", estChallenge)
		}
		Error(w, r, err)
		return
	}
	s.writeIssued(w, r, cert)
}

// enrollmentSecret returns the enrollment token of a Bearer or Basic
// Authorization header.
func enrollmentSecret(r *http.Request) (string, bool) {
	if secret, ok := bearerToken(r); ok {
		return secret, true
	}
	if _, password, ok := r.BasicAuth(); ok && password != "" {
		return password, true
	}
	return "", false
}

// readCSR reads and parses a base64 PKCS#10 body of at most
// est.MaxCSRSize bytes. A larger body is refused with ETOOLARGE as soon as
// its declared length or the bytes read show it.
func readCSR(w http.ResponseWriter, r *http.Request) (*x509.CertificateRequest, error) {
	tooLarge := pylon.Errorf(pylon.ETOOLARGE, "CSR larger than %d bytes", est.MaxCSRSize)
	if r.ContentLength > est.MaxCSRSize {
		return nil, tooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(unwrap(w), r.Body, est.MaxCSRSize))
	if err != nil {
		var maxErr *http.MaxBytesError
		if errors.As(err, &maxErr) {
			return nil, tooLarge
		}
		return nil, pylon.Errorf(pylon.EBADREQUEST, "could not read the request body")
	}
	return est.DecodeCSR(body)
}

// writeIssued answers an enrollment with the new certificate as a base64
// certs-only message.
func (s *Server) writeIssued(w http.ResponseWriter, r *http.Request, cert *x509.Certificate) {
	body, err := est.EncodeCertsOnly(cert)
	if err != nil {
		Error(w, r, err)
		return
	}
	writeCertsOnly(w, contentTypeCertsOnly, body)
}

func writeCertsOnly(w http.ResponseWriter, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Transfer-Encoding", "base64")
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}
