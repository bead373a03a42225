package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// File names inside a CA directory.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
)

// Validity and limits.
const (
	caValidityYears   = 20
	serverValidity    = 365 * 24 * time.Hour
	serverRenewBefore = 30 * 24 * time.Hour
	clockSkew         = time.Minute // certificates start this much before now
	maxPEMFileSize    = 1 << 20
	maxHosts          = 100
	maxHostLen        = 253
	maxCommonNameLen  = 64 // ub-common-name, RFC 5280
)

// CA is the platform's certificate authority, kept in a directory.
type CA struct {
	Cert *x509.Certificate

	key crypto.Signer

	mu      sync.Mutex
	lastCRL int64 // number of the last CRL made
}

// LoadOrCreateCA loads DIR/ca.crt and DIR/ca.key, or creates them on first
// use: an ECDSA P-256 root valid for 20 years. It fails closed: a key file
// with group or other permission bits, a key that does not match the
// certificate, a certificate that is not a CA or has expired, or only one of
// the two files present is an error. The returned bool is true when the CA
// was created now.
func LoadOrCreateCA(dir string, now time.Time) (*CA, bool, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	ca, err := loadExistingCA(certPath, keyPath, now)
	if err != nil || ca != nil {
		return ca, false, err
	}
	ca, err = createCA(dir, certPath, keyPath, now)
	if err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// CheckFiles checks, creating and changing nothing, the files of dir that
// LoadOrCreateCA and ServerCertificate read: the CA as LoadOrCreateCA
// would load it, and the server key's permissions. Missing files are no
// error: the server would create them.
func CheckFiles(dir string, now time.Time) error {
	if _, err := loadExistingCA(filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile), now); err != nil {
		return err
	}
	_, _, err := loadServerFiles(filepath.Join(dir, serverCertFile), filepath.Join(dir, serverKeyFile))
	return err
}

// loadExistingCA loads the CA from its two files, or returns nil if
// neither exists. Only one of them is an error.
func loadExistingCA(certPath, keyPath string, now time.Time) (*CA, error) {
	certExists, err := fileExists(certPath)
	if err != nil {
		return nil, err
	}
	keyExists, err := fileExists(keyPath)
	if err != nil {
		return nil, err
	}
	switch {
	case certExists && keyExists:
		return loadCA(certPath, keyPath, now)
	case certExists:
		return nil, fmt.Errorf("%s exists but %s does not: restore the key or remove both to create a new CA", certPath, keyPath)
	case keyExists:
		return nil, fmt.Errorf("%s exists but %s does not: restore the certificate or remove both to create a new CA", keyPath, certPath)
	}
	return nil, nil
}

func loadCA(certPath, keyPath string, now time.Time) (*CA, error) {
	key, err := readPrivateKey(keyPath)
	if err != nil {
		return nil, err
	}
	cert, err := readCertificate(certPath)
	if err != nil {
		return nil, err
	}
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return nil, fmt.Errorf("%s is not a CA certificate", certPath)
	case cert.KeyUsage&x509.KeyUsageCertSign == 0 || cert.KeyUsage&x509.KeyUsageCRLSign == 0:
		return nil, fmt.Errorf("%s lacks the certSign and cRLSign key usages", certPath)
	case len(cert.SubjectKeyId) == 0:
		return nil, fmt.Errorf("%s has no subject key identifier", certPath)
	case !publicKeysEqual(cert.PublicKey, key.Public()):
		return nil, fmt.Errorf("%s does not match %s", keyPath, certPath)
	case !now.Before(cert.NotAfter):
		return nil, fmt.Errorf("CA certificate %s expired at %s", certPath, cert.NotAfter.Format(time.RFC3339))
	}
	if bytes.Equal(cert.RawIssuer, cert.RawSubject) {
		if err := cert.CheckSignatureFrom(cert); err != nil {
			return nil, fmt.Errorf("check self-signature of %s: %w", certPath, err)
		}
	}
	return &CA{Cert: cert, key: key}, nil
}

func createCA(dir, certPath, keyPath string, now time.Time) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CA directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, err
	}
	var tag [4]byte
	if _, err := rand.Read(tag[:]); err != nil {
		return nil, fmt.Errorf("read random: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   "Pylon Root CA " + hex.EncodeToString(tag[:]),
			Organization: []string{"Pylon"},
		},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(caValidityYears, 0, 0),
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal CA key: %w", err)
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("write CA key: %w", err)
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		os.Remove(keyPath) // do not leave a key without its certificate
		return nil, fmt.Errorf("write CA certificate: %w", err)
	}
	return &CA{Cert: cert, key: key}, nil
}

// CertPool returns a pool holding the CA certificate.
func (ca *CA) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// ServerCertificate loads DIR/server.crt and DIR/server.key, or (re)issues
// them when missing or unreadable, not issued by ca, not covering hosts,
// or expiring within 30 days. The certificate covers hosts plus localhost,
// 127.0.0.1 and ::1; its CN is the first host. It returns the leaf alone,
// with Leaf set: every client must already trust the CA, so sending the
// root in each handshake would only cost bytes and parsing (RFC 8446
// §4.4.2 lets it be omitted). A key file that others can read is an error.
func (ca *CA) ServerCertificate(dir string, hosts []string, now time.Time) (tls.Certificate, error) {
	names, ips, cn, err := splitHosts(hosts)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPath, keyPath := filepath.Join(dir, serverCertFile), filepath.Join(dir, serverKeyFile)
	leaf, key, err := loadServerFiles(certPath, keyPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	if leaf == nil || !ca.serverCertFits(leaf, key, names, ips, now) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return tls.Certificate{}, fmt.Errorf("create server certificate directory: %w", err)
		}
		if leaf, key, err = ca.issueServer(certPath, keyPath, cn, names, ips, now); err != nil {
			return tls.Certificate{}, err
		}
	}
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// loadServerFiles returns the server certificate and key, or nil ones when
// they are missing or unusable and must be reissued. Only I/O errors and
// an insecure key file are errors.
func loadServerFiles(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	key, err := readPrivateKey(keyPath)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errBadPEM) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	leaf, err := readCertificate(certPath)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errBadPEM) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	return leaf, key, nil
}

// serverCertFits reports whether leaf can be kept: issued by ca for key,
// a server certificate, covering every name and IP, and valid for more
// than serverRenewBefore.
func (ca *CA) serverCertFits(leaf *x509.Certificate, key crypto.Signer, names []string, ips []net.IP, now time.Time) bool {
	if leaf.CheckSignatureFrom(ca.Cert) != nil || !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return false
	}
	if now.Before(leaf.NotBefore) || !now.Add(serverRenewBefore).Before(leaf.NotAfter) {
		return false
	}
	serverAuth := false
	for _, u := range leaf.ExtKeyUsage {
		serverAuth = serverAuth || u == x509.ExtKeyUsageServerAuth
	}
	if !serverAuth {
		return false
	}
	for _, n := range names {
		found := false
		for _, have := range leaf.DNSNames {
			found = found || strings.EqualFold(n, have)
		}
		if !found {
			return false
		}
	}
	for _, ip := range ips {
		found := false
		for _, have := range leaf.IPAddresses {
			found = found || ip.Equal(have)
		}
		if !found {
			return false
		}
	}
	return true
}

func (ca *CA) issueServer(certPath, keyPath, cn string, names []string, ips []net.IP, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	if ca.key == nil {
		return nil, nil, errors.New("CA has no private key")
	}
	if !now.Before(ca.Cert.NotAfter) {
		return nil, nil, errors.New("CA certificate expired")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate server key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(serverValidity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:              names,
		IPAddresses:           ips,
		AuthorityKeyId:        ca.Cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("create server certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal server key: %w", err)
	}
	// The key first: a crash in between leaves a mismatched pair, which
	// the next start reissues.
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, nil, fmt.Errorf("write server key: %w", err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})...)
	if err := writeFileAtomic(certPath, chain, 0o644); err != nil {
		return nil, nil, fmt.Errorf("write server certificate: %w", err)
	}
	return leaf, key, nil
}

// splitHosts sorts hosts into DNS names and IP addresses, adds localhost,
// 127.0.0.1 and ::1, drops duplicates and picks the common name: the first
// host that fits in a CN.
func splitHosts(hosts []string) (names []string, ips []net.IP, cn string, err error) {
	if len(hosts) > maxHosts {
		return nil, nil, "", fmt.Errorf("more than %d server host names", maxHosts)
	}
	all := make([]string, 0, len(hosts)+3)
	all = append(all, hosts...)
	all = append(all, "localhost", "127.0.0.1", "::1")
	for _, h := range all {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			dup := false
			for _, have := range ips {
				dup = dup || have.Equal(ip)
			}
			if !dup {
				ips = append(ips, ip)
				if cn == "" {
					cn = ip.String()
				}
			}
			continue
		}
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if !validDNSName(h) {
			return nil, nil, "", fmt.Errorf("server host %q is not a DNS name or IP address", truncate(h, 70))
		}
		dup := false
		for _, have := range names {
			dup = dup || have == h
		}
		if !dup {
			names = append(names, h)
			if cn == "" && len(h) <= maxCommonNameLen {
				cn = h
			}
		}
	}
	if cn == "" {
		cn = "localhost"
	}
	return names, ips, cn, nil
}

// validDNSName reports whether s is a host name, possibly with a wildcard
// first label: labels of letters, digits, '-' and '_' (seen in real host
// names) separated by dots.
func validDNSName(s string) bool {
	if s == "" || len(s) > maxHostLen {
		return false
	}
	for i, label := range strings.Split(s, ".") {
		if label == "*" && i == 0 {
			continue
		}
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for j := 0; j < len(label); j++ {
			c := label[j]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// errBadPEM marks a file that is not the PEM it should be.
var errBadPEM = errors.New("bad PEM file")

// readPrivateKey reads a PEM private key (PKCS#8, or SEC 1 / PKCS#1 for
// keys made by other tools) from a file that only its owner may access.
func readPrivateKey(path string) (crypto.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o: a private key must not be accessible to group or others (chmod 600)", path, perm)
	}
	data, err := readLimited(f, path)
	if err != nil {
		return nil, err
	}
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("%s: no private key found: %w", path, errBadPEM)
		}
		var key any
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: parse private key: %w (%w)", path, err, errBadPEM)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: unsupported private key type %T: %w", path, key, errBadPEM)
		}
		return signer, nil
	}
}

// readCertificate reads the first certificate of a PEM file.
func readCertificate(path string) (*x509.Certificate, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open certificate: %w", err)
	}
	defer f.Close()
	data, err := readLimited(f, path)
	if err != nil {
		return nil, err
	}
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("%s: no certificate found: %w", path, errBadPEM)
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: parse certificate: %w (%w)", path, err, errBadPEM)
		}
		return cert, nil
	}
}

func readLimited(r io.Reader, path string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxPEMFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	} else if len(data) > maxPEMFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxPEMFileSize)
	}
	return data, nil
}

func fileExists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("stat %s: %w", path, err)
}

// writeFileAtomic writes data to a temporary file with mode perm in the
// same directory and renames it over name, so that name never holds a
// partial file or, for a key, one with wider permissions.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*") // mode 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename, a no-op
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil { // persist the rename; best effort
		d.Sync()
		d.Close()
	}
	return nil
}

// randomSerial returns a random positive serial number of 128 bits (at most
// 17 bytes in DER, within the 20 that RFC 5280 allows).
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID returns the key identifier of pub: the SHA-256 of its
// subjectPublicKey bits truncated to 160 bits (RFC 7093 §2, method 1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	switch k := a.(type) {
	case *ecdsa.PublicKey:
		return k.Equal(b)
	case *rsa.PublicKey:
		return k.Equal(b)
	case ed25519.PublicKey:
		return k.Equal(b)
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
