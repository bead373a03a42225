package httpapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/est"
)

func TestESTCACerts(t *testing.T) {
	f := newFixture(t)
	w := f.serve("GET", "/.well-known/est/cacerts", "")
	if w.Code != 200 {
		t.Fatalf("got %d, want 200", w.Code)
	}
	if got := w.Header().Get("Content-Type"); got != "application/pkcs7-mime" {
		t.Errorf("got Content-Type %q, want application/pkcs7-mime", got)
	}
	if got := w.Header().Get("Content-Transfer-Encoding"); got != "base64" {
		t.Errorf("got Content-Transfer-Encoding %q, want base64", got)
	}
	certs, err := est.DecodeCertsOnly(w.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 1 || !certs[0].Equal(f.ca.cert) {
		t.Errorf("got %d certificates, want the CA", len(certs))
	}
}

// enrollCapture replaces the fake Enroll with one that records its request.
func enrollCapture(f *fixture) *pylon.EnrollRequest {
	var got pylon.EnrollRequest
	f.prov.EnrollFn = func(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error) {
		f.record(ctx, "Enroll")
		got = req
		return f.ca.issue(f.t, devID, req.CSR.PublicKey), nil
	}
	return &got
}

func TestESTSimpleEnroll(t *testing.T) {
	secret, tokenID, hash := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	basic := func(r *http.Request) { r.SetBasicAuth("any-user", secret) }
	tests := []struct {
		name string
		auth reqOpt
	}{
		{"bearer", withHeader("Authorization", "Bearer "+secret)},
		{"basic", basic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			got := enrollCapture(f)
			csr := newCSR(t, "serial-0042")
			w := f.serve("POST", "/.well-known/est/simpleenroll", string(est.EncodeCSR(csr)), tt.auth,
				withHeader("Content-Type", "application/pkcs10"))
			if w.Code != 200 {
				t.Fatalf("got %d, want 200: %s", w.Code, w.Body.String())
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/pkcs7-mime; smime-type=certs-only" {
				t.Errorf("got Content-Type %q, want application/pkcs7-mime; smime-type=certs-only", ct)
			}
			if cte := w.Header().Get("Content-Transfer-Encoding"); cte != "base64" {
				t.Errorf("got Content-Transfer-Encoding %q, want base64", cte)
			}
			certs, err := est.DecodeCertsOnly(w.Body.Bytes())
			if err != nil || len(certs) != 1 {
				t.Fatalf("got %d certificates (%v), want 1", len(certs), err)
			}
			if certs[0].Subject.CommonName != devID {
				t.Errorf("got CN %q, want %q", certs[0].Subject.CommonName, devID)
			}
			if got.TokenID != tokenID || !bytes.Equal(got.SecretHash, hash) {
				t.Errorf("got token %q and a hash, want %q and the secret's hash", got.TokenID, tokenID)
			}
			if got.CSR == nil || !bytes.Equal(got.CSR.Raw, csr) || got.Peer != nil {
				t.Error("the service did not get the CSR (alone)")
			}
			if strings.Contains(f.logBuf.String(), secret) {
				t.Error("the token was logged")
			}
		})
	}
}

func TestESTSimpleEnroll_Unauthorized(t *testing.T) {
	apiSecret, _, _ := pylon.NewSecret(pylon.APITokenPrefix)
	etSecret, _, _ := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	tests := []struct {
		name       string
		auth       reqOpt
		svcErr     error
		wantAudit  bool
		wantCalled bool
	}{
		{"no credentials", func(*http.Request) {}, nil, false, false},
		{"empty basic password", func(r *http.Request) { r.SetBasicAuth("u", "") }, nil, false, false},
		{"malformed token", withHeader("Authorization", "Bearer pyl_et_short"), nil, true, false},
		{"API token", withHeader("Authorization", "Bearer "+apiSecret), nil, true, false},
		{"rejected token", withHeader("Authorization", "Bearer "+etSecret), pylon.Errorf(pylon.EUNAUTHORIZED, "invalid or expired enrollment token"), true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			called := false
			f.prov.EnrollFn = func(context.Context, pylon.EnrollRequest) (*x509.Certificate, error) {
				called = true
				return nil, tt.svcErr
			}
			w := f.serve("POST", "/.well-known/est/simpleenroll", string(est.EncodeCSR(newCSR(t, "x"))), tt.auth)
			checkError(t, w, 401, pylon.EUNAUTHORIZED)
			if got := w.Header().Get("WWW-Authenticate"); got != `Basic realm="pylon-est"` {
				t.Errorf("got WWW-Authenticate %q, want Basic realm=\"pylon-est\"", got)
			}
			if called != tt.wantCalled {
				t.Errorf("service called: %v, want %v", called, tt.wantCalled)
			}
			audits := f.auditList()
			if tt.wantAudit {
				if len(audits) != 1 || audits[0].Action != pylon.ActionAuthFailed || audits[0].Object != "ip:"+remoteIP ||
					string(audits[0].Details) != `{"path":"/.well-known/est/simpleenroll"}` {
					t.Errorf("got audits %+v, want one auth.failed for ip:%s", audits, remoteIP)
				}
			} else if len(audits) != 0 {
				t.Errorf("got %d audit records, want none", len(audits))
			}
		})
	}
}

func TestESTSimpleEnroll_RateLimited(t *testing.T) {
	f := newFixture(t)
	f.prov.EnrollFn = func(context.Context, pylon.EnrollRequest) (*x509.Certificate, error) {
		return nil, pylon.Errorf(pylon.EUNAUTHORIZED, "invalid or expired enrollment token")
	}
	secret, _, _ := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	body := string(est.EncodeCSR(newCSR(t, "x")))
	for range 10 {
		checkError(t, f.serve("POST", "/.well-known/est/simpleenroll", body, withHeader("Authorization", "Bearer "+secret)), 401, pylon.EUNAUTHORIZED)
	}
	w := f.serve("POST", "/.well-known/est/simpleenroll", body, withHeader("Authorization", "Bearer "+secret))
	checkError(t, w, 429, pylon.ERATELIMITED)
	if w.Header().Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
}

func TestESTSimpleEnroll_Errors(t *testing.T) {
	secret, _, _ := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	auth := withHeader("Authorization", "Bearer "+secret)
	good := string(est.EncodeCSR(newCSR(t, "x")))
	tests := []struct {
		name       string
		body       string
		svcErr     error
		wantStatus int
		wantCode   string
	}{
		{"garbage CSR", "not base64!", nil, 400, pylon.EBADREQUEST},
		{"empty CSR", "", nil, 400, pylon.EBADREQUEST},
		{"1 MB CSR", strings.Repeat("A", 1<<20), nil, 413, pylon.ETOOLARGE},
		{"bad signature", good, pylon.Errorf(pylon.EBADREQUEST, "CSR signature invalid"), 400, pylon.EBADREQUEST},
		{"suspended device", good, pylon.Errorf(pylon.EFORBIDDEN, "device is suspended"), 403, pylon.EFORBIDDEN},
		{"name taken", good, pylon.Errorf(pylon.ECONFLICT, "device name already exists"), 409, pylon.ECONFLICT},
		{"bad common name", good, pylon.Errorf(pylon.EINVALID, "name: required"), 422, pylon.EINVALID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			called := false
			f.prov.EnrollFn = func(context.Context, pylon.EnrollRequest) (*x509.Certificate, error) {
				called = true
				return nil, tt.svcErr
			}
			checkError(t, f.serve("POST", "/.well-known/est/simpleenroll", tt.body, auth), tt.wantStatus, tt.wantCode)
			if called != (tt.svcErr != nil) {
				t.Errorf("service called: %v, want %v", called, tt.svcErr != nil)
			}
			if n := len(f.auditList()); n != 0 {
				t.Errorf("got %d audit records, want none", n)
			}
		})
	}
}

// TestESTSimpleEnroll_TooLargeUnknownLength sends a 1 MB CSR without a
// Content-Length: reading stops at the limit.
func TestESTSimpleEnroll_TooLargeUnknownLength(t *testing.T) {
	f := newFixture(t)
	secret, _, _ := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	src := &countingReader{r: strings.NewReader(strings.Repeat("A", 1<<20))}
	w := f.serve("POST", "/.well-known/est/simpleenroll", "", withHeader("Authorization", "Bearer "+secret), func(r *http.Request) {
		r.Body = io.NopCloser(src)
		r.ContentLength = -1
	})
	checkError(t, w, 413, pylon.ETOOLARGE)
	if src.n > 2*est.MaxCSRSize {
		t.Errorf("read %d bytes, want at most about %d", src.n, est.MaxCSRSize)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestESTSimpleReenroll_NoClientCert(t *testing.T) {
	f := newFixture(t)
	body := string(est.EncodeCSR(newCSR(t, devID)))
	w := f.serve("POST", "/.well-known/est/simplereenroll", body)
	checkError(t, w, 401, pylon.EUNAUTHORIZED)
	if w.Header().Get("WWW-Authenticate") == "" {
		t.Error("no WWW-Authenticate")
	}

	// Over real TLS without a client certificate, and with an enrollment
	// token instead: still 401.
	url := f.start()
	secret, _, _ := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	c := f.client(url, "")
	req, _ := http.NewRequest("POST", url+"/.well-known/est/simplereenroll", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("got %d, want 401", resp.StatusCode)
	}
	for _, call := range f.callList() {
		if call == "Reenroll" {
			t.Error("Reenroll called without a client certificate")
		}
	}
}

// estClient returns an HTTP client presenting cert.
func estClient(f *fixture, cert tls.Certificate) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs:      f.ca.pool(),
		Certificates: []tls.Certificate{cert},
	}}}
}

func TestESTSimpleReenroll(t *testing.T) {
	f := newFixture(t)
	var (
		mu        sync.Mutex
		got       pylon.EnrollRequest
		principal pylon.Principal
	)
	f.prov.ReenrollFn = func(ctx context.Context, req pylon.EnrollRequest) (*x509.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		got, principal = req, pylon.PrincipalFromContext(ctx)
		return f.ca.issue(t, devID, req.CSR.PublicKey), nil
	}
	url := f.start()
	clientCert := f.ca.clientCert(t, devID)
	csr := newCSR(t, devID)
	resp, err := estClient(f, clientCert).Post(url+"/.well-known/est/simplereenroll", "application/pkcs10", bytes.NewReader(est.EncodeCSR(csr)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("got %d, want 200: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/pkcs7-mime; smime-type=certs-only" {
		t.Errorf("got Content-Type %q", ct)
	}
	certs, err := est.DecodeCertsOnly(body)
	if err != nil || len(certs) != 1 {
		t.Fatalf("got %d certificates (%v), want 1", len(certs), err)
	}
	mu.Lock()
	if got.Peer == nil || !got.Peer.Equal(clientCert.Leaf) {
		t.Error("the service did not get the client certificate as peer")
	}
	if got.CSR == nil || !bytes.Equal(got.CSR.Raw, csr) || got.TokenID != "" {
		t.Error("the service did not get the CSR (alone)")
	}
	if principal.Kind != pylon.PrincipalDevice || principal.ID != devID {
		t.Errorf("got principal %+v, want device %s", principal, devID)
	}

	mu.Unlock()
	f.prov.ReenrollFn = func(context.Context, pylon.EnrollRequest) (*x509.Certificate, error) {
		return nil, pylon.Errorf(pylon.EFORBIDDEN, "certificate not valid for renewal")
	}
	resp, err = estClient(f, clientCert).Post(url+"/.well-known/est/simplereenroll", "application/pkcs10", bytes.NewReader(est.EncodeCSR(csr)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("refused renewal: got %d, want 403", resp.StatusCode)
	}
}

func TestESTSimpleReenroll_ForeignClientCert(t *testing.T) {
	f := newFixture(t)
	url := f.start()
	other := newTestCA(t)
	_, err := estClient(f, other.clientCert(t, devID)).Post(url+"/.well-known/est/simplereenroll", "application/pkcs10", strings.NewReader("x"))
	if err == nil {
		t.Error("got a response for a certificate of another CA, want a TLS error")
	}
}
