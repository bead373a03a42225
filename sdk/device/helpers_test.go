package device_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pylonhq/pylon/est"
)

// testDeviceID is the id the fake EST server gives every device.
const testDeviceID = "abcdefghijklmnop"

// fakeCA is a CA for a fake EST server: it signs the server's TLS
// certificate and the device certificates, like the platform's CA.
type fakeCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
}

func newFakeCA(tb testing.TB) *fakeCA {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &fakeCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

var serial atomic.Int64

func (ca *fakeCA) issue(tb testing.TB, pub crypto.PublicKey, cn string, server bool) *x509.Certificate {
	tb.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(100 + serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// newFakeEST starts an HTTPS server with the EST endpoints. simpleenroll
// takes the bearer token "good"; the tokens "used", "suspended" and
// "taken" get the platform's 401, 403 and 409 answers. simplereenroll
// needs a client certificate of the CA.
func newFakeEST(tb testing.TB, ca *fakeCA) *httptest.Server {
	tb.Helper()
	serverKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serverCert := ca.issue(tb, serverKey.Public(), "127.0.0.1", true)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	mux := http.NewServeMux()
	issue := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, est.MaxCSRSize+1))
		csr, err := est.DecodeCSR(body)
		if err != nil || csr.CheckSignature() != nil {
			apiError(w, 400, "bad_request", "bad CSR")
			return
		}
		out, _ := est.EncodeCertsOnly(ca.issue(tb, csr.PublicKey, testDeviceID, false))
		w.Header().Set("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
		w.Write(out)
	}
	mux.HandleFunc("POST /.well-known/est/simpleenroll", func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("Authorization") {
		case "Bearer good":
			issue(w, r)
		case "Bearer suspended":
			apiError(w, 403, "forbidden", "device is suspended")
		case "Bearer taken":
			apiError(w, 409, "conflict", `a device named "x" exists`)
		default:
			apiError(w, 401, "unauthorized", "invalid, expired or used-up enrollment token")
		}
	})
	mux.HandleFunc("POST /.well-known/est/simplereenroll", func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != testDeviceID {
			apiError(w, 401, "unauthorized", "client certificate required")
			return
		}
		issue(w, r)
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{serverCert.Raw}, PrivateKey: serverKey}},
		ClientAuth:   tls.VerifyClientCertIfGiven, ClientCAs: pool,
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	tb.Cleanup(srv.Close)
	return srv
}

func apiError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":{"code":%q,"message":%q}}`, code, msg)
}

// closedAddr returns a local address nothing listens on.
func closedAddr(tb testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
