package device_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/eclipse/paho.golang/packets"

	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/sdk/device"
)

// fakeBroker is the least MQTT 5 server the SDK needs, over mutual TLS:
// CONNACK, PUBACK 0x00 for every QoS 1 PUBLISH (after opening it with the
// client certificate's key when verify is set), SUBACK, PINGRESP. It
// records the payload sizes of telemetry messages.
type fakeBroker struct {
	l      net.Listener
	verify bool

	mu       sync.Mutex
	payloads []int // bytes of each telemetry PUBLISH payload
	badSig   int
}

func newFakeBroker(tb testing.TB, ca *fakeCA, verify bool) *fakeBroker {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := ca.issue(tb, key.Public(), "127.0.0.1", true)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key}},
		ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: pool,
	})
	if err != nil {
		tb.Fatal(err)
	}
	b := &fakeBroker{l: l, verify: verify}
	tb.Cleanup(func() { l.Close() })
	go b.serve()
	return b
}

func (b *fakeBroker) Addr() string { return b.l.Addr().String() }

func (b *fakeBroker) serve() {
	for {
		c, err := b.l.Accept()
		if err != nil {
			return
		}
		go b.handle(c.(*tls.Conn))
	}
}

func (b *fakeBroker) handle(c *tls.Conn) {
	defer c.Close()
	if err := c.Handshake(); err != nil {
		return
	}
	pub := c.ConnectionState().PeerCertificates[0].PublicKey
	reply := func(t byte, fill func(*packets.ControlPacket)) bool {
		cp := packets.NewControlPacket(t)
		fill(cp)
		var buf bytes.Buffer // one TLS record per packet, as mochi writes
		cp.WriteTo(&buf)
		_, err := c.Write(buf.Bytes())
		return err == nil
	}
	for {
		p, err := packets.ReadPacket(c)
		if err != nil {
			return
		}
		ok := true
		switch p.Type {
		case packets.CONNECT:
			ok = reply(packets.CONNACK, func(*packets.ControlPacket) {})
		case packets.PUBLISH:
			pk := p.Content.(*packets.Publish)
			b.mu.Lock()
			b.payloads = append(b.payloads, len(pk.Payload))
			b.mu.Unlock()
			if b.verify {
				if _, err := envelope.Open(pk.Payload, pub); err != nil {
					b.mu.Lock()
					b.badSig++
					b.mu.Unlock()
				}
			}
			if pk.QoS == 1 {
				ok = reply(packets.PUBACK, func(cp *packets.ControlPacket) { cp.Content.(*packets.Puback).PacketID = pk.PacketID })
			}
		case packets.SUBSCRIBE:
			id := p.Content.(*packets.Subscribe).PacketID
			ok = reply(packets.SUBACK, func(cp *packets.ControlPacket) {
				sa := cp.Content.(*packets.Suback)
				sa.PacketID, sa.Reasons = id, []byte{1}
			})
		case packets.PINGREQ:
			ok = reply(packets.PINGRESP, func(*packets.ControlPacket) {})
		case packets.DISCONNECT:
			return
		}
		if !ok {
			return
		}
	}
}

func (b *fakeBroker) telemetry() (payloads []int, badSig int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]int(nil), b.payloads...), b.badSig
}

// countingConn counts the bytes of the TCP connection under TLS.
type countingConn struct {
	net.Conn
	read, written *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// wireCounter is a DialContext that counts TCP bytes.
type wireCounter struct{ read, written atomic.Int64 }

func (w *wireCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: c, read: &w.read, written: &w.written}, nil
}

func (w *wireCounter) total() int64 { return w.read.Load() + w.written.Load() }

// fakeDevice enrolls a device with a fake EST server and starts a fake
// broker of the same CA.
func fakeDevice(tb testing.TB, verify bool) (dir string, broker *fakeBroker) {
	tb.Helper()
	ca := newFakeCA(tb)
	srv := newFakeEST(tb, ca)
	dir = filepath.Join(tb.TempDir(), "dev")
	if _, err := device.Enroll(context.Background(), srv.URL, "good", ca.pem, dir); err != nil {
		tb.Fatal(err)
	}
	return dir, newFakeBroker(tb, ca, verify)
}
