package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/est"
)

// Limits of the HTTPS exchanges with the server.
const (
	httpTimeout     = 30 * time.Second
	maxErrorBody    = 64 << 10
	maxInfoBody     = 64 << 10
	maxCommonName   = 64 // bytes; X.509 upper bound for a CN
	defaultCNPrefix = "device-"
)

// EnrollOption configures Enroll.
type EnrollOption func(*enrollConfig)

type enrollConfig struct {
	keyType    KeyType
	commonName string
	logger     *slog.Logger
}

// WithKeyType chooses the key the device generates: KeyP256 (the default)
// or KeyEd25519.
func WithKeyType(kt KeyType) EnrollOption { return func(c *enrollConfig) { c.keyType = kt } }

// WithCommonName sets the common name of the certificate request. With a
// fleet enrollment token it becomes the new device's name (a serial number,
// say); with a device token it is ignored. The default is "device-"
// followed by 8 random hex digits.
func WithCommonName(cn string) EnrollOption { return func(c *enrollConfig) { c.commonName = cn } }

// WithEnrollLogger sets the logger of Enroll (default: none).
func WithEnrollLogger(l *slog.Logger) EnrollOption { return func(c *enrollConfig) { c.logger = l } }

// Enroll makes a device identity in dir: it generates the key on the
// device, sends a certificate request to the server's EST simpleenroll
// endpoint with the enrollment token, trusting only caCertPEM for HTTPS,
// and stores device.key (0600, PKCS#8 PEM), device.crt, ca.crt, server.url
// and device.id in dir (created 0700), each file atomically, device.id
// last. The token is never stored or logged.
//
// Errors: EINVALID for bad arguments, ECONFLICT if dir already holds an
// identity, and the server's refusal as a *pylon.Error: EUNAUTHORIZED (401:
// unknown, expired, revoked or used-up token), EFORBIDDEN (403: device
// suspended or decommissioned), ECONFLICT (409: a fleet device of that name
// exists), with the server's message.
func Enroll(ctx context.Context, serverURL, token string, caCertPEM []byte, dir string, opts ...EnrollOption) (*Identity, error) {
	cfg := enrollConfig{keyType: KeyP256}
	for _, o := range opts {
		o(&cfg)
	}
	log := cfg.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	serverURL, err := checkServerURL(serverURL)
	if err != nil {
		return nil, err
	}
	switch {
	case token == "":
		return nil, pylon.Errorf(pylon.EINVALID, "enrollment token required")
	case len(token) > 1024:
		return nil, pylon.Errorf(pylon.EINVALID, "enrollment token too long")
	case dir == "":
		return nil, pylon.Errorf(pylon.EINVALID, "directory required")
	case len(cfg.commonName) > maxCommonName:
		return nil, pylon.Errorf(pylon.EINVALID, "common name longer than %d bytes", maxCommonName)
	}
	if cfg.commonName == "" {
		var b [4]byte
		rand.Read(b[:])
		cfg.commonName = defaultCNPrefix + hex.EncodeToString(b[:])
	}
	pool, err := parseCAPool(caCertPEM)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, fileID)); err == nil {
		return nil, pylon.Errorf(pylon.ECONFLICT, "%s already holds an enrolled device", dir)
	}
	key, err := generateKey(cfg.keyType)
	if err != nil {
		return nil, err
	}
	hc := newHTTPClient(pool, nil)
	defer hc.CloseIdleConnections()
	cert, err := simpleEnroll(ctx, hc, serverURL+"/.well-known/est/simpleenroll", "Bearer "+token, key, cfg.commonName, pool)
	if err != nil {
		return nil, err
	}
	id, err := newIdentity(cert.Subject.CommonName, serverURL, cert, key, pool)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if err := storeIdentity(dir, id, caCertPEM); err != nil {
		return nil, fmt.Errorf("enroll: store identity: %w", err)
	}
	log.Info("device enrolled", "device", id.deviceID, "serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter)
	return id.public(dir), nil
}

// storeIdentity writes the identity files, device.id last: a directory
// without device.id holds no identity.
func storeIdentity(dir string, id *identity, caPEM []byte) error {
	if err := mkdirPrivate(dir); err != nil {
		return err
	}
	keyPEM, err := marshalKeyPEM(id.key)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{fileKey, keyPEM, secretPerm},
		{fileCert, certPEM(id.cert), publicPerm},
		{fileCA, caPEM, publicPerm},
		{fileServer, []byte(id.serverURL + "\n"), publicPerm},
	} {
		if err := writeSynced(dir, f.name, f.data, f.perm); err != nil {
			return err
		}
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	return writeAtomic(dir, fileID, []byte(id.deviceID+"\n"), publicPerm)
}

// newHTTPClient returns a client that trusts only pool and, if cert is
// set, presents it as its client certificate.
func newHTTPClient(pool *x509.CertPool, cert *tls.Certificate) *http.Client {
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return &http.Client{
		Timeout:   httpTimeout,
		Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // never follow a redirect with the token
		},
	}
}

// simpleEnroll posts a CSR for key to an EST endpoint and returns the
// checked certificate.
func simpleEnroll(ctx context.Context, hc *http.Client, endpoint, auth string, key crypto.Signer, cn string, pool *x509.CertPool) (*x509.Certificate, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(est.EncodeCSR(der)))
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	req.Header.Set("Content-Type", "application/pkcs10")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, responseError(resp, "enrollment")
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, est.MaxCertsOnlySize+1))
	if err != nil {
		return nil, fmt.Errorf("enroll: read response: %w", err)
	}
	certs, err := est.DecodeCertsOnly(body)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	cert := certs[0]
	switch {
	case !samePublicKey(cert.PublicKey, key.Public()):
		return nil, pylon.Errorf(pylon.EBADREQUEST, "enrollment: the certificate is not for the device's key")
	case !pylon.ValidID(cert.Subject.CommonName):
		return nil, pylon.Errorf(pylon.EBADREQUEST, "enrollment: the certificate names no valid device id")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, pylon.Errorf(pylon.EBADREQUEST, "enrollment: the certificate does not chain to the pinned CA: %v", err)
	}
	return cert, nil
}

// responseError turns an error response into a *pylon.Error, using the
// platform's JSON error body {"error":{"code":"...","message":"..."}}.
func responseError(resp *http.Response, what string) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	code, msg := statusCode(resp.StatusCode), ""
	if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
		msg = e.Error.Message
		if knownCode(e.Error.Code) {
			code = e.Error.Code
		}
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	if len(msg) > 512 {
		msg = msg[:512]
	}
	return pylon.Errorf(code, "%s refused (HTTP %d): %s", what, resp.StatusCode, msg)
}

func statusCode(status int) string {
	switch status {
	case http.StatusBadRequest:
		return pylon.EBADREQUEST
	case http.StatusUnauthorized:
		return pylon.EUNAUTHORIZED
	case http.StatusForbidden:
		return pylon.EFORBIDDEN
	case http.StatusNotFound:
		return pylon.ENOTFOUND
	case http.StatusConflict:
		return pylon.ECONFLICT
	case http.StatusRequestEntityTooLarge:
		return pylon.ETOOLARGE
	case http.StatusUnprocessableEntity:
		return pylon.EINVALID
	case http.StatusTooManyRequests:
		return pylon.ERATELIMITED
	case http.StatusServiceUnavailable:
		return pylon.EUNAVAILABLE
	}
	return pylon.EINTERNAL
}

func knownCode(c string) bool {
	switch c {
	case pylon.EBADREQUEST, pylon.ECONFLICT, pylon.EFORBIDDEN, pylon.EINTERNAL, pylon.EINVALID,
		pylon.ENOTFOUND, pylon.ERATELIMITED, pylon.ETOOLARGE, pylon.EUNAUTHORIZED, pylon.EUNAVAILABLE:
		return true
	}
	return false
}

// reenroll renews the certificate of cur with a new key over mutual TLS
// (EST simplereenroll) and stores the result in dir.
func reenroll(ctx context.Context, dir string, cur *identity) (*identity, error) {
	if cur.serverURL == "" {
		return nil, pylon.Errorf(pylon.EINVALID, "renew: no server URL stored in %s", fileServer)
	}
	key, err := generateKey(cur.keyType)
	if err != nil {
		return nil, err
	}
	hc := newHTTPClient(cur.caPool, cur.tlsCert)
	defer hc.CloseIdleConnections()
	cert, err := simpleEnroll(ctx, hc, cur.serverURL+"/.well-known/est/simplereenroll", "", key, cur.deviceID, cur.caPool)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	next, err := newIdentity(cur.deviceID, cur.serverURL, cert, key, cur.caPool)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	if err := storeRenewal(dir, cur, next); err != nil {
		return nil, fmt.Errorf("renew: store: %w", err)
	}
	return next, nil
}

// fetchMQTTAddr asks the server for the broker address (GET /api/v1/info);
// a leading ':' means the host of the server URL.
func fetchMQTTAddr(ctx context.Context, id *identity) (string, error) {
	hc := newHTTPClient(id.caPool, nil)
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, id.serverURL+"/api/v1/info", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("get server info: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", responseError(resp, "server info")
	}
	var info struct {
		MQTTAddr string `json:"mqtt_addr"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxInfoBody)).Decode(&info); err != nil {
		return "", fmt.Errorf("decode server info: %w", err)
	}
	return resolveMQTTAddr(info.MQTTAddr, id.serverURL)
}
