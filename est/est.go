// Package est implements the wire format of Enrollment over Secure Transport
// (EST, RFC 7030): base64-encoded PKCS#10 certificate requests in, base64
// PKCS#7 "certs-only" messages out.
//
// It is shared by the server (httpapi) and by device clients, so it imports
// only the standard library, the root package and github.com/smallstep/pkcs7.
//
// Line breaks: RFC 7030 §4 carries bodies with "Content-Transfer-Encoding:
// base64" (RFC 2045). Encoders here break lines every 76 characters with a
// bare LF rather than CRLF, because common tools (GNU coreutils
// `base64 -d`, used by examples/shell/enroll.sh) reject CR; decoders accept
// CR, LF, spaces and tabs anywhere, and padding or none, as RFC 8951
// recommends for interoperability.
package est

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"

	"github.com/smallstep/pkcs7"

	"github.com/pylonhq/pylon"
)

// MaxCSRSize is the largest certificate request body accepted, in bytes
// (before base64 decoding).
const MaxCSRSize = 64 << 10

// MaxCertsOnlySize is the largest certs-only body DecodeCertsOnly accepts.
const MaxCertsOnlySize = 1 << 20

// lineLen is the length of encoded lines (RFC 2045 §6.8).
const lineLen = 76

// DecodeCSR parses an application/pkcs10 body: the base64 (RFC 7030
// §4.2.1) of a DER PKCS#10 request, with any CR, LF, space or tab between
// characters. For convenience it also accepts a PEM "CERTIFICATE REQUEST"
// block and raw DER. It does not check the request's signature.
//
// Errors: ETOOLARGE when body is over MaxCSRSize; EBADREQUEST "CSR is not
// valid base64" or "CSR is not a valid PKCS#10 request".
func DecodeCSR(body []byte) (*x509.CertificateRequest, error) {
	if len(body) > MaxCSRSize {
		return nil, pylon.Errorf(pylon.ETOOLARGE, "CSR larger than %d bytes", MaxCSRSize)
	}
	der, err := decodeBody(body, "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")
	if err != nil {
		return nil, pylon.Errorf(pylon.EBADREQUEST, "CSR is not valid base64")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, pylon.Errorf(pylon.EBADREQUEST, "CSR is not a valid PKCS#10 request")
	}
	return csr, nil
}

// EncodeCSR returns the base64 of a DER certificate request, in lines of
// 76 characters, as a client sends it to simpleenroll or simplereenroll.
func EncodeCSR(der []byte) []byte {
	return encodeLines(der)
}

// EncodeCertsOnly returns the base64, in lines of 76 characters, of a
// degenerate PKCS#7 SignedData holding certs and nothing else (RFC 7030
// §4.1.3 and §4.2.3, "certs-only").
func EncodeCertsOnly(certs ...*x509.Certificate) ([]byte, error) {
	if len(certs) == 0 {
		return nil, fmt.Errorf("encode certs-only: no certificates")
	}
	var raw []byte
	for i, c := range certs {
		if c == nil || len(c.Raw) == 0 {
			return nil, fmt.Errorf("encode certs-only: certificate %d is empty", i)
		}
		raw = append(raw, c.Raw...)
	}
	der, err := pkcs7.DegenerateCertificate(raw)
	if err != nil {
		return nil, fmt.Errorf("encode certs-only: %w", err)
	}
	return encodeLines(der), nil
}

// DecodeCertsOnly parses a PKCS#7 certs-only message, base64 (with any
// whitespace) or raw DER (or a PEM "PKCS7" block), and returns its
// certificates in order. Errors: ETOOLARGE over MaxCertsOnlySize;
// EBADREQUEST for anything that is not a certs-only message with at least
// one certificate.
func DecodeCertsOnly(body []byte) ([]*x509.Certificate, error) {
	if len(body) > MaxCertsOnlySize {
		return nil, pylon.Errorf(pylon.ETOOLARGE, "certs-only message larger than %d bytes", MaxCertsOnlySize)
	}
	der, err := decodeBody(body, "PKCS7")
	if err != nil {
		return nil, pylon.Errorf(pylon.EBADREQUEST, "certs-only message is not valid base64")
	}
	p7, err := parsePKCS7(der)
	if err != nil || len(p7.Certificates) == 0 {
		return nil, pylon.Errorf(pylon.EBADREQUEST, "not a valid PKCS#7 certs-only message")
	}
	return p7.Certificates, nil
}

// parsePKCS7 wraps pkcs7.Parse, which is third-party ASN.1 code fed with
// untrusted input: a panic there becomes an error.
func parsePKCS7(der []byte) (p7 *pkcs7.PKCS7, err error) {
	defer func() {
		if r := recover(); r != nil {
			p7, err = nil, fmt.Errorf("parse pkcs7: %v", r)
		}
	}()
	return pkcs7.Parse(der)
}

// decodeBody returns the DER inside body: the contents of a PEM block of one
// of pemTypes, the body itself if it is binary DER, or its base64 decoding.
func decodeBody(body []byte, pemTypes ...string) ([]byte, error) {
	// Binary DER first, as sent: its last bytes (a signature's) may look
	// like white space, which trimming would cut off.
	if isBinaryDER(body) {
		return body, nil
	}
	trimmed := bytes.TrimSpace(body)
	if bytes.HasPrefix(trimmed, []byte("-----BEGIN ")) {
		block, rest := pem.Decode(trimmed)
		if block == nil || len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("bad pem")
		}
		for _, t := range pemTypes {
			if block.Type == t {
				return block.Bytes, nil
			}
		}
		return nil, fmt.Errorf("unexpected pem type %q", block.Type)
	}
	return decodeBase64(trimmed)
}

// isBinaryDER reports whether b starts like a DER SEQUENCE and holds a byte
// that base64 text cannot, so it cannot be base64.
func isBinaryDER(b []byte) bool {
	if len(b) < 2 || b[0] != 0x30 {
		return false
	}
	for _, c := range b {
		if !isBase64Char(c) && !isSpace(c) {
			return true
		}
	}
	return false
}

// decodeBase64 decodes standard base64 with or without padding, ignoring
// CR, LF, space and tab.
func decodeBase64(b []byte) ([]byte, error) {
	clean := make([]byte, 0, len(b))
	for _, c := range b {
		switch {
		case isSpace(c):
		case isBase64Char(c):
			clean = append(clean, c)
		default:
			return nil, fmt.Errorf("invalid base64 character %#x", c)
		}
	}
	clean = bytes.TrimRight(clean, "=")
	if len(clean) == 0 {
		return nil, fmt.Errorf("empty")
	}
	if bytes.IndexByte(clean, '=') >= 0 {
		return nil, fmt.Errorf("padding inside base64")
	}
	out := make([]byte, base64.RawStdEncoding.DecodedLen(len(clean)))
	n, err := base64.RawStdEncoding.Decode(out, clean)
	if err != nil {
		return nil, err
	}
	return out[:n], nil
}

func isBase64Char(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '='
}

func isSpace(c byte) bool { return c == '\r' || c == '\n' || c == ' ' || c == '\t' }

// encodeLines returns the standard base64 of der in lines of lineLen
// characters, each ended by LF.
func encodeLines(der []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(der)
	out := make([]byte, 0, len(enc)+len(enc)/lineLen+1)
	for len(enc) > lineLen {
		out = append(out, enc[:lineLen]...)
		out = append(out, '\n')
		enc = enc[lineLen:]
	}
	out = append(out, enc...)
	return append(out, '\n')
}
