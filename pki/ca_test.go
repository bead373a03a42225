package pki_test

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pylonhq/pylon/pki"
)

func TestLoadOrCreateCA_Creates(t *testing.T) {
	ca, dir := MustCA(t)
	c := ca.Cert

	if !regexp.MustCompile(`^Pylon Root CA [0-9a-f]{8}$`).MatchString(c.Subject.CommonName) {
		t.Errorf("got CN %q, want \"Pylon Root CA <8 hex>\"", c.Subject.CommonName)
	}
	if got := c.Subject.Organization; len(got) != 1 || got[0] != "Pylon" {
		t.Errorf("got O %q, want [Pylon]", got)
	}
	if !c.BasicConstraintsValid || !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("got basic constraints valid=%v ca=%v maxpath=%d zero=%v, want true true 0 true",
			c.BasicConstraintsValid, c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign; c.KeyUsage != want {
		t.Errorf("got key usage %v, want %v", c.KeyUsage, want)
	}
	if kt, err := pki.KeyType(c.PublicKey); err != nil || kt != "ECDSA-P256" {
		t.Errorf("got key type %q (%v), want ECDSA-P256", kt, err)
	}
	if got, want := c.NotAfter, testNow.AddDate(20, 0, 0); !got.Equal(want) {
		t.Errorf("got NotAfter %v, want %v", got, want)
	}
	if c.NotBefore.After(testNow) {
		t.Errorf("got NotBefore %v, want not after %v", c.NotBefore, testNow)
	}
	if len(c.SubjectKeyId) == 0 {
		t.Error("got no SubjectKeyId, want one")
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("got serial of %d bits (sign %d), want positive, at most 128 bits", c.SerialNumber.BitLen(), c.SerialNumber.Sign())
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("self-signature: %v", err)
	}

	for _, tc := range []struct {
		name string
		mode os.FileMode
	}{
		{"ca.key", 0o600},
		{"ca.crt", 0o644},
	} {
		fi, err := os.Stat(filepath.Join(dir, tc.name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != tc.mode {
			t.Errorf("%s: got mode %04o, want %04o", tc.name, got, tc.mode)
		}
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("ca.key: got PEM block %v, want PRIVATE KEY", block)
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		t.Errorf("ca.key is not PKCS#8: %v", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(leftovers) != 0 {
		t.Errorf("got temporary files %v, want none", leftovers)
	}
}

func TestLoadOrCreateCA_Reloads(t *testing.T) {
	ca, dir := MustCA(t)
	again, created, err := pki.LoadOrCreateCA(dir, testNow.Add(time.Hour))
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if created {
		t.Error("got created true on reload, want false")
	}
	if !bytes.Equal(again.Cert.Raw, ca.Cert.Raw) {
		t.Error("got a different CA certificate on reload, want the same")
	}
	// The reloaded key signs certificates the first CA's pool accepts.
	cert, _, err := again.SignDevice(MustCSR(t, MustP256(t), nil), "dev1", time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.CertPool(), CurrentTime: testNow, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate from reloaded CA does not verify: %v", err)
	}
}

func TestLoadOrCreateCA_RefusesMismatchedKey(t *testing.T) {
	_, dir := MustCA(t)
	_, other := MustCA(t)
	key, err := os.ReadFile(filepath.Join(other, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pki.LoadOrCreateCA(dir, testNow); err == nil {
		t.Fatal("got no error for a key of another CA, want one")
	}
}

func TestLoadOrCreateCA_RefusesTamperedKey(t *testing.T) {
	_, dir := MustCA(t)
	path := filepath.Join(dir, "ca.key")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	block.Bytes[len(block.Bytes)/2] ^= 0xff
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pki.LoadOrCreateCA(dir, testNow); err == nil {
		t.Fatal("got no error for a tampered key, want one")
	}
}

func TestLoadOrCreateCA_RefusesReadableKey(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		t.Run(mode.String(), func(t *testing.T) {
			_, dir := MustCA(t)
			if err := os.Chmod(filepath.Join(dir, "ca.key"), mode); err != nil {
				t.Fatal(err)
			}
			if _, _, err := pki.LoadOrCreateCA(dir, testNow); err == nil {
				t.Fatalf("got no error for key mode %04o, want one", mode)
			}
		})
	}
}

func TestLoadOrCreateCA_RefusesNonCACert(t *testing.T) {
	_, dir := MustCA(t)
	key := MustP256(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{CommonName: "not a CA"},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.AddDate(1, 0, 0),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		SubjectKeyId:          []byte{1, 2, 3},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pki.LoadOrCreateCA(dir, testNow); err == nil {
		t.Fatal("got no error for a non-CA certificate, want one")
	}
}

func TestLoadOrCreateCA_RefusesHalfCA(t *testing.T) {
	for _, missing := range []string{"ca.crt", "ca.key"} {
		t.Run("missing "+missing, func(t *testing.T) {
			_, dir := MustCA(t)
			other := "ca.key"
			if missing == "ca.key" {
				other = "ca.crt"
			}
			before, err := os.ReadFile(filepath.Join(dir, other))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(dir, missing)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := pki.LoadOrCreateCA(dir, testNow); err == nil {
				t.Fatalf("got no error with %s missing, want one", missing)
			}
			after, err := os.ReadFile(filepath.Join(dir, other))
			if err != nil || !bytes.Equal(before, after) {
				t.Errorf("%s was changed (err %v), want it left alone", other, err)
			}
		})
	}
}

func TestLoadOrCreateCA_RefusesExpired(t *testing.T) {
	_, dir := MustCA(t)
	if _, _, err := pki.LoadOrCreateCA(dir, testNow.AddDate(21, 0, 0)); err == nil {
		t.Fatal("got no error loading an expired CA, want one")
	}
}

func TestCA_CertPool(t *testing.T) {
	ca, _ := MustCA(t)
	_, err := ca.Cert.Verify(x509.VerifyOptions{Roots: ca.CertPool(), CurrentTime: testNow})
	if err != nil {
		t.Errorf("CA does not verify against its own pool: %v", err)
	}
}

func TestServerCertificate_Issues(t *testing.T) {
	ca, dir := MustCA(t)
	tc, err := ca.ServerCertificate(dir, []string{"pylon.example.com", "10.1.2.3", " ", "PYLON.example.com"}, testNow)
	if err != nil {
		t.Fatalf("ServerCertificate: %v", err)
	}
	leaf := tc.Leaf
	if leaf == nil {
		t.Fatal("got nil Leaf, want the certificate")
	}
	if len(tc.Certificate) != 1 || !bytes.Equal(tc.Certificate[0], leaf.Raw) {
		t.Errorf("got chain of %d, want the leaf alone (clients trust the CA already)", len(tc.Certificate))
	}
	if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("leaf not signed by the CA: %v", err)
	}
	if got, want := leaf.Subject.CommonName, "pylon.example.com"; got != want {
		t.Errorf("got CN %q, want %q", got, want)
	}
	if got, want := leaf.DNSNames, []string{"pylon.example.com", "localhost"}; !equalStrings(got, want) {
		t.Errorf("got DNS names %q, want %q", got, want)
	}
	for _, ip := range []string{"10.1.2.3", "127.0.0.1", "::1"} {
		if !hasIP(leaf.IPAddresses, net.ParseIP(ip)) {
			t.Errorf("got IPs %v, want %s among them", leaf.IPAddresses, ip)
		}
	}
	if len(leaf.IPAddresses) != 3 {
		t.Errorf("got %d IPs, want 3", len(leaf.IPAddresses))
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("got key usage %v, want digital signature", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("got EKU %v, want serverAuth only", leaf.ExtKeyUsage)
	}
	if kt, _ := pki.KeyType(leaf.PublicKey); kt != "ECDSA-P256" {
		t.Errorf("got key type %q, want ECDSA-P256", kt)
	}
	if got, want := leaf.NotAfter, testNow.Add(365*24*time.Hour); !got.Equal(want) {
		t.Errorf("got NotAfter %v, want %v", got, want)
	}
	for _, host := range []string{"pylon.example.com", "localhost", "127.0.0.1", "::1", "10.1.2.3"} {
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: ca.CertPool(), CurrentTime: testNow})
		if err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("server.key: got mode %04o, want 0600", got)
	}
}

func TestServerCertificate_Reuses(t *testing.T) {
	ca, dir := MustCA(t)
	hosts := []string{"pylon.example.com", "10.1.2.3"}
	first, err := ca.ServerCertificate(dir, hosts, testNow)
	if err != nil {
		t.Fatal(err)
	}
	// A later start with fewer hosts keeps the certificate.
	second, err := ca.ServerCertificate(dir, hosts[:1], testNow.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := second.Leaf.SerialNumber, first.Leaf.SerialNumber; got.Cmp(want) != 0 {
		t.Errorf("got serial %x, want the same %x", got, want)
	}
}

func TestServerCertificate_Reissues(t *testing.T) {
	cases := map[string]func(t *testing.T, dir string) ([]string, time.Time){
		"new host": func(t *testing.T, dir string) ([]string, time.Time) {
			return []string{"pylon.example.com", "other.example.com"}, testNow
		},
		"new IP": func(t *testing.T, dir string) ([]string, time.Time) {
			return []string{"pylon.example.com", "192.0.2.1"}, testNow
		},
		"expires within 30 days": func(t *testing.T, dir string) ([]string, time.Time) {
			return []string{"pylon.example.com"}, testNow.Add(340 * 24 * time.Hour)
		},
		"corrupt certificate": func(t *testing.T, dir string) ([]string, time.Time) {
			if err := os.WriteFile(filepath.Join(dir, "server.crt"), []byte("garbage"), 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"pylon.example.com"}, testNow
		},
		"missing key": func(t *testing.T, dir string) ([]string, time.Time) {
			if err := os.Remove(filepath.Join(dir, "server.key")); err != nil {
				t.Fatal(err)
			}
			return []string{"pylon.example.com"}, testNow
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			ca, dir := MustCA(t)
			first, err := ca.ServerCertificate(dir, []string{"pylon.example.com"}, testNow)
			if err != nil {
				t.Fatal(err)
			}
			hosts, now := setup(t, dir)
			second, err := ca.ServerCertificate(dir, hosts, now)
			if err != nil {
				t.Fatalf("ServerCertificate: %v", err)
			}
			if second.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
				t.Fatal("got the same certificate, want a new one")
			}
			for _, h := range hosts {
				if err := second.Leaf.VerifyHostname(h); err != nil {
					t.Errorf("new certificate does not cover %s: %v", h, err)
				}
			}
			// The new pair is what the next start loads.
			third, err := ca.ServerCertificate(dir, hosts, now)
			if err != nil {
				t.Fatal(err)
			}
			if third.Leaf.SerialNumber.Cmp(second.Leaf.SerialNumber) != 0 {
				t.Error("got yet another certificate on the next load, want the reissued one")
			}
		})
	}
}

func TestServerCertificate_ReissuesForNewCA(t *testing.T) {
	ca, dir := MustCA(t)
	if _, err := ca.ServerCertificate(dir, nil, testNow); err != nil {
		t.Fatal(err)
	}
	other, _ := MustCA(t)
	tc, err := other.ServerCertificate(dir, nil, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.Leaf.CheckSignatureFrom(other.Cert); err != nil {
		t.Errorf("got a certificate not signed by the current CA: %v", err)
	}
}

func TestServerCertificate_RefusesReadableKey(t *testing.T) {
	ca, dir := MustCA(t)
	if _, err := ca.ServerCertificate(dir, nil, testNow); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "server.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.ServerCertificate(dir, nil, testNow); err == nil {
		t.Fatal("got no error for a world-readable server key, want one")
	}
}

func TestServerCertificate_RefusesBadHost(t *testing.T) {
	for _, host := range []string{"a b", "http://x", "a/b", "-x.example", "x..y", strings.Repeat("a", 300)} {
		t.Run(host[:min(len(host), 10)], func(t *testing.T) {
			ca, dir := MustCA(t)
			if _, err := ca.ServerCertificate(dir, []string{host}, testNow); err == nil {
				t.Fatalf("got no error for host %q, want one", host)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func hasIP(ips []net.IP, ip net.IP) bool {
	for _, have := range ips {
		if have.Equal(ip) {
			return true
		}
	}
	return false
}

// TestCheckFiles checks what pylon serve --check-config relies on: the
// files LoadOrCreateCA and ServerCertificate would refuse are refused,
// and nothing is created or changed.
func TestCheckFiles(t *testing.T) {
	empty := t.TempDir()
	if err := pki.CheckFiles(empty, testNow); err != nil {
		t.Fatalf("empty directory: %v, want nil (the files would be created)", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Fatalf("empty directory: CheckFiles created %d files", len(entries))
	}

	ca, dir := MustCA(t)
	before := dirState(t, dir)
	if err := pki.CheckFiles(dir, testNow); err != nil {
		t.Fatalf("a CA without server files: %v, want nil (they would be created)", err)
	} else if after := dirState(t, dir); after != before {
		t.Fatalf("CheckFiles changed a CA's directory:\n%s\nbecame\n%s", before, after)
	}
	if _, err := ca.ServerCertificate(dir, nil, testNow); err != nil {
		t.Fatal(err)
	}
	if err := pki.CheckFiles(dir, testNow); err != nil {
		t.Fatalf("a server's files: %v", err)
	}
	for _, tt := range []struct {
		name  string
		spoil func(dir string) error
		want  string
	}{
		{"readable CA key", func(dir string) error { return os.Chmod(filepath.Join(dir, "ca.key"), 0o640) }, "chmod 600"},
		{"readable server key", func(dir string) error { return os.Chmod(filepath.Join(dir, "server.key"), 0o644) }, "chmod 600"},
		{"CA certificate alone", func(dir string) error { return os.Remove(filepath.Join(dir, "ca.key")) }, "does not"},
		{"expired CA", nil, "expired"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ca, dir := MustCA(t)
			if _, err := ca.ServerCertificate(dir, nil, testNow); err != nil {
				t.Fatal(err)
			}
			now := testNow
			if tt.spoil != nil {
				if err := tt.spoil(dir); err != nil {
					t.Fatal(err)
				}
			} else {
				now = ca.Cert.NotAfter
			}
			before := dirState(t, dir)
			if err := pki.CheckFiles(dir, now); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
			if after := dirState(t, dir); after != before {
				t.Fatalf("CheckFiles changed the directory:\n%s\nbecame\n%s", before, after)
			}
		})
	}
}

// dirState lists dir's files with their modes and sizes.
func dirState(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %v %d\n", e.Name(), fi.Mode(), fi.Size())
	}
	return b.String()
}
