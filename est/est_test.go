package est_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/est"
)

// newCSR returns the DER of a fresh P-256 certificate request for cn.
func newCSR(tb testing.TB, cn string) []byte {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// newCert returns a self-signed certificate for cn.
func newCert(tb testing.TB, cn string) *x509.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// TestDecodeCSR_RawDEREndingInSpace checks that a binary DER request
// whose last byte is that of a white-space character (about one request
// in forty: the signature's last byte is random) is read whole. Trimming
// the body before telling binary from text once cut that byte off.
func TestDecodeCSR_RawDEREndingInSpace(t *testing.T) {
	found := map[byte]bool{}
	for i := 0; i < 20000 && len(found) < 2; i++ {
		der := newCSR(t, "sensor-1")
		last := der[len(der)-1]
		if !strings.ContainsRune(" \t\n\v\f\r", rune(last)) || found[last] {
			continue
		}
		found[last] = true
		csr, err := est.DecodeCSR(der)
		if err != nil {
			t.Fatalf("raw DER ending in %#x: %v", last, err)
		}
		if !bytes.Equal(csr.Raw, der) {
			t.Fatalf("raw DER ending in %#x: got a different request back", last)
		}
	}
	if len(found) == 0 {
		t.Fatal("no request ending in a white-space byte in 20,000 tries")
	}
}

func TestDecodeCSR(t *testing.T) {
	der := newCSR(t, "sensor-1")
	b64 := base64.StdEncoding.EncodeToString(der)
	wrapped := func(s string, n int, sep string) string {
		var b strings.Builder
		for len(s) > n {
			b.WriteString(s[:n] + sep)
			s = s[n:]
		}
		b.WriteString(s)
		return b.String()
	}
	tests := []struct {
		name string
		body []byte
	}{
		{"base64 one line", []byte(b64)},
		{"EncodeCSR", est.EncodeCSR(der)},
		{"CRLF every 76", []byte(wrapped(b64, 76, "\r\n") + "\r\n")},
		{"LF every 64", []byte(wrapped(b64, 64, "\n"))},
		{"spaces and tabs", []byte(" " + wrapped(b64, 10, " \t ") + " \n")},
		{"no padding", []byte(strings.TrimRight(b64, "="))},
		{"raw DER", der},
		{"PEM", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})},
		{"PEM NEW", pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: der})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := est.DecodeCSR(tt.body)
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			if !bytes.Equal(csr.Raw, der) {
				t.Errorf("got a different request back")
			}
			if got, want := csr.Subject.CommonName, "sensor-1"; got != want {
				t.Errorf("got CN %q, want %q", got, want)
			}
		})
	}
}

func TestDecodeCSR_Errors(t *testing.T) {
	der := newCSR(t, "x")
	certDER := newCert(t, "x").Raw
	tests := []struct {
		name     string
		body     []byte
		wantCode string
		wantMsg  string
	}{
		{"empty", nil, pylon.EBADREQUEST, "CSR is not valid base64"},
		{"whitespace", []byte(" \r\n"), pylon.EBADREQUEST, "CSR is not valid base64"},
		{"not base64", []byte("hello, world!"), pylon.EBADREQUEST, "CSR is not valid base64"},
		{"padding inside", []byte("QUJD=QUJD"), pylon.EBADREQUEST, "CSR is not valid base64"},
		{"base64 of garbage", []byte(base64.StdEncoding.EncodeToString([]byte("garbage garbage"))), pylon.EBADREQUEST, "CSR is not a valid PKCS#10 request"},
		{"truncated", []byte(base64.StdEncoding.EncodeToString(der[:len(der)-5])), pylon.EBADREQUEST, "CSR is not a valid PKCS#10 request"},
		{"trailing data", []byte(base64.StdEncoding.EncodeToString(append(append([]byte{}, der...), 0, 0))), pylon.EBADREQUEST, "CSR is not a valid PKCS#10 request"},
		{"a certificate", []byte(base64.StdEncoding.EncodeToString(certDER)), pylon.EBADREQUEST, "CSR is not a valid PKCS#10 request"},
		{"PEM of a certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), pylon.EBADREQUEST, "CSR is not valid base64"},
		{"broken PEM", []byte("-----BEGIN CERTIFICATE REQUEST-----\nQUJD\n"), pylon.EBADREQUEST, "CSR is not valid base64"},
		{"binary garbage", []byte{0x30, 0x82, 0xff, 0x00, 0x01}, pylon.EBADREQUEST, "CSR is not a valid PKCS#10 request"},
		{"1 MB", bytes.Repeat([]byte("A"), 1<<20), pylon.ETOOLARGE, "CSR larger than 65536 bytes"},
		{"one byte over", bytes.Repeat([]byte("A"), est.MaxCSRSize+1), pylon.ETOOLARGE, "CSR larger than 65536 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := est.DecodeCSR(tt.body)
			if csr != nil {
				t.Errorf("got a request, want nil")
			}
			if got := pylon.ErrorCode(err); got != tt.wantCode {
				t.Errorf("got code %q (%v), want %q", got, err, tt.wantCode)
			}
			if got := pylon.ErrorMessage(err); got != tt.wantMsg {
				t.Errorf("got message %q, want %q", got, tt.wantMsg)
			}
		})
	}
}

func TestDecodeCSR_TooLargeIsQuick(t *testing.T) {
	body := bytes.Repeat([]byte("QUJD"), 1<<18) // 1 MiB of valid base64
	start := time.Now()
	for range 1000 {
		if _, err := est.DecodeCSR(body); pylon.ErrorCode(err) != pylon.ETOOLARGE {
			t.Fatalf("got %v, want too_large", err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("1000 rejections took %v, want well under a second", d)
	}
}

func TestEncodeCSR_Lines(t *testing.T) {
	der := newCSR(t, strings.Repeat("long-name-", 10))
	out := est.EncodeCSR(der)
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) < 2 {
		t.Fatalf("got %d lines, want several", len(lines))
	}
	for i, l := range lines {
		if len(l) > 76 || (i < len(lines)-1 && len(l) != 76) {
			t.Errorf("line %d has %d characters, want 76 (at most 76 for the last)", i, len(l))
		}
		if strings.ContainsRune(l, '\r') {
			t.Errorf("line %d holds CR", i)
		}
	}
	got, err := base64.StdEncoding.DecodeString(strings.Join(lines, ""))
	if err != nil || !bytes.Equal(got, der) {
		t.Errorf("got %x (%v), want the DER back", got, err)
	}
}

func TestCertsOnly_RoundTrip(t *testing.T) {
	a, b := newCert(t, "leaf"), newCert(t, "ca")
	tests := []struct {
		name  string
		certs []*x509.Certificate
	}{
		{"one", []*x509.Certificate{a}},
		{"two", []*x509.Certificate{a, b}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, err := est.EncodeCertsOnly(tt.certs...)
			if err != nil {
				t.Fatal(err)
			}
			der, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(body), "\n", ""))
			if err != nil {
				t.Fatalf("output is not base64: %v", err)
			}
			for name, in := range map[string][]byte{"base64": body, "der": der, "crlf": bytes.ReplaceAll(body, []byte("\n"), []byte("\r\n"))} {
				got, err := est.DecodeCertsOnly(in)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if len(got) != len(tt.certs) {
					t.Fatalf("%s: got %d certificates, want %d", name, len(got), len(tt.certs))
				}
				for i := range got {
					if !got[i].Equal(tt.certs[i]) {
						t.Errorf("%s: certificate %d differs", name, i)
					}
				}
			}
		})
	}
}

func TestEncodeCertsOnly_Errors(t *testing.T) {
	if _, err := est.EncodeCertsOnly(); err == nil {
		t.Error("no certificates: got nil error, want one")
	}
	if _, err := est.EncodeCertsOnly(nil); err == nil {
		t.Error("nil certificate: got nil error, want one")
	}
}

func TestDecodeCertsOnly_Errors(t *testing.T) {
	tests := []struct {
		name     string
		body     []byte
		wantCode string
	}{
		{"empty", nil, pylon.EBADREQUEST},
		{"garbage", []byte("!!!"), pylon.EBADREQUEST},
		{"base64 garbage", []byte(base64.StdEncoding.EncodeToString([]byte("0123456789"))), pylon.EBADREQUEST},
		{"a CSR", est.EncodeCSR(newCSR(t, "x")), pylon.EBADREQUEST},
		{"too large", bytes.Repeat([]byte("A"), est.MaxCertsOnlySize+1), pylon.ETOOLARGE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, err := est.DecodeCertsOnly(tt.body)
			if got := pylon.ErrorCode(err); got != tt.wantCode {
				t.Errorf("got code %q (%v), want %q", got, err, tt.wantCode)
			}
			if certs != nil {
				t.Errorf("got %d certificates, want none", len(certs))
			}
		})
	}
}

func TestFixtures(t *testing.T) {
	tests := []struct {
		file   string
		wantCN string
	}{
		{"openssl-p256.csr.b64", "openssl-fixture"},
		{"openssl-rsa.csr.pem", "openssl-rsa"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			csr, err := est.DecodeCSR(body)
			if err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			if csr.Subject.CommonName != tt.wantCN {
				t.Errorf("got CN %q, want %q", csr.Subject.CommonName, tt.wantCN)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Errorf("signature: %v", err)
			}
		})
	}
}

func lookOpenSSL(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	return path
}

// TestOpenSSL_CSR decodes a request made by `openssl req ... | base64`.
func TestOpenSSL_CSR(t *testing.T) {
	openssl := lookOpenSSL(t)
	dir := t.TempDir()
	cmd := exec.Command(openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-keyout", filepath.Join(dir, "key.pem"), "-subj", "/CN=x", "-outform", "DER")
	der, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl req: %v", err)
	}
	// base64(1) wraps at 76 columns with LF, like the shell example.
	b64, err := exec.Command("sh", "-c", "base64 < "+shellQuote(writeFile(t, dir, "csr.der", der))).Output()
	if err != nil {
		t.Fatalf("base64: %v", err)
	}
	csr, err := est.DecodeCSR(b64)
	if err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	if csr.Subject.CommonName != "x" {
		t.Errorf("got CN %q, want %q", csr.Subject.CommonName, "x")
	}
	if err := csr.CheckSignature(); err != nil {
		t.Errorf("signature: %v", err)
	}
}

// TestOpenSSL_CertsOnly checks that `base64 -d | openssl pkcs7 -inform DER
// -print_certs`, as in examples/shell/enroll.sh, reads our certs-only output.
func TestOpenSSL_CertsOnly(t *testing.T) {
	openssl := lookOpenSSL(t)
	leaf, ca := newCert(t, "leaf-cert"), newCert(t, "ca-cert")
	body, err := est.EncodeCertsOnly(leaf, ca)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := writeFile(t, dir, "p7.b64", body)
	out, err := exec.Command("sh", "-c", "base64 -d < "+shellQuote(file)+" | "+shellQuote(openssl)+" pkcs7 -inform DER -print_certs").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl pkcs7: %v\n%s", err, out)
	}
	var got []*x509.Certificate
	for rest := out; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c)
	}
	if len(got) != 2 {
		t.Fatalf("got %d certificates from openssl, want 2:\n%s", len(got), out)
	}
	if !got[0].Equal(leaf) || !got[1].Equal(ca) {
		t.Errorf("openssl printed different certificates")
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
