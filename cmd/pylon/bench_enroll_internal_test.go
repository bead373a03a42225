package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/pylonhq/pylon/pki"
)

// testCA is a CA that issues server certificates for the tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert, key}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// server returns a TLS server certificate for ip.
func (ca *testCA) server(t *testing.T, ip string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: ip},
		IPAddresses: []net.IP{net.ParseIP(ip)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// handshake runs a TLS handshake of the enroller's configuration against a
// server with cert.
func handshake(t *testing.T, en *enroller, cert tls.Certificate) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, en.conf)
	defer c.Close()
	return c.Handshake()
}

// The enroller checks the server's chain and name once per certificate,
// and refuses servers that the CA did not certify or that present another
// certificate, whatever it verified before.
func TestEnroller_VerifiesServer(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	en := &enroller{roots: ca.pool(), serverName: "127.0.0.1"}
	en.conf = &tls.Config{ServerName: en.serverName, InsecureSkipVerify: true, VerifyConnection: en.verifyServer}

	if err := handshake(t, en, other.server(t, "127.0.0.1")); err == nil {
		t.Fatal("handshake with a server of another CA succeeded, want a certificate error")
	}
	good := ca.server(t, "127.0.0.1")
	for i := range 2 {
		if err := handshake(t, en, good); err != nil {
			t.Fatalf("handshake %d with the CA's server: %v", i+1, err)
		}
	}
	if v := en.verified.Load(); v == nil || string(v.raw) != string(good.Certificate[0]) {
		t.Fatal("the verified certificate was not remembered")
	}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
	}{
		{"another CA after a good one", other.server(t, "127.0.0.1")},
		{"wrong name", ca.server(t, "127.0.0.2")},
	} {
		if err := handshake(t, en, tc.cert); err == nil {
			t.Errorf("%s: handshake succeeded, want a certificate error", tc.name)
		}
	}
}

// BenchmarkHandshake is the TLS part of an enrollment, both sides in this
// process: a new TCP connection and a full TLS 1.3 handshake, with the
// platform's own certificates (pki: P-256 CA, server certificate alone in
// the chain) and the API server's settings (a client certificate asked for
// but optional), for each key exchange `bench enroll -kex` offers.
// cpu-us/op is the process CPU time per handshake, both sides together.
func BenchmarkHandshake(b *testing.B) {
	dir := b.TempDir()
	ca, _, err := pki.LoadOrCreateCA(dir, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	cert, err := ca.ServerCertificate(dir, nil, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.CertPool(),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	for _, kex := range []string{"default", "x25519", "p256"} {
		b.Run(kex, func(b *testing.B) {
			en := &enroller{roots: ca.CertPool(), serverName: "127.0.0.1"}
			en.conf = &tls.Config{ServerName: en.serverName, CurvePreferences: benchCurves[kex],
				InsecureSkipVerify: true, VerifyConnection: en.verifyServer}
			cpu0, _ := processCPU()
			for b.Loop() {
				raw, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				c := tls.Client(raw, en.conf)
				if err := c.Handshake(); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			if cpu1, ok := processCPU(); ok {
				b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
			}
		})
	}
}
