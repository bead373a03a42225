package pki_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/pki"
)

// testNow is the clock of every test.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// MustCA creates a CA in a temporary directory.
func MustCA(tb testing.TB) (*pki.CA, string) {
	tb.Helper()
	dir := tb.TempDir()
	ca, created, err := pki.LoadOrCreateCA(dir, testNow)
	if err != nil {
		tb.Fatalf("LoadOrCreateCA: %v", err)
	} else if !created {
		tb.Fatal("LoadOrCreateCA: got created false for a new directory, want true")
	}
	return ca, dir
}

// MustP256 returns a new ECDSA P-256 key.
func MustP256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

// MustCSR returns the parsed CSR made from tmpl (a plain one if nil) and
// signed by key.
func MustCSR(tb testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	tb.Helper()
	return mustParseCSR(tb, mustCSRDER(tb, key, tmpl))
}

func mustCSRDER(tb testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	tb.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "sensor-1"}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		tb.Fatalf("CreateCertificateRequest: %v", err)
	}
	return der
}

func mustParseCSR(tb testing.TB, der []byte) *x509.CertificateRequest {
	tb.Helper()
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		tb.Fatalf("ParseCertificateRequest: %v", err)
	}
	return csr
}

// fakeStore is an in-memory pylon.EnrollmentStore and
// pylon.CertificateService with one enrollment token.
type fakeStore struct {
	mu        sync.Mutex
	tokenID   string
	tokenHash []byte
	devices   map[string]*pylon.Device
	certs     map[string]*pylon.Certificate

	enrollCalls, reenrollCalls int
}

var (
	_ pylon.EnrollmentStore    = (*fakeStore)(nil)
	_ pylon.CertificateService = (*fakeStore)(nil)
)

const testSecret = "pyl_et_test-secret"

func newFakeStore() *fakeStore {
	return &fakeStore{
		tokenID:   "tok",
		tokenHash: pylon.HashSecret(testSecret),
		devices:   map[string]*pylon.Device{},
		certs:     map[string]*pylon.Certificate{},
	}
}

func (f *fakeStore) Enroll(ctx context.Context, tokenID string, secretHash []byte, commonName string, issue pylon.IssueFunc) (*pylon.Device, *pylon.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.enrollCalls++
	if tokenID != f.tokenID || subtle.ConstantTimeCompare(secretHash, f.tokenHash) != 1 {
		return nil, nil, pylon.Errorf(pylon.EUNAUTHORIZED, "invalid enrollment token")
	}
	d := &pylon.Device{ID: pylon.NewID(), Name: commonName, State: pylon.DeviceActive}
	rec, err := issue(d)
	if err != nil {
		return nil, nil, err
	}
	f.devices[d.ID] = d
	f.certs[rec.Serial] = rec
	return d, rec, nil
}

func (f *fakeStore) Reenroll(ctx context.Context, serial string, issue pylon.IssueFunc) (*pylon.Device, *pylon.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reenrollCalls++
	c, ok := f.certs[serial]
	if !ok || c.Status != pylon.CertValid {
		return nil, nil, pylon.Errorf(pylon.EFORBIDDEN, "certificate not usable")
	}
	d := f.devices[c.DeviceID]
	rec, err := issue(d)
	if err != nil {
		return nil, nil, err
	}
	f.certs[rec.Serial] = rec
	return d, rec, nil
}

func (f *fakeStore) FindCertificateBySerial(ctx context.Context, serial string) (*pylon.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.certs[serial]; ok {
		return c, nil
	}
	return nil, pylon.Errorf(pylon.ENOTFOUND, "certificate not found")
}

func (f *fakeStore) FindCertificates(ctx context.Context, filter pylon.CertificateFilter) ([]*pylon.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*pylon.Certificate
	for _, c := range f.certs {
		if filter.DeviceID == nil || *filter.DeviceID == c.DeviceID {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out, nil
}

func (f *fakeStore) RevokeCertificate(ctx context.Context, serial, reason string) (*pylon.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.certs[serial]
	if !ok {
		return nil, pylon.Errorf(pylon.ENOTFOUND, "certificate not found")
	}
	if c.Status != pylon.CertRevoked {
		at := testNow
		c.Status, c.RevokedAt, c.Reason = pylon.CertRevoked, &at, reason
	}
	return c, nil
}

func (f *fakeStore) FindRevokedCertificates(ctx context.Context, now time.Time) ([]*pylon.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*pylon.Certificate
	for _, c := range f.certs {
		if c.Status != pylon.CertValid && now.Before(c.NotAfter) {
			out = append(out, c)
		}
	}
	return out, nil
}

func (f *fakeStore) DeleteExpiredCertificates(ctx context.Context, before time.Time) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for serial, c := range f.certs {
		if c.NotAfter.Before(before) {
			delete(f.certs, serial)
			n++
		}
	}
	return n, nil
}

func (f *fakeStore) AuthorizeConnection(ctx context.Context, deviceID, serial string, now time.Time) (*pylon.Device, error) {
	return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "not implemented in the fake")
}
