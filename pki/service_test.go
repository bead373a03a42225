package pki_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/pki"
)

// testService is a Service over a new CA and a fake store, logging to a
// buffer.
type testService struct {
	*pki.Service
	store *fakeStore
	logs  *bytes.Buffer
}

func newTestService(t *testing.T) *testService {
	t.Helper()
	ca, _ := MustCA(t)
	store := newFakeStore()
	logs := &bytes.Buffer{}
	return &testService{
		Service: &pki.Service{
			CA:       ca,
			Store:    store,
			Certs:    store,
			Lifetime: 7 * 24 * time.Hour,
			Now:      func() time.Time { return testNow },
			Logger:   slog.New(slog.NewTextHandler(logs, nil)),
		},
		store: store,
		logs:  logs,
	}
}

func enrollRequest(csr *x509.CertificateRequest) pylon.EnrollRequest {
	return pylon.EnrollRequest{TokenID: "tok", SecretHash: pylon.HashSecret(testSecret), CSR: csr}
}

// mustEnroll enrolls a new device with csr and returns its certificate.
func (s *testService) mustEnroll(t *testing.T, csr *x509.CertificateRequest) *x509.Certificate {
	t.Helper()
	cert, err := s.Enroll(context.Background(), enrollRequest(csr))
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	return cert
}

// newCSR returns a CSR for a new P-256 key with the given CN.
func newCSR(t *testing.T, cn string) *x509.CertificateRequest {
	t.Helper()
	return MustCSR(t, MustP256(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}})
}

func TestService_CACertificates(t *testing.T) {
	s := newTestService(t)
	got := s.CACertificates()
	if len(got) != 1 || !bytes.Equal(got[0].Raw, s.CA.Cert.Raw) {
		t.Fatalf("got %d certificates, want the CA's only", len(got))
	}
}

func TestService_Enroll(t *testing.T) {
	s := newTestService(t)
	cert := s.mustEnroll(t, newCSR(t, "sensor-1"))

	if len(s.store.devices) != 1 {
		t.Fatalf("got %d devices, want 1", len(s.store.devices))
	}
	var dev *pylon.Device
	for _, d := range s.store.devices {
		dev = d
	}
	if dev.Name != "sensor-1" {
		t.Errorf("got device name %q, want the CSR's CN sensor-1", dev.Name)
	}
	checkDeviceCert(t, s.CA, cert, dev.ID)
	rec, ok := s.store.certs[fmt.Sprintf("%x", cert.SerialNumber)]
	if !ok {
		t.Fatal("certificate not recorded in the store")
	}
	if rec.DeviceID != dev.ID || !bytes.Equal(rec.DER, cert.Raw) {
		t.Errorf("got record for %s, want %s with the certificate's DER", rec.DeviceID, dev.ID)
	}
	if got, want := cert.NotAfter, testNow.Add(7*24*time.Hour); !got.Equal(want) {
		t.Errorf("got NotAfter %v, want %v", got, want)
	}
	logs := s.logs.String()
	if !strings.Contains(logs, "certificate issued") || !strings.Contains(logs, rec.Serial) || !strings.Contains(logs, dev.ID) {
		t.Errorf("got logs %q, want the issuance with device and serial", logs)
	}
	if strings.Contains(logs, hex.EncodeToString(pylon.HashSecret(testSecret))) || strings.Contains(logs, testSecret) {
		t.Errorf("got logs %q, want no secrets", logs)
	}
}

func TestService_EnrollDefaultLifetime(t *testing.T) {
	s := newTestService(t)
	s.Lifetime = 0
	cert := s.mustEnroll(t, newCSR(t, "sensor-1"))
	if got, want := cert.NotAfter, testNow.Add(30*24*time.Hour); !got.Equal(want) {
		t.Errorf("got NotAfter %v, want %v", got, want)
	}
}

func TestService_EnrollRefusesBadSignature(t *testing.T) {
	s := newTestService(t)
	der := mustCSRDER(t, MustP256(t), nil)
	der[len(der)-1] ^= 0x01
	_, err := s.Enroll(context.Background(), enrollRequest(mustParseCSR(t, der)))
	if got := pylon.ErrorCode(err); got != pylon.EBADREQUEST {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EBADREQUEST)
	}
	if got, want := pylon.ErrorMessage(err), "CSR signature invalid"; got != want {
		t.Errorf("got message %q, want %q", got, want)
	}
	if s.store.enrollCalls != 0 {
		t.Errorf("got %d store calls, want 0 (token not consumed)", s.store.enrollCalls)
	}
}

func TestService_EnrollRefusesNilCSR(t *testing.T) {
	s := newTestService(t)
	_, err := s.Enroll(context.Background(), enrollRequest(nil))
	if got := pylon.ErrorCode(err); got != pylon.EBADREQUEST {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EBADREQUEST)
	}
	if s.store.enrollCalls != 0 {
		t.Errorf("got %d store calls, want 0", s.store.enrollCalls)
	}
}

func TestService_EnrollPassesStoreErrors(t *testing.T) {
	s := newTestService(t)
	req := enrollRequest(newCSR(t, "sensor-1"))
	req.SecretHash = pylon.HashSecret("wrong")
	_, err := s.Enroll(context.Background(), req)
	if got := pylon.ErrorCode(err); got != pylon.EUNAUTHORIZED {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EUNAUTHORIZED)
	}
	if len(s.store.certs) != 0 {
		t.Errorf("got %d certificates recorded, want 0", len(s.store.certs))
	}
}

func TestService_Reenroll(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sameKey  bool
		subject  pkix.Name // CN "=id" means the device id
		wantKind string
	}{
		{"renewal with the device id", true, pkix.Name{CommonName: "=id"}, "kind=renewal"},
		{"rekey with the device id", false, pkix.Name{CommonName: "=id"}, "kind=rekey"},
		{"rekey with an empty subject", false, pkix.Name{}, "kind=rekey"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestService(t)
			key := MustP256(t)
			peer := s.mustEnroll(t, MustCSR(t, key, nil))
			id := peer.Subject.CommonName

			newKey := key
			if !tc.sameKey {
				newKey = MustP256(t)
			}
			subject := tc.subject
			if subject.CommonName == "=id" {
				subject.CommonName = id
			}
			csr := MustCSR(t, newKey, &x509.CertificateRequest{Subject: subject})
			cert, err := s.Reenroll(context.Background(), pylon.EnrollRequest{CSR: csr, Peer: peer})
			if err != nil {
				t.Fatalf("Reenroll: %v", err)
			}
			checkDeviceCert(t, s.CA, cert, id)
			if cert.SerialNumber.Cmp(peer.SerialNumber) == 0 {
				t.Error("got the old serial, want a new certificate")
			}
			if !pkEqual(cert.PublicKey, newKey.Public()) {
				t.Error("got a certificate for another key, want the CSR's")
			}
			if _, ok := s.store.certs[fmt.Sprintf("%x", cert.SerialNumber)]; !ok {
				t.Error("new certificate not recorded")
			}
			if logs := s.logs.String(); !strings.Contains(logs, tc.wantKind) {
				t.Errorf("got logs %q, want %q", logs, tc.wantKind)
			}
		})
	}
}

func TestService_ReenrollRefusesNilPeer(t *testing.T) {
	s := newTestService(t)
	_, err := s.Reenroll(context.Background(), pylon.EnrollRequest{CSR: newCSR(t, "")})
	if got := pylon.ErrorCode(err); got != pylon.EUNAUTHORIZED {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EUNAUTHORIZED)
	}
	if s.store.reenrollCalls != 0 {
		t.Errorf("got %d store calls, want 0", s.store.reenrollCalls)
	}
}

func TestService_ReenrollRefusesMismatchedCN(t *testing.T) {
	s := newTestService(t)
	peer := s.mustEnroll(t, newCSR(t, "sensor-1"))
	other := s.mustEnroll(t, newCSR(t, "sensor-2"))
	csr := newCSR(t, other.Subject.CommonName)
	_, err := s.Reenroll(context.Background(), pylon.EnrollRequest{CSR: csr, Peer: peer})
	if got := pylon.ErrorCode(err); got != pylon.EFORBIDDEN {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EFORBIDDEN)
	}
	if got, want := pylon.ErrorMessage(err), "subject does not match the current certificate: the CSR's common name"; !strings.HasPrefix(got, want) {
		t.Errorf("got message %q, want %q", got, want)
	}
	if s.store.reenrollCalls != 0 {
		t.Errorf("got %d store calls, want 0", s.store.reenrollCalls)
	}
}

func TestService_ReenrollRefusesForeignCertificate(t *testing.T) {
	s := newTestService(t)
	s.mustEnroll(t, newCSR(t, "sensor-1"))
	foreign, _ := MustCA(t)
	peer, _, err := foreign.SignDevice(newCSR(t, ""), testDeviceID, time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Reenroll(context.Background(), pylon.EnrollRequest{CSR: newCSR(t, ""), Peer: peer})
	if got := pylon.ErrorCode(err); got != pylon.EUNAUTHORIZED {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EUNAUTHORIZED)
	}
}

func TestService_ReenrollRefusesUnknownSerial(t *testing.T) {
	s := newTestService(t)
	// Signed by the right CA but never recorded.
	peer, _, err := s.CA.SignDevice(newCSR(t, ""), testDeviceID, time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Reenroll(context.Background(), pylon.EnrollRequest{CSR: newCSR(t, ""), Peer: peer})
	if got := pylon.ErrorCode(err); got != pylon.EFORBIDDEN {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EFORBIDDEN)
	}
	if s.store.reenrollCalls != 0 {
		t.Errorf("got %d store calls, want 0", s.store.reenrollCalls)
	}
}

func TestService_ReenrollRefusesSubjectOfAnotherDevice(t *testing.T) {
	s := newTestService(t)
	peer := s.mustEnroll(t, newCSR(t, "sensor-1"))
	// The store says the serial belongs to another device than the CN.
	s.store.certs[fmt.Sprintf("%x", peer.SerialNumber)].DeviceID = "someoneelse"
	_, err := s.Reenroll(context.Background(), pylon.EnrollRequest{CSR: newCSR(t, ""), Peer: peer})
	if got := pylon.ErrorCode(err); got != pylon.EFORBIDDEN {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EFORBIDDEN)
	}
}

func TestService_ReenrollRefusesRevoked(t *testing.T) {
	s := newTestService(t)
	peer := s.mustEnroll(t, newCSR(t, "sensor-1"))
	if _, err := s.store.RevokeCertificate(context.Background(), fmt.Sprintf("%x", peer.SerialNumber), "key_compromise"); err != nil {
		t.Fatal(err)
	}
	_, err := s.Reenroll(context.Background(), pylon.EnrollRequest{CSR: newCSR(t, ""), Peer: peer})
	if got := pylon.ErrorCode(err); got != pylon.EFORBIDDEN {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EFORBIDDEN)
	}
}

func TestService_ReenrollRefusesBadCSR(t *testing.T) {
	s := newTestService(t)
	peer := s.mustEnroll(t, newCSR(t, "sensor-1"))
	der := mustCSRDER(t, MustP256(t), &x509.CertificateRequest{})
	der[len(der)-1] ^= 0x01
	_, err := s.Reenroll(context.Background(), pylon.EnrollRequest{CSR: mustParseCSR(t, der), Peer: peer})
	if got := pylon.ErrorCode(err); got != pylon.EBADREQUEST {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EBADREQUEST)
	}
	if s.store.reenrollCalls != 0 {
		t.Errorf("got %d store calls, want 0", s.store.reenrollCalls)
	}
}

func TestService_CRL(t *testing.T) {
	s := newTestService(t)
	revoked := s.mustEnroll(t, newCSR(t, "sensor-1"))
	kept := s.mustEnroll(t, newCSR(t, "sensor-2"))
	if _, err := s.store.RevokeCertificate(context.Background(), fmt.Sprintf("%x", revoked.SerialNumber), "key_compromise"); err != nil {
		t.Fatal(err)
	}
	der, err := s.CRL(context.Background())
	if err != nil {
		t.Fatalf("CRL: %v", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(s.CA.Cert); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if n := len(crl.RevokedCertificateEntries); n != 1 {
		t.Fatalf("got %d entries, want 1", n)
	}
	e := crl.RevokedCertificateEntries[0]
	if e.SerialNumber.Cmp(revoked.SerialNumber) != 0 || e.SerialNumber.Cmp(kept.SerialNumber) == 0 {
		t.Errorf("got serial %x, want %x", e.SerialNumber, revoked.SerialNumber)
	}
	if e.ReasonCode != 1 {
		t.Errorf("got reason %d, want 1 (keyCompromise)", e.ReasonCode)
	}
}
