package pki_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/pki"
)

// Extension OIDs.
var (
	oidSKI              = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSAN              = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidAKI              = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidEKU              = asn1.ObjectIdentifier{2, 5, 29, 37}
)

var (
	rsa2048Once sync.Once
	rsa2048Key  *rsa.PrivateKey
)

// rsa2048 returns an RSA-2048 key shared by the tests (slow to generate).
func rsa2048(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	rsa2048Once.Do(func() {
		var err error
		if rsa2048Key, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	return rsa2048Key
}

const testDeviceID = "abcdefgh23456789"

// checkDeviceCert checks what every device certificate must be, whatever
// the CSR asked for.
func checkDeviceCert(t *testing.T, ca *pki.CA, cert *x509.Certificate, deviceID string) {
	t.Helper()
	if got := cert.Subject.CommonName; got != deviceID {
		t.Errorf("got CN %q, want %q", got, deviceID)
	}
	if got := cert.Subject.Organization; len(got) != 1 || got[0] != "Pylon devices" {
		t.Errorf("got O %q, want [Pylon devices]", got)
	}
	if n := len(cert.Subject.Names); n != 2 {
		t.Errorf("got %d subject attributes %v, want 2 (CN, O)", n, cert.Subject.Names)
	}
	if !cert.BasicConstraintsValid || cert.IsCA {
		t.Errorf("got basic constraints valid=%v ca=%v, want valid, CA:false", cert.BasicConstraintsValid, cert.IsCA)
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("got key usage %v, want digital signature only", cert.KeyUsage)
	}
	if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(cert.UnknownExtKeyUsage) != 0 {
		t.Errorf("got EKU %v + %v, want clientAuth only", cert.ExtKeyUsage, cert.UnknownExtKeyUsage)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses)+len(cert.URIs) != 0 {
		t.Errorf("got SANs %v %v %v %v, want none", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses, cert.URIs)
	}
	if !bytes.Equal(cert.AuthorityKeyId, ca.Cert.SubjectKeyId) {
		t.Errorf("got AuthorityKeyId %x, want the CA's %x", cert.AuthorityKeyId, ca.Cert.SubjectKeyId)
	}
	allowed := map[string]bool{oidSKI.String(): true, oidKeyUsage.String(): true, oidBasicConstraints.String(): true, oidAKI.String(): true, oidEKU.String(): true}
	sawBC := false
	for _, ext := range cert.Extensions {
		if !allowed[ext.Id.String()] {
			t.Errorf("got extension %v, want only SKI, AKI, KU, EKU, BC", ext.Id)
		}
		if ext.Id.Equal(oidBasicConstraints) {
			sawBC = true
			if !ext.Critical {
				t.Error("got basic constraints not critical, want critical")
			}
		}
	}
	if !sawBC {
		t.Error("got no basic constraints extension, want CA:false present")
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("not signed by the CA: %v", err)
	}
}

func TestSignDevice_KeyTypes(t *testing.T) {
	ca, _ := MustCA(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		want string
	}{
		{"P-256", MustP256(t), "ECDSA-P256"},
		{"P-384", p384, "ECDSA-P384"},
		{"Ed25519", ed, "Ed25519"},
		{"RSA-2048", rsa2048(t), "RSA-2048"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert, rec, err := ca.SignDevice(MustCSR(t, tc.key, nil), testDeviceID, 24*time.Hour, testNow)
			if err != nil {
				t.Fatalf("SignDevice: %v", err)
			}
			if rec.KeyType != tc.want {
				t.Errorf("got key type %q, want %q", rec.KeyType, tc.want)
			}
			if !pkEqual(cert.PublicKey, tc.key.Public()) {
				t.Error("got a certificate for another public key, want the CSR's")
			}
			checkDeviceCert(t, ca, cert, testDeviceID)
		})
	}
}

// forgedSigner holds no private key: its public key is the Ed25519
// identity point (of small order), and it "signs" anything with R the
// identity and S = 0, which verifies under that key for every message.
type forgedSigner struct{}

func (forgedSigner) Public() crypto.PublicKey {
	k := make(ed25519.PublicKey, ed25519.PublicKeySize)
	k[0] = 1
	return k
}

func (forgedSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	sig := make([]byte, ed25519.SignatureSize)
	sig[0] = 1
	return sig, nil
}

// TestSignDevice_RefusesSmallOrderEd25519Key: a CSR for a small-order key
// passes the standard library's signature check without any private key;
// the CA refuses it (see ed25519voi.CheckPublicKey for the other keys no
// key generation makes).
func TestSignDevice_RefusesSmallOrderEd25519Key(t *testing.T) {
	csr := MustCSR(t, forgedSigner{}, nil)
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("the forged CSR's signature does not check (the test's premise): %v", err)
	}
	ca, _ := MustCA(t)
	_, _, err := ca.SignDevice(csr, testDeviceID, 24*time.Hour, testNow)
	if pylon.ErrorCode(err) != pylon.EBADREQUEST {
		t.Fatalf("got %v, want %s", err, pylon.EBADREQUEST)
	}
}

func pkEqual(a, b crypto.PublicKey) bool {
	return a.(interface{ Equal(crypto.PublicKey) bool }).Equal(b)
}

func TestSignDevice_Record(t *testing.T) {
	ca, _ := MustCA(t)
	cert, rec, err := ca.SignDevice(MustCSR(t, MustP256(t), nil), testDeviceID, 48*time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"serial", rec.Serial, fmt.Sprintf("%x", cert.SerialNumber)},
		{"device id", rec.DeviceID, testDeviceID},
		{"status", rec.Status, pylon.CertValid},
		{"created at", rec.CreatedAt, testNow},
		{"not before", cert.NotBefore, testNow.Add(-time.Minute)},
		{"not after", cert.NotAfter, testNow.Add(48 * time.Hour)},
		{"record not before", rec.NotBefore, cert.NotBefore},
		{"record not after", rec.NotAfter, cert.NotAfter},
		{"DER", bytes.Equal(rec.DER, cert.Raw), true},
		{"lower case", rec.Serial == strings.ToLower(rec.Serial), true},
		{"no leading zero", !strings.HasPrefix(rec.Serial, "0"), true},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func TestSignDevice_RefusesRSA1024(t *testing.T) {
	ca, _ := MustCA(t)
	key, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Skipf("cannot generate an RSA-1024 key here: %v", err)
	}
	_, _, err = ca.SignDevice(MustCSR(t, key, nil), testDeviceID, time.Hour, testNow)
	if got := pylon.ErrorCode(err); got != pylon.EBADREQUEST {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EBADREQUEST)
	}
}

func TestSignDevice_RefusesP521(t *testing.T) {
	ca, _ := MustCA(t)
	key, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = ca.SignDevice(MustCSR(t, key, nil), testDeviceID, time.Hour, testNow)
	if got := pylon.ErrorCode(err); got != pylon.EBADREQUEST {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EBADREQUEST)
	}
}

func TestSignDevice_RefusesBadSignature(t *testing.T) {
	ca, _ := MustCA(t)
	der := mustCSRDER(t, MustP256(t), nil)
	der[len(der)-1] ^= 0x01 // the last byte of the signature
	csr := mustParseCSR(t, der)
	_, _, err := ca.SignDevice(csr, testDeviceID, time.Hour, testNow)
	if got := pylon.ErrorCode(err); got != pylon.EBADREQUEST {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EBADREQUEST)
	}
}

func TestSignDevice_RefusesSHA1Signature(t *testing.T) {
	ca, _ := MustCA(t)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: "old"},
		SignatureAlgorithm: x509.SHA1WithRSA,
	}, rsa2048(t))
	if err != nil {
		t.Skipf("cannot make a SHA-1 CSR here: %v", err)
	}
	_, _, err = ca.SignDevice(mustParseCSR(t, der), testDeviceID, time.Hour, testNow)
	if got := pylon.ErrorCode(err); got != pylon.EBADREQUEST {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EBADREQUEST)
	}
}

func TestSignDevice_RefusesNilCSR(t *testing.T) {
	ca, _ := MustCA(t)
	_, _, err := ca.SignDevice(nil, testDeviceID, time.Hour, testNow)
	if got := pylon.ErrorCode(err); got != pylon.EBADREQUEST {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EBADREQUEST)
	}
}

func TestSignDevice_RefusesBadDeviceID(t *testing.T) {
	ca, _ := MustCA(t)
	csr := MustCSR(t, MustP256(t), nil)
	for _, tc := range []struct{ name, id string }{
		{"empty", ""},
		{"too long", strings.Repeat("a", 65)},
		{"space", "a b"},
		{"slash", "a/b"},
		{"MQTT wildcard", "a+#"},
		{"control", "a\x00b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ca.SignDevice(csr, tc.id, time.Hour, testNow)
			if got := pylon.ErrorCode(err); got != pylon.EINVALID {
				t.Fatalf("got code %q (%v), want %q", got, err, pylon.EINVALID)
			}
		})
	}
}

func TestSignDevice_RefusesNonPositiveLifetime(t *testing.T) {
	ca, _ := MustCA(t)
	_, _, err := ca.SignDevice(MustCSR(t, MustP256(t), nil), testDeviceID, 0, testNow)
	if got := pylon.ErrorCode(err); got != pylon.EINVALID {
		t.Fatalf("got code %q (%v), want %q", got, err, pylon.EINVALID)
	}
}

func TestSignDevice_IgnoresCSRAskingForCA(t *testing.T) {
	ca, _ := MustCA(t)
	bc, err := asn1.Marshal(struct {
		IsCA       bool
		MaxPathLen int
	}{true, 5})
	if err != nil {
		t.Fatal(err)
	}
	ku, err := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7}) // keyCertSign, cRLSign
	if err != nil {
		t.Fatal(err)
	}
	csr := MustCSR(t, MustP256(t), &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: testDeviceID},
		ExtraExtensions: []pkix.Extension{
			{Id: oidBasicConstraints, Critical: true, Value: bc},
			{Id: oidKeyUsage, Critical: true, Value: ku},
		},
	})
	if !hasExtension(csr.Extensions, oidBasicConstraints) {
		t.Fatal("test CSR lacks its basic constraints request")
	}
	cert, _, err := ca.SignDevice(csr, testDeviceID, time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	checkDeviceCert(t, ca, cert, testDeviceID)
}

func TestSignDevice_IgnoresCSRAskingForOtherCN(t *testing.T) {
	ca, _ := MustCA(t)
	csr := MustCSR(t, MustP256(t), &x509.CertificateRequest{Subject: pkix.Name{
		CommonName:         "other-device",
		Organization:       []string{"Pylon devices", "Evil Corp"},
		OrganizationalUnit: []string{"admins"},
		Country:            []string{"XX"},
		SerialNumber:       "42",
	}})
	cert, _, err := ca.SignDevice(csr, testDeviceID, time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	checkDeviceCert(t, ca, cert, testDeviceID)
}

func TestSignDevice_IgnoresCSRAskingForSANs(t *testing.T) {
	ca, _ := MustCA(t)
	u, _ := url.Parse("spiffe://pylon/admin")
	csr := MustCSR(t, MustP256(t), &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: testDeviceID},
		DNSNames:       []string{"pylon.example.com", "*.example.com"},
		IPAddresses:    []net.IP{net.ParseIP("127.0.0.1")},
		EmailAddresses: []string{"admin@example.com"},
		URIs:           []*url.URL{u},
	})
	if !hasExtension(csr.Extensions, oidSAN) {
		t.Fatal("test CSR lacks its SAN request")
	}
	cert, _, err := ca.SignDevice(csr, testDeviceID, time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	checkDeviceCert(t, ca, cert, testDeviceID)
	if hasExtension(cert.Extensions, oidSAN) {
		t.Error("got a SAN extension, want none")
	}
}

func TestSignDevice_IgnoresCSRAskingForExtraEKUs(t *testing.T) {
	ca, _ := MustCA(t)
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{
		{1, 3, 6, 1, 5, 5, 7, 3, 1}, // serverAuth
		{1, 3, 6, 1, 5, 5, 7, 3, 2}, // clientAuth
		{1, 3, 6, 1, 5, 5, 7, 3, 3}, // codeSigning
		{2, 5, 29, 37, 0},           // anyExtendedKeyUsage
	})
	if err != nil {
		t.Fatal(err)
	}
	csr := MustCSR(t, MustP256(t), &x509.CertificateRequest{
		Subject:         pkix.Name{CommonName: testDeviceID},
		ExtraExtensions: []pkix.Extension{{Id: oidEKU, Value: eku}},
	})
	if !hasExtension(csr.Extensions, oidEKU) {
		t.Fatal("test CSR lacks its EKU request")
	}
	cert, _, err := ca.SignDevice(csr, testDeviceID, time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	checkDeviceCert(t, ca, cert, testDeviceID)
}

func TestSignDevice_VerifiesAsClientOnly(t *testing.T) {
	ca, _ := MustCA(t)
	cert, _, err := ca.SignDevice(MustCSR(t, MustP256(t), nil), testDeviceID, time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		usage x509.ExtKeyUsage
		ok    bool
	}{
		{"client auth", x509.ExtKeyUsageClientAuth, true},
		{"server auth", x509.ExtKeyUsageServerAuth, false},
		{"code signing", x509.ExtKeyUsageCodeSigning, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cert.Verify(x509.VerifyOptions{Roots: ca.CertPool(), CurrentTime: testNow, KeyUsages: []x509.ExtKeyUsage{tc.usage}})
			if got := err == nil; got != tc.ok {
				t.Errorf("got verified %v (%v), want %v", got, err, tc.ok)
			}
		})
	}
	// Another CA's pool does not accept it.
	other, _ := MustCA(t)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: other.CertPool(), CurrentTime: testNow, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("got verified against another CA, want an error")
	}
}

func TestSignDevice_SerialsUniqueAndLarge(t *testing.T) {
	ca, _ := MustCA(t)
	csr := MustCSR(t, MustP256(t), nil)
	const n = 64
	seen := map[string]bool{}
	small := 0
	for i := 0; i < n; i++ {
		cert, rec, err := ca.SignDevice(csr, testDeviceID, time.Hour, testNow)
		if err != nil {
			t.Fatal(err)
		}
		s := cert.SerialNumber
		if s.Sign() <= 0 {
			t.Fatalf("got serial %v, want positive", s)
		}
		if l := len(s.Bytes()); l > 20 {
			t.Fatalf("got serial of %d bytes, want at most 20", l)
		}
		if s.Cmp(new(big.Int).Lsh(big.NewInt(1), 100)) < 0 {
			small++
		}
		if seen[rec.Serial] {
			t.Fatalf("got serial %s twice, want unique", rec.Serial)
		}
		seen[rec.Serial] = true
	}
	// P(serial < 2^100) is 2^-28 per serial.
	if small > 1 {
		t.Errorf("got %d of %d serials below 2^100, want at most 1", small, n)
	}
}

func TestSignDevice_LifetimeCappedAtCA(t *testing.T) {
	ca, _ := MustCA(t)
	now := ca.Cert.NotAfter.Add(-24 * time.Hour)
	cert, _, err := ca.SignDevice(MustCSR(t, MustP256(t), nil), testDeviceID, 30*24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("got NotAfter %v, want the CA's %v", cert.NotAfter, ca.Cert.NotAfter)
	}
	if _, _, err := ca.SignDevice(MustCSR(t, MustP256(t), nil), testDeviceID, time.Hour, ca.Cert.NotAfter); err == nil {
		t.Error("got no error signing with an expired CA, want one")
	}
}

func TestCRL(t *testing.T) {
	ca, _ := MustCA(t)
	revokedAt := testNow.Add(-time.Hour)
	certs := []*pylon.Certificate{
		{Serial: "1f2e3d4c5b6a79881f2e3d4c5b6a7988", Status: pylon.CertRevoked, Reason: "key_compromise", RevokedAt: &revokedAt},
		{Serial: "abc", Status: pylon.CertSuperseded, Reason: "superseded", RevokedAt: &revokedAt},
		{Serial: "def0", Status: pylon.CertRevoked, Reason: "lost"},
		{Serial: "1234", Status: pylon.CertRevoked, Reason: "decommissioned", RevokedAt: &revokedAt},
	}
	wantReason := map[string]int{"1f2e3d4c5b6a79881f2e3d4c5b6a7988": 1, "abc": 4, "def0": 0, "1234": 5}
	wantTime := map[string]time.Time{"1f2e3d4c5b6a79881f2e3d4c5b6a7988": revokedAt, "abc": revokedAt, "def0": testNow, "1234": revokedAt}

	der, err := ca.CRL(certs, testNow)
	if err != nil {
		t.Fatalf("CRL: %v", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("ParseRevocationList: %v", err)
	}
	if err := crl.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if !crl.ThisUpdate.Equal(testNow) || !crl.NextUpdate.Equal(testNow.Add(time.Hour)) {
		t.Errorf("got this/next update %v/%v, want %v/+1h", crl.ThisUpdate, crl.NextUpdate, testNow)
	}
	if got, want := crl.Number.Int64(), testNow.UnixMilli(); got != want {
		t.Errorf("got number %d, want %d", got, want)
	}
	if got := len(crl.RevokedCertificateEntries); got != len(certs) {
		t.Fatalf("got %d entries, want %d", got, len(certs))
	}
	for _, e := range crl.RevokedCertificateEntries {
		s := fmt.Sprintf("%x", e.SerialNumber)
		want, ok := wantReason[s]
		if !ok {
			t.Errorf("got unexpected serial %s", s)
			continue
		}
		if e.ReasonCode != want {
			t.Errorf("%s: got reason %d, want %d", s, e.ReasonCode, want)
		}
		if !e.RevocationTime.Equal(wantTime[s]) {
			t.Errorf("%s: got revocation time %v, want %v", s, e.RevocationTime, wantTime[s])
		}
	}

	// Numbers increase, even within one millisecond.
	again, err := ca.CRL(nil, testNow)
	if err != nil {
		t.Fatal(err)
	}
	crl2, err := x509.ParseRevocationList(again)
	if err != nil {
		t.Fatal(err)
	}
	if crl2.Number.Cmp(crl.Number) <= 0 {
		t.Errorf("got number %v after %v, want higher", crl2.Number, crl.Number)
	}
	if n := len(crl2.RevokedCertificateEntries); n != 0 {
		t.Errorf("got %d entries in an empty CRL, want 0", n)
	}
}

func TestCRL_RefusesBadSerial(t *testing.T) {
	ca, _ := MustCA(t)
	for _, serial := range []string{"", "xyz", "-12", "0"} {
		t.Run(serial, func(t *testing.T) {
			_, err := ca.CRL([]*pylon.Certificate{{Serial: serial, Status: pylon.CertRevoked}}, testNow)
			if err == nil {
				t.Fatalf("got no error for serial %q, want one", serial)
			}
		})
	}
}

func hasExtension(exts []pkix.Extension, id asn1.ObjectIdentifier) bool {
	for _, e := range exts {
		if e.Id.Equal(id) {
			return true
		}
	}
	return false
}

func BenchmarkSignDevice(b *testing.B) {
	ca, _ := MustCA(b)
	der := mustCSRDER(b, MustP256(b), nil)
	b.ReportAllocs()
	for b.Loop() {
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := ca.SignDevice(csr, testDeviceID, 30*24*time.Hour, testNow); err != nil {
			b.Fatal(err)
		}
	}
}

func TestSignDevice_Concurrent(t *testing.T) {
	ca, _ := MustCA(t)
	csr := MustCSR(t, MustP256(t), nil)
	var wg sync.WaitGroup
	serials := make(chan string, 32)
	numbers := make(chan *big.Int, 32)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 4; j++ {
				_, rec, err := ca.SignDevice(csr, testDeviceID, time.Hour, testNow)
				if err != nil {
					t.Error(err)
					return
				}
				serials <- rec.Serial
				der, err := ca.CRL(nil, testNow)
				if err != nil {
					t.Error(err)
					return
				}
				crl, err := x509.ParseRevocationList(der)
				if err != nil {
					t.Error(err)
					return
				}
				numbers <- crl.Number
			}
		}()
	}
	wg.Wait()
	close(serials)
	close(numbers)
	seen := map[string]bool{}
	for s := range serials {
		if seen[s] {
			t.Errorf("got serial %s twice, want unique", s)
		}
		seen[s] = true
	}
	seenN := map[string]bool{}
	for n := range numbers {
		if seenN[n.String()] {
			t.Errorf("got CRL number %v twice, want unique", n)
		}
		seenN[n.String()] = true
	}
	if len(seen) != 32 || len(seenN) != 32 {
		t.Errorf("got %d serials and %d CRL numbers, want 32 each", len(seen), len(seenN))
	}
}
