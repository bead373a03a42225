package device

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
)

// KeyType is the kind of key a device generates.
type KeyType string

// Key types.
const (
	KeyP256    KeyType = "p256"    // ECDSA P-256 (ES256), the default
	KeyEd25519 KeyType = "ed25519" // Ed25519 (EdDSA)
)

// Identity is an enrolled device as stored in its directory: device.key
// (PKCS#8 PEM, 0600), device.crt, ca.crt, device.id and server.url.
type Identity struct {
	DeviceID    string            // the platform's id of the device (the certificate's CN)
	ServerURL   string            // the HTTPS URL the device enrolled with
	Certificate *x509.Certificate // the current device certificate
	Dir         string            // the directory holding the identity
}

// LoadIdentity reads the identity that Enroll stored in dir. It returns an
// error wrapping ErrNotEnrolled if there is none. An interrupted renewal is
// completed or discarded first.
func LoadIdentity(dir string) (*Identity, error) {
	id, err := loadIdentity(dir)
	if err != nil {
		return nil, err
	}
	return id.public(dir), nil
}

// identity is the in-memory form of an Identity, with the key.
type identity struct {
	deviceID  string
	serverURL string
	cert      *x509.Certificate
	key       crypto.Signer
	keyType   KeyType
	fp        [32]byte // SHA-256 of the public key's SubjectPublicKeyInfo
	tlsCert   *tls.Certificate
	caPool    *x509.CertPool
}

func (id *identity) public(dir string) *Identity {
	return &Identity{DeviceID: id.deviceID, ServerURL: id.serverURL, Certificate: id.cert, Dir: dir}
}

func loadIdentity(dir string) (*identity, error) {
	idb, err := readSmall(filepath.Join(dir, fileID))
	if isNotExist(err) {
		return nil, fmt.Errorf("load identity from %s: %w", dir, ErrNotEnrolled)
	} else if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	deviceID := strings.TrimSpace(string(idb))
	if !pylon.ValidID(deviceID) {
		return nil, fmt.Errorf("load identity: %s holds no valid device id", fileID)
	}
	if err := finishRenewal(dir); err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	keyPEM, err := readSmall(filepath.Join(dir, fileKey))
	if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	certPEM, err := readSmall(filepath.Join(dir, fileCert))
	if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	caPEM, err := readSmall(filepath.Join(dir, fileCA))
	if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	serverURL, err := readSmall(filepath.Join(dir, fileServer))
	if err != nil && !isNotExist(err) {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	pool, err := parseCAPool(caPEM)
	if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	id, err := newIdentity(deviceID, strings.TrimSpace(string(serverURL)), cert, key, pool)
	if err != nil {
		return nil, fmt.Errorf("load identity: %w", err)
	}
	return id, nil
}

// newIdentity checks that cert and key belong together and to deviceID.
func newIdentity(deviceID, serverURL string, cert *x509.Certificate, key crypto.Signer, pool *x509.CertPool) (*identity, error) {
	if cert.Subject.CommonName != deviceID {
		return nil, fmt.Errorf("certificate is for %q, not device %q", cert.Subject.CommonName, deviceID)
	}
	if !samePublicKey(cert.PublicKey, key.Public()) {
		return nil, errors.New("the key does not match the certificate")
	}
	fp, err := fingerprint(key.Public())
	if err != nil {
		return nil, err
	}
	kt := KeyP256
	if _, ok := key.(ed25519.PrivateKey); ok {
		kt = KeyEd25519
	}
	return &identity{
		deviceID: deviceID, serverURL: serverURL, cert: cert, key: key, keyType: kt, fp: fp, caPool: pool,
		tlsCert: &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert},
	}, nil
}

// finishRenewal completes a renewal interrupted between writing the new key
// and certificate (device.key.new, device.crt.new) and renaming them into
// place, or removes its leftovers if they do not form a pair.
func finishRenewal(dir string) error {
	newCertPEM, err := readSmall(filepath.Join(dir, fileCert+newSuffix))
	if isNotExist(err) {
		os.Remove(filepath.Join(dir, fileKey+newSuffix))
		return nil
	} else if err != nil {
		return err
	}
	keyName := fileKey + newSuffix
	keyPEM, err := readSmall(filepath.Join(dir, keyName))
	if isNotExist(err) { // crashed after the key's rename
		keyName = fileKey
		keyPEM, err = readSmall(filepath.Join(dir, keyName))
	}
	if err != nil {
		return err
	}
	cert, cerr := parseCertPEM(newCertPEM)
	key, kerr := parseKeyPEM(keyPEM)
	if cerr != nil || kerr != nil || !samePublicKey(cert.PublicKey, key.Public()) {
		// Not a complete pair: the current key and certificate stay.
		os.Remove(filepath.Join(dir, fileCert+newSuffix))
		os.Remove(filepath.Join(dir, fileKey+newSuffix))
		return syncDir(dir)
	}
	if keyName != fileKey {
		if err := os.Rename(filepath.Join(dir, keyName), filepath.Join(dir, fileKey)); err != nil {
			return fmt.Errorf("finish renewal: %w", err)
		}
	}
	if err := os.Rename(filepath.Join(dir, fileCert+newSuffix), filepath.Join(dir, fileCert)); err != nil {
		return fmt.Errorf("finish renewal: %w", err)
	}
	return syncDir(dir)
}

// storeRenewal replaces the key and certificate in dir. The old public key
// is kept in keys/ first, so that messages sealed with it can be re-sealed
// after a crash; then the new pair is written next to the old one and both
// are renamed into place (finishRenewal completes an interrupted rename).
func storeRenewal(dir string, old, next *identity) error {
	if err := saveOldPublicKey(dir, old); err != nil {
		return err
	}
	keyPEM, err := marshalKeyPEM(next.key)
	if err != nil {
		return err
	}
	if err := writeSynced(dir, fileKey+newSuffix, keyPEM, secretPerm); err != nil {
		return err
	}
	if err := writeSynced(dir, fileCert+newSuffix, certPEM(next.cert), publicPerm); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, fileKey+newSuffix), filepath.Join(dir, fileKey)); err != nil {
		return fmt.Errorf("rename key: %w", err)
	}
	if err := os.Rename(filepath.Join(dir, fileCert+newSuffix), filepath.Join(dir, fileCert)); err != nil {
		return fmt.Errorf("rename certificate: %w", err)
	}
	return syncDir(dir)
}

// saveOldPublicKey writes the public key of id to keys/<fingerprint>.pub
// and keeps only the newest maxKeyHistory such files.
func saveOldPublicKey(dir string, id *identity) error {
	kdir := filepath.Join(dir, dirKeys)
	if err := mkdirPrivate(kdir); err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(id.key.Public())
	if err != nil {
		return fmt.Errorf("marshal public key: %w", err)
	}
	name := hex.EncodeToString(id.fp[:]) + ".pub"
	if err := writeAtomic(kdir, name, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), publicPerm); err != nil {
		return err
	}
	entries, err := os.ReadDir(kdir)
	if err != nil {
		return nil
	}
	type aged struct {
		name string
		mod  time.Time
	}
	var files []aged
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".pub") {
			files = append(files, aged{e.Name(), fi.ModTime()})
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].mod.After(files[j].mod) })
	for i := maxKeyHistory; i < len(files); i++ {
		os.Remove(filepath.Join(kdir, files[i].name))
	}
	return nil
}

// loadOldPublicKey returns the public key with fingerprint fp from keys/.
func loadOldPublicKey(dir string, fp [32]byte) (crypto.PublicKey, error) {
	b, err := readSmall(filepath.Join(dir, dirKeys, hex.EncodeToString(fp[:])+".pub"))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM public key")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	if got, err := fingerprint(pub); err != nil || got != fp {
		return nil, errors.New("public key does not match its file name")
	}
	return pub, nil
}

// generateKey makes a new device key.
func generateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case "", KeyP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, pylon.Errorf(pylon.EINVALID, "unknown key type %q (want p256 or ed25519)", kt)
}

func marshalKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseKeyPEM(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("device key: not a PEM PKCS#8 private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, errors.New("device key: unsupported curve")
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("device key: unsupported key type %T", k)
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("certificate: not PEM")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return c, nil
}

// parseCAPool returns a pool holding exactly the certificates of caPEM.
func parseCAPool(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := caPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w", err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, pylon.Errorf(pylon.EINVALID, "no PEM CA certificate given")
	}
	return pool, nil
}

func fingerprint(pub crypto.PublicKey) ([32]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return [32]byte{}, fmt.Errorf("marshal public key: %w", err)
	}
	return sha256.Sum256(der), nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	da, err1 := x509.MarshalPKIXPublicKey(a)
	db, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(da, db)
}

// checkServerURL accepts only https URLs without user info, query or
// fragment, and returns it without a trailing slash.
func checkServerURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", pylon.Errorf(pylon.EINVALID, "server URL must be https://host[:port]")
	}
	return strings.TrimRight(u.String(), "/"), nil
}
