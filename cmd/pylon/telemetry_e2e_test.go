package main_test

// End-to-end tests of telemetry: sealed SenML through mutual-TLS MQTT into
// the store, the refusals and their reports on devices/{id}/errors, `pylon
// seal` with mosquitto, and acknowledged messages surviving kill -9.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/pylonhq/pylon"
	main "github.com/pylonhq/pylon/cmd/pylon"
	"github.com/pylonhq/pylon/envelope"
	"github.com/pylonhq/pylon/est"
	"github.com/pylonhq/pylon/httpapi"
	"github.com/pylonhq/pylon/senml"
)

// EnrollKey enrolls key (any key the CA accepts) for the device over EST
// and returns the TLS certificate for MQTT.
func (p *Platform) EnrollKey(deviceID string, key crypto.Signer) tls.Certificate {
	p.t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	if code := p.Do("POST", "/api/v1/enrollment-tokens", p.AdminToken, map[string]any{"device_id": deviceID}, &tok); code != 201 {
		p.t.Fatalf("create enrollment token: got status %d, want 201", code)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, key)
	if err != nil {
		p.t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", p.URL+"/.well-known/est/simpleenroll", bytes.NewReader(est.EncodeCSR(csr)))
	req.Header.Set("Content-Type", "application/pkcs10")
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err := p.Client.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		p.t.Fatalf("simpleenroll: got status %d (%s), want 200", resp.StatusCode, body)
	}
	certs, err := est.DecodeCertsOnly(body)
	if err != nil || len(certs) == 0 {
		p.t.Fatalf("decode certs-only: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{certs[0].Raw}, PrivateKey: key, Leaf: certs[0]}
}

// EnrollEd25519 enrolls a new Ed25519 key for the device.
func (p *Platform) EnrollEd25519(deviceID string) tls.Certificate {
	p.t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.EnrollKey(deviceID, key)
}

// Readings returns every stored reading of the device, oldest first, from
// the HTTP API.
func (p *Platform) Readings(deviceID string) []*pylon.Reading {
	p.t.Helper()
	var list httpapi.ReadingList
	if code := p.Do("GET", "/api/v1/devices/"+deviceID+"/readings?limit=10000&order=asc", p.AdminToken, nil, &list); code != 200 {
		p.t.Fatalf("readings: got status %d, want 200", code)
	} else if list.NextCursor != "" {
		p.t.Fatal("readings: more than one page")
	}
	return list.Readings
}

// teleDevice is a device's MQTT 5 connection that collects what arrives on
// its errors topic.
type teleDevice struct {
	*paho.Client
	t       testing.TB
	id      string
	cert    tls.Certificate
	signer  crypto.Signer
	reports chan *paho.Publish
}

// MustConnectDevice connects the device with cert to the broker at addr
// (host:port), subscribed to its errors topic.
func MustConnectDevice(tb testing.TB, addr, caFile, id string, cert tls.Certificate) *teleDevice {
	tb.Helper()
	d, err := connectDevice(addr, caFile, id, cert, tb)
	if err != nil {
		tb.Fatalf("connect %s: %v", id, err)
	}
	return d
}

func connectDevice(addr, caFile, id string, cert tls.Certificate, tb testing.TB) (*teleDevice, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}})
	if err != nil {
		return nil, err
	}
	d := &teleDevice{t: tb, id: id, cert: cert, signer: cert.PrivateKey.(crypto.Signer), reports: make(chan *paho.Publish, 64)}
	d.Client = paho.NewClient(paho.ClientConfig{
		Conn: packets.NewThreadSafeConn(conn), // publishes come from several goroutines
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case d.reports <- pr.Packet:
			default:
			}
			return true, nil
		}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := d.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
		conn.Close()
		return nil, err
	}
	tb.Cleanup(func() { _ = d.Disconnect(&paho.Disconnect{}) })
	sa, err := d.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/" + id + "/errors", QoS: 1}}})
	if err != nil || sa.Reasons[0] != 1 {
		return nil, fmt.Errorf("subscribe errors: %v %+v", err, sa)
	}
	return d, nil
}

// Publish sends msg to the device's telemetry topic at QoS 1 and returns
// the PUBACK reason code.
func (d *teleDevice) Publish(msg []byte) byte {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pr, err := d.Client.Publish(ctx, &paho.Publish{Topic: "devices/" + d.id + "/telemetry", QoS: 1, Payload: msg})
	if pr == nil {
		d.t.Fatalf("publish: no PUBACK: %v", err)
	}
	return pr.ReasonCode
}

// Report waits for the next error report.
func (d *teleDevice) Report() errorReport {
	d.t.Helper()
	select {
	case m := <-d.reports:
		var r errorReport
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			d.t.Fatalf("error report %q: %v", m.Payload, err)
		}
		if m.Topic != "devices/"+d.id+"/errors" {
			d.t.Fatalf("report on %q, want the errors topic", m.Topic)
		}
		return r
	case <-time.After(5 * time.Second):
		d.t.Fatal("no error report on devices/{id}/errors")
		return errorReport{}
	}
}

type errorReport struct {
	Seq    uint64 `json:"seq"`
	Code   string `json:"code"`
	Reason string `json:"reason"`
	Time   string `json:"time"`
}

// seal seals recs (CBOR) with key and seq.
func seal(tb testing.TB, key crypto.Signer, seq uint64, recs []senml.Record, opts envelope.SealOptions) []byte {
	tb.Helper()
	var pack []byte
	var err error
	if opts.ContentType == envelope.ContentTypeSenMLJSON {
		pack, err = senml.EncodeJSON(recs)
	} else {
		pack, err = senml.EncodeCBOR(recs)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return sealRaw(tb, key, seq, pack, opts)
}

func sealRaw(tb testing.TB, key crypto.Signer, seq uint64, pack []byte, opts envelope.SealOptions) []byte {
	tb.Helper()
	msg, err := envelope.Seal(key, seq, pack, opts)
	if err != nil {
		tb.Fatalf("seal: %v", err)
	}
	return msg
}

func num(v float64) *float64 { return &v }

func temp(v float64) []senml.Record {
	return []senml.Record{{Name: "temp", Unit: "Cel", Value: num(v)}}
}

func TestTelemetry_StoredExactlyOnce(t *testing.T) {
	for _, kind := range []string{"P-256", "Ed25519"} {
		t.Run(kind, func(t *testing.T) {
			p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
			d := p.CreateDevice("sensor-" + kind)
			var cert tls.Certificate
			if kind == "Ed25519" {
				cert = p.EnrollEd25519(d.ID)
			} else {
				cert = p.Enroll(d.ID)
			}
			dev := MustConnectDevice(t, p.Broker.Addr().String(), filepath.Join(p.Config.Data, "ca.crt"), d.ID, cert)

			now := float64(time.Now().Unix())
			first := seal(t, dev.signer, 1, []senml.Record{
				{BaseName: "room/", BaseTime: now - 10, Name: "temp", Unit: "Cel", Value: num(21.5)},
				{Name: "humidity", Unit: "%RH", Value: num(40), Time: 5},
			}, envelope.SealOptions{})
			for i, msg := range [][]byte{
				first,
				first, // a QoS 1 redelivery: acknowledged, not stored again
				seal(t, dev.signer, 2, temp(22), envelope.SealOptions{Encoding: envelope.EncodingZstd}),
				seal(t, dev.signer, 3, temp(23), envelope.SealOptions{ContentType: envelope.ContentTypeSenMLJSON, Encoding: envelope.EncodingDeflate}),
			} {
				if got := dev.Publish(msg); got != 0 {
					t.Fatalf("message %d: got PUBACK 0x%02x, want 0x00", i, got)
				}
			}
			got := p.Readings(d.ID)
			want := []string{"room/temp=21.5 Cel", "room/humidity=40 %RH", "temp=22 Cel", "temp=23 Cel"}
			if len(got) != len(want) {
				t.Fatalf("got %d readings, want %d", len(got), len(want))
			}
			for i, r := range got {
				if s := fmt.Sprintf("%s=%v %s", r.Name, *r.Value, r.Unit); s != want[i] {
					t.Errorf("reading %d: got %s, want %s", i, s, want[i])
				}
			}
			if !got[0].Time.Equal(time.Unix(int64(now)-10, 0)) || !got[1].Time.Equal(time.Unix(int64(now)-5, 0)) {
				t.Errorf("times: got %v and %v, want the resolved base time", got[0].Time, got[1].Time)
			}
			expectNoReport(t, p, dev)
		})
	}
}

// expectNoReport publishes a marker to the device's errors topic through
// the broker's inline client and fails unless it is the first report the
// device receives.
func expectNoReport(t *testing.T, p *Platform, dev *teleDevice) {
	t.Helper()
	if err := p.Broker.Server().Publish("devices/"+dev.id+"/errors", []byte(`{"code":"marker"}`), false, 1); err != nil {
		t.Fatal(err)
	}
	if r := dev.Report(); r.Code != "marker" {
		t.Fatalf("got error report %+v, want none", r)
	}
}

// refusal runs one hostile message through the whole platform: the device
// has a stored message (seq 10000) first; msg (built with the device's key
// and a second device's key) must get PUBACK reason, an error report with
// code, and nothing more stored.
func refusal(t *testing.T, reason byte, code string, build func(t *testing.T, own, other crypto.Signer) []byte) {
	t.Helper()
	p := MustRunMain(t, filepath.Join(t.TempDir(), "data"))
	d := p.CreateDevice("target")
	dev := MustConnectDevice(t, p.Broker.Addr().String(), filepath.Join(p.Config.Data, "ca.crt"), d.ID, p.Enroll(d.ID))
	otherDev := p.CreateDevice("other")
	other := p.Enroll(otherDev.ID).PrivateKey.(crypto.Signer)

	if got := dev.Publish(seal(t, dev.signer, 10000, temp(20), envelope.SealOptions{})); got != 0 {
		t.Fatalf("baseline message: got PUBACK 0x%02x, want 0x00", got)
	}
	msg := build(t, dev.signer, other)
	if got := dev.Publish(msg); got != reason {
		t.Fatalf("got PUBACK 0x%02x, want 0x%02x", got, reason)
	}
	r := dev.Report()
	if r.Code != code || r.Reason == "" || r.Reason == "internal error" {
		t.Fatalf("error report: got %+v, want code %q and a reason", r, code)
	}
	if at, err := time.Parse(time.RFC3339, r.Time); err != nil || time.Since(at) > time.Minute {
		t.Errorf("error report time: got %q (%v), want about now", r.Time, err)
	}
	t.Logf("report: %+v", r)
	if got := p.Readings(d.ID); len(got) != 1 || *got[0].Value != 20 {
		t.Fatalf("stored: got %d readings, want only the baseline one", len(got))
	}
	var q httpapi.QuarantineList
	waitFor(t, "quarantined", func() bool {
		p.Do("GET", "/api/v1/devices/"+d.ID+"/quarantine", p.AdminToken, nil, &q)
		return len(q.Messages) == 1
	})
	kept := msg[:min(len(msg), pylon.MaxQuarantinePayload)] // an oversize message is kept cut
	if q.Messages[0].Reason != r.Reason || !bytes.Equal(q.Messages[0].Payload, kept) {
		t.Errorf("quarantine: got reason %q and %d bytes, want the report's reason and the message", q.Messages[0].Reason, len(q.Messages[0].Payload))
	}
	// The session goes on.
	if got := dev.Publish(seal(t, dev.signer, 10001, temp(21), envelope.SealOptions{})); got != 0 {
		t.Fatalf("after the refusal: got PUBACK 0x%02x, want 0x00", got)
	}
}

func TestTelemetryRefused_BadSignature(t *testing.T) {
	refusal(t, 0x87, "unauthorized", func(t *testing.T, own, _ crypto.Signer) []byte {
		msg := seal(t, own, 10002, temp(1), envelope.SealOptions{})
		msg[len(msg)-1] ^= 0x01
		return msg
	})
}

func TestTelemetryRefused_AnotherDevicesKey(t *testing.T) {
	refusal(t, 0x87, "unauthorized", func(t *testing.T, _, other crypto.Signer) []byte {
		return seal(t, other, 10002, temp(1), envelope.SealOptions{})
	})
}

func TestTelemetryRefused_AlgorithmConfusion(t *testing.T) {
	refusal(t, 0x87, "unauthorized", func(t *testing.T, _, _ crypto.Signer) []byte {
		_, ed, _ := ed25519.GenerateKey(rand.Reader) // the certificate is P-256
		return seal(t, ed, 10002, temp(1), envelope.SealOptions{})
	})
}

func TestTelemetryRefused_Truncated(t *testing.T) {
	refusal(t, 0x99, "invalid", func(t *testing.T, own, _ crypto.Signer) []byte {
		msg := seal(t, own, 10002, temp(1), envelope.SealOptions{})
		return msg[:len(msg)-10]
	})
}

func TestTelemetryRefused_Replay(t *testing.T) {
	refusal(t, 0x87, "unauthorized", func(t *testing.T, own, _ crypto.Signer) []byte {
		return seal(t, own, 10000-pylon.ReplayWindow-1, temp(1), envelope.SealOptions{})
	})
}

func TestTelemetryRefused_ZipBomb(t *testing.T) {
	refusal(t, 0x97, "too_large", func(t *testing.T, own, _ crypto.Signer) []byte {
		return signRaw(t, own, 10002, envelope.EncodingZstd, zstdZeroFrame(16)) // 2 MiB of zeros in 70 bytes
	})
}

func TestTelemetryRefused_DeepNesting(t *testing.T) {
	refusal(t, 0x99, "invalid", func(t *testing.T, own, _ crypto.Signer) []byte {
		// [{0: "x", 2: [[[[…1…]]]]}], 5000 levels deep.
		pack := append([]byte{0x81, 0xa2, 0x00, 0x61, 'x', 0x02}, bytes.Repeat([]byte{0x81}, 5000)...)
		return sealRaw(t, own, 10002, append(pack, 0x01), envelope.SealOptions{})
	})
}

func TestTelemetryRefused_NaN(t *testing.T) {
	refusal(t, 0x99, "invalid", func(t *testing.T, own, _ crypto.Signer) []byte {
		// [{0: "x", 2: NaN}] as a half float.
		return sealRaw(t, own, 10002, []byte{0x81, 0xa2, 0x00, 0x61, 'x', 0x02, 0xf9, 0x7e, 0x00}, envelope.SealOptions{})
	})
}

func TestTelemetryRefused_Infinity(t *testing.T) {
	refusal(t, 0x99, "invalid", func(t *testing.T, own, _ crypto.Signer) []byte {
		// [{0: "x", 2: -Infinity}] as a double.
		pack := []byte{0x81, 0xa2, 0x00, 0x61, 'x', 0x02, 0xfb}
		pack = binary.BigEndian.AppendUint64(pack, math.Float64bits(math.Inf(-1)))
		return sealRaw(t, own, 10002, pack, envelope.SealOptions{})
	})
}

func TestTelemetryRefused_BadName(t *testing.T) {
	refusal(t, 0x99, "invalid", func(t *testing.T, own, _ crypto.Signer) []byte {
		return seal(t, own, 10002, []senml.Record{{Name: "-rm -rf /", Value: num(1)}}, envelope.SealOptions{})
	})
}

func TestTelemetryRefused_UnknownUnit(t *testing.T) {
	refusal(t, 0x99, "invalid", func(t *testing.T, own, _ crypto.Signer) []byte {
		return seal(t, own, 10002, []senml.Record{{Name: "distance", Unit: "furlong", Value: num(1)}}, envelope.SealOptions{})
	})
}

func TestTelemetryRefused_MustUnderstandField(t *testing.T) {
	refusal(t, 0x99, "invalid", func(t *testing.T, own, _ crypto.Signer) []byte {
		return sealRaw(t, own, 10002, []byte(`[{"n":"temp","v":1,"future_":true}]`), envelope.SealOptions{ContentType: envelope.ContentTypeSenMLJSON})
	})
}

func TestTelemetryRefused_Oversize(t *testing.T) {
	refusal(t, 0x97, "too_large", func(t *testing.T, _, _ crypto.Signer) []byte {
		b := make([]byte, pylon.MaxMessageBytes+1)
		rand.Read(b)
		return b
	})
}

// zstdZeroFrame returns a zstd frame of n RLE blocks of 128 KiB of zeros,
// without a content size, so that only the decoder's running count can
// stop it.
func zstdZeroFrame(n int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38} // magic, no content size, window 2^17
	for i := range n {
		h := uint32(128<<10)<<3 | 1<<1 // RLE block
		if i == n-1 {
			h |= 1 // last
		}
		b = binary.LittleEndian.AppendUint32(b, h)[:len(b)+3]
		b = append(b, 0x00)
	}
	return b
}

// signRaw builds a COSE_Sign1 around an already encoded payload, which
// envelope.Seal would refuse to make (it caps what it compresses).
func signRaw(t *testing.T, key crypto.Signer, seq uint64, encoding string, payload []byte) []byte {
	t.Helper()
	alg, err := envelope.AlgorithmFor(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	em, _ := cbor.CoreDetEncOptions().EncMode()
	prot, err := em.Marshal(map[int64]any{1: int64(alg), envelope.HeaderSeq: seq, envelope.HeaderEncoding: encoding})
	if err != nil {
		t.Fatal(err)
	}
	tbs, _ := em.Marshal([]any{"Signature1", prot, []byte{}, payload})
	signer, err := cose.NewSigner(alg, key)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := signer.Sign(rand.Reader, tbs)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := em.Marshal([]any{prot, map[int64]any{}, payload, sig})
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// startServe starts the binary on the given ports with extra flags.
func startServe(t *testing.T, data string, apiPort, mqttPort int, extra ...string) *binServer {
	t.Helper()
	s := &binServer{data: data, apiPort: apiPort, mqttPort: mqttPort, stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	s.api = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	args := append([]string{"serve", "--data", data,
		"--api-addr", fmt.Sprintf("127.0.0.1:%d", apiPort),
		"--mqtt-addr", fmt.Sprintf("127.0.0.1:%d", mqttPort)}, extra...)
	s.cmd = exec.Command(pylonBin, args...)
	s.cmd.Stdout, s.cmd.Stderr = s.stdout, s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			s.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("server stderr:\n%s", s.stderr)
		}
	})
	return s
}

// binPlatform is an API view of a running binary, for the Platform helpers
// (Do, CreateDevice, EnrollKey, Readings) that need only the URL, an HTTP
// client trusting the CA and the admin token.
func binPlatform(t *testing.T, s *binServer) *Platform {
	t.Helper()
	token, err := os.ReadFile(filepath.Join(s.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(s.data, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	m := &main.Main{AdminToken: strings.TrimSpace(string(token))}
	m.Config.Data = s.data
	return &Platform{Main: m, t: t, URL: s.api,
		Client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
}

func TestBinary_SealMosquittoPub(t *testing.T) {
	requireTools(t, "curl", "openssl", "mosquitto_pub", "mosquitto_sub", "base64")
	data := filepath.Join(t.TempDir(), "d")
	integPort := freePort(t)
	s := startServe(t, data, freePort(t), freePort(t), "--mqtt-integration-addr", fmt.Sprintf("127.0.0.1:%d", integPort))
	waitHealthy(t, s)
	var dev struct{ ID string }
	mustJSON(t, s.sh(t, `$PYLON devices create shell-sensor -o json`), &dev)

	// An integration over TLS with an API token (docs/operations.md),
	// subscribed in a session that keeps what it misses, at the address
	// the server announces.
	var info struct {
		MQTTIntegrationAddr string `json:"mqtt_integration_addr"`
	}
	mustJSON(t, s.sh(t, `curl -sS --cacert "$PYLON_CA" "$API/api/v1/info"`), &info)
	if want := fmt.Sprintf("127.0.0.1:%d", integPort); info.MQTTIntegrationAddr != want {
		t.Fatalf("info: mqtt_integration_addr %q, want %q", info.MQTTIntegrationAddr, want)
	}
	var viewer struct{ Token string }
	mustJSON(t, s.sh(t, `$PYLON api-tokens create integration --role viewer -o json`), &viewer)
	integ := fmt.Sprintf(`mosquitto_sub --cafile "$PYLON_CA" -h localhost -p %d -i integration-1 -u integration -P '%s' -V mqttv5 -c -x 300 -q 1 -t 'devices/+/telemetry'`, integPort, viewer.Token)
	s.sh(t, integ+` -E`)
	var tok struct{ Token string }
	mustJSON(t, s.sh(t, `$PYLON tokens create --device `+dev.ID+` -o json`), &tok)
	s.sh(t, `"$EXAMPLES/shell/enroll.sh" "$API" "$PYLON_CA" '`+tok.Token+`' dev`)

	// docs/protocol.md §6.10, with the test's port; JSON and CBOR,
	// compressed and not.
	pub := `ID=$(cat dev/device.id)
echo '[{"n":"temp","u":"Cel","v":21.5},{"n":"humidity","u":"%RH","v":40}]' |
  $PYLON seal --key dev/device.key --seq-file dev/seq FLAGS |
  mosquitto_pub --cafile dev/ca.crt --cert dev/device.crt --key dev/device.key \
    -h localhost -p $MQTT_PORT -i "$ID" -q 1 -V mqttv5 -t "devices/$ID/telemetry" -s`
	for _, flags := range []string{"", "--compress deflate", "--format json", "--format json --compress zstd"} {
		s.sh(t, strings.Replace(pub, "FLAGS", flags, 1))
	}
	// The integration gets the four messages as sent.
	got := strings.Fields(s.sh(t, integ+` -C 4 -W 10 -F '%t %l'`))
	if want := strings.Fields(strings.Repeat("devices/"+dev.ID+"/telemetry X ", 4)); len(got) != len(want) {
		t.Fatalf("integration: got %q, want 4 telemetry messages", got)
	}
	for i := 0; i < len(got); i += 2 {
		if got[i] != "devices/"+dev.ID+"/telemetry" || got[i+1] == "0" {
			t.Fatalf("integration: got %q, want 4 telemetry messages", got)
		}
	}
	if got := strings.TrimSpace(s.sh(t, `cat dev/seq; stat -c %a dev/seq`)); got != "4\n600" {
		t.Fatalf("seq file: got %q, want 4 and mode 600", got)
	}
	var list struct{ Readings []pylon.Reading }
	mustJSON(t, s.sh(t, `$PYLON readings list `+dev.ID+` --limit 100 -o json`), &list)
	if len(list.Readings) != 8 {
		t.Fatalf("stored readings: got %d, want 8 (4 messages of 2)", len(list.Readings))
	}
	for _, r := range list.Readings {
		if !(r.Name == "temp" && r.Unit == "Cel" && *r.Value == 21.5 || r.Name == "humidity" && r.Unit == "%RH" && *r.Value == 40) {
			t.Errorf("reading: got %+v", r)
		}
	}
	// The CLI's tables: a count has one COUNT column, and a reading with
	// only a sum shows it.
	agg := strings.Split(strings.TrimSpace(s.sh(t, `$PYLON readings agg `+dev.ID+` --name temp --agg count --bucket 1h`)), "\n")
	if len(agg) != 2 || strings.Join(strings.Fields(agg[0]), " ") != "START COUNT" || !strings.HasSuffix(agg[1], " 4") {
		t.Errorf("readings agg --agg count: got %q, want START COUNT, then one bucket of 4", agg)
	}
	// (seq 9000: the seq file's next number is kept for the replay below)
	s.sh(t, `ID=$(cat dev/device.id)
echo '[{"n":"energy","u":"J","s":1500}]' | $PYLON seal --key dev/device.key --seq 9000 |
  mosquitto_pub --cafile dev/ca.crt --cert dev/device.crt --key dev/device.key -h localhost -p $MQTT_PORT -i "$ID" -q 1 -V mqttv5 -t "devices/$ID/telemetry" -s`)
	latest := s.sh(t, `$PYLON readings latest `+dev.ID)
	if !strings.Contains(latest, "SUM") || !regexp.MustCompile(`(?m)^energy\s+-\s+J\s+1500\s`).MatchString(latest) {
		t.Errorf("readings latest: got\n%s\nwant a SUM column with energy's 1500", latest)
	}

	// A replayed sequence number, and the device reading the report with
	// mosquitto_sub in a persistent session (docs/protocol.md §6.10).
	// mosquitto_pub resumes that session too, so the broker may deliver the
	// report to it while it waits for its PUBACK (MQTT allows either;
	// mochi mostly holds it for the next connection, which then gets it).
	// -d shows a delivery to mosquitto_pub; then no mosquitto_sub follows.
	s.sh(t, `echo '[{"n":"temp","v":1}]' | $PYLON seal --key dev/device.key --seq 10000 | mosquitto_pub --cafile dev/ca.crt --cert dev/device.crt --key dev/device.key -h localhost -p $MQTT_PORT -i `+dev.ID+` -q 1 -t devices/`+dev.ID+`/telemetry -s`)
	out := s.sh(t, `ID=$(cat dev/device.id)
MQTT="--cafile dev/ca.crt --cert dev/device.crt --key dev/device.key -h localhost -p $MQTT_PORT -i $ID -V mqttv5 -c -x 300"
mosquitto_sub $MQTT -q 1 -t "devices/$ID/errors" -E
echo '[{"n":"temp","u":"Cel","v":21.5}]' |
  $PYLON seal --key dev/device.key --seq 5 |
  mosquitto_pub $MQTT -d -q 1 -t "devices/$ID/telemetry" -s > pub.log 2>&1
if grep -q "received PUBLISH (.*'devices/$ID/errors'" pub.log; then echo to-mosquitto_pub
else mosquitto_sub $MQTT -q 1 -t "devices/$ID/errors" -C 1 -W 5; fi`)
	if strings.TrimSpace(out) == "to-mosquitto_pub" {
		t.Log("the error report went to mosquitto_pub, which had resumed the session")
	} else {
		var r errorReport
		mustJSON(t, strings.TrimSpace(out), &r)
		if r.Seq != 5 || r.Code != "unauthorized" || !strings.Contains(r.Reason, "replay") {
			t.Fatalf("mosquitto_sub: got %+v, want a replay report for seq 5", r)
		}
	}
	if out := s.sh(t, `cat pub.log`); !strings.Contains(out, "Not authorized") || !strings.Contains(out, "replay") {
		t.Errorf("mosquitto_pub: got %q, want the PUBACK 0x87 and its reason", out)
	}
	mustJSON(t, s.sh(t, `$PYLON readings list `+dev.ID+` --limit 100 -o json`), &list)
	if len(list.Readings) != 10 {
		t.Fatalf("stored readings after the refusals: got %d, want 10 (8, energy and seq 10000)", len(list.Readings))
	}
}

func TestBinary_SealErrors(t *testing.T) {
	requireTools(t, "openssl")
	dir := t.TempDir()
	sh := func(script string) (string, error) {
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PYLON="+pylonBin)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := sh(`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out p256.key 2>&1 &&
openssl ecparam -name prime256v1 -genkey -out sec1.key 2>&1 &&
openssl genpkey -algorithm ED25519 -out ed.key 2>&1 &&
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>&1`); err != nil {
		t.Fatalf("make keys: %v\n%s", err, out)
	}
	good := `[{"n":"temp","u":"Cel","v":21.5}]`
	tests := []struct {
		name, args, stdin string
		want              string // in the output; "" for success
	}{
		{"PKCS#8 P-256", "--key p256.key --seq 1", good, ""},
		{"SEC 1 with EC PARAMETERS", "--key sec1.key --seq 1 --format json --compress zstd", good, ""},
		{"Ed25519", "--key ed.key --seq 1 --compress deflate", good, ""},
		{"RSA", "--key rsa.key --seq 1", good, "want ECDSA P-256 or P-384, or Ed25519"},
		{"no key", "--seq 1", good, "--key is required"},
		{"missing key file", "--key nope.key --seq 1", good, "no such file"},
		{"no seq", "--key p256.key", good, "exactly one of --seq and --seq-file"},
		{"seq 0", "--key p256.key --seq 0", good, "at least 1"},
		{"bad format", "--key p256.key --seq 1 --format xml", good, "want cbor or json"},
		{"bad compression", "--key p256.key --seq 1 --compress gzip", good, "want deflate or zstd"},
		{"unknown unit", "--key p256.key --seq 1", `[{"n":"d","u":"furlong","v":1}]`, `unknown unit "furlong" (invalid)`},
		{"not JSON", "--key p256.key --seq 1", `hello`, "malformed JSON"},
		{"too old", "--key p256.key --seq 1", `[{"n":"t","v":1,"t":1000000000}]`, "(invalid)"},
		{"too large", "--key p256.key --seq 1 --format json", "[" + strings.Repeat(`{"n":"t","vs":"`+strings.Repeat("x", 100)+`"},`, 999) + `{"n":"t","v":1}]`, "over the limit of 65536"},
		{"oversize input", "--key p256.key --seq 1", strings.Repeat(" ", pylon.MaxDecodedBytes+1), "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(pylonBin, append([]string{"seal"}, strings.Fields(tt.args)...)...)
			cmd.Dir = dir
			cmd.Stdin = strings.NewReader(tt.stdin)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if tt.want != "" {
				if err == nil || !strings.Contains(stderr.String(), tt.want) || stdout.Len() != 0 {
					t.Fatalf("got err=%v stderr=%q and %d bytes out; want a failure saying %q", err, stderr.String(), stdout.Len(), tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("seal: %v: %s", err, stderr.String())
			}
			keyName := strings.Fields(tt.args)[1]
			msg, err := envelope.Open(stdout.Bytes(), mustPublicKey(t, filepath.Join(dir, keyName)))
			if err != nil {
				t.Fatalf("open sealed message: %v", err)
			}
			readings, err := senml.Decode("d", msg.ContentType, msg.Payload, time.Now(), senml.Limits{})
			if err != nil || len(readings) != 1 || *readings[0].Value != 21.5 || msg.Seq != 1 {
				t.Fatalf("got seq %d, readings %+v (%v); want seq 1 and temp 21.5", msg.Seq, readings, err)
			}
		})
	}

	// --seq-file: starts at 1, counts up, is saved with mode 0600.
	for want := uint64(1); want <= 3; want++ {
		cmd := exec.Command(pylonBin, "seal", "--key", "p256.key", "--seq-file", "state/seq")
		cmd.Dir = dir
		if want == 1 {
			os.Mkdir(filepath.Join(dir, "state"), 0o700)
		}
		cmd.Stdin = strings.NewReader(good)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("seal %d: %v", want, err)
		}
		msg, err := envelope.Open(out, mustPublicKey(t, filepath.Join(dir, "p256.key")))
		if err != nil || msg.Seq != want {
			t.Fatalf("seal %d: got seq %v (%v), want %d", want, msg, err, want)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "state/seq"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("seq file: got %v (%v), want mode 0600", fi, err)
	}
	// A refused pack does not use up a number.
	cmd := exec.Command(pylonBin, "seal", "--key", "p256.key", "--seq-file", "state/seq")
	cmd.Dir, cmd.Stdin = dir, strings.NewReader(`[{"n":"x","u":"furlong","v":1}]`)
	if err := cmd.Run(); err == nil {
		t.Fatal("sealed an invalid pack")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "state/seq")); strings.TrimSpace(string(b)) != "3" {
		t.Fatalf("seq file after a refused pack: got %q, want 3", b)
	}
}

// mustPublicKey reads the public key of a PEM private key file.
func mustPublicKey(t *testing.T, name string) crypto.PublicKey {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	for rest := b; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			t.Fatalf("%s: no private key", name)
		}
		switch block.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return k.(crypto.Signer).Public()
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return k.Public()
		}
	}
}

func TestBinary_RetentionFlag(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  string
		ok   bool
	}{
		{"default", nil, "", true},
		{"forever", []string{"--retention", "0"}, "", true},
		{"days", []string{"--retention", "7d"}, "", true},
		{"env", nil, "PYLON_RETENTION=30d", true},
		{"flag over env", []string{"--retention", "0"}, "PYLON_RETENTION=30m", true},
		{"too short", []string{"--retention", "30m"}, "", false},
		{"negative", []string{"--retention", "-1h"}, "", false},
		{"bad env", nil, "PYLON_RETENTION=soon", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(pylonBin, append([]string{"serve", "--check-config", "--data", t.TempDir()}, tt.args...)...)
			cmd.Env = os.Environ()
			if tt.env != "" {
				cmd.Env = append(cmd.Env, tt.env)
			}
			out, err := cmd.CombinedOutput()
			if (err == nil) != tt.ok {
				t.Fatalf("got err=%v (%s), want ok=%v", err, out, tt.ok)
			}
			if !tt.ok && !strings.Contains(strings.ToLower(string(out)), "retention") {
				t.Errorf("error does not name the setting: %s", out)
			}
		})
	}
}

// TestBinary_Kill9KeepsAcknowledged publishes single-reading messages from
// a Go client with many in flight, kills the server with SIGKILL in the
// middle, restarts it on the same data and resends what was not
// acknowledged: every message must then be stored exactly once.
func TestBinary_Kill9KeepsAcknowledged(t *testing.T) {
	const total, killAfter, workers = 2000, 600, 32
	data := filepath.Join(t.TempDir(), "d")
	apiPort, mqttPort := freePort(t), freePort(t)
	s := startServe(t, data, apiPort, mqttPort)
	waitHealthy(t, s)
	p := binPlatform(t, s)
	d := p.CreateDevice("crash-test")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := p.EnrollKey(d.ID, key)
	addr := fmt.Sprintf("127.0.0.1:%d", mqttPort)
	caFile := filepath.Join(data, "ca.crt")

	msgs := make([][]byte, total+1)
	for seq := 1; seq <= total; seq++ {
		msgs[seq] = seal(t, key, uint64(seq), []senml.Record{{Name: "n", Value: num(float64(seq))}}, envelope.SealOptions{})
	}

	var (
		mu    sync.Mutex
		acked = map[int]bool{}
	)
	publishAll := func(dev *teleDevice, seqs []int, stopAt int, stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		work := make(chan int)
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := range work {
					pr, err := dev.Client.Publish(ctx, &paho.Publish{Topic: "devices/" + d.ID + "/telemetry", QoS: 1, Payload: msgs[seq]})
					if err != nil || pr == nil || pr.ReasonCode != 0 {
						continue // not acknowledged: resent later
					}
					mu.Lock()
					acked[seq] = true
					n := len(acked)
					mu.Unlock()
					if n == stopAt {
						stop()
						cancel()
					}
				}
			}()
		}
	feed:
		for _, seq := range seqs {
			select {
			case work <- seq:
			case <-ctx.Done():
				break feed
			}
		}
		close(work)
		wg.Wait()
	}

	dev := MustConnectDevice(t, addr, caFile, d.ID, cert)
	all := make([]int, 0, total)
	for seq := 1; seq <= total; seq++ {
		all = append(all, seq)
	}
	start := time.Now()
	publishAll(dev, all, killAfter, func() {
		if err := s.cmd.Process.Kill(); err != nil { // SIGKILL: no shutdown at all
			t.Errorf("kill: %v", err)
		}
	})
	// Fewer than killAfter acknowledged: kill it anyway; the check below fails.
	s.cmd.Process.Kill()
	s.cmd.Wait()
	mu.Lock()
	ackedBeforeKill := len(acked)
	mu.Unlock()
	t.Logf("%d acknowledged before kill -9 (%v)", ackedBeforeKill, time.Since(start))
	if ackedBeforeKill < killAfter || ackedBeforeKill == total {
		t.Fatalf("acknowledged before the kill: got %d, want at least %d and fewer than %d", ackedBeforeKill, killAfter, total)
	}

	s2 := startServe(t, data, apiPort, mqttPort)
	waitHealthy(t, s2)
	dev2 := MustConnectDevice(t, addr, caFile, d.ID, cert)
	var resend []int
	for _, seq := range all {
		if !acked[seq] {
			resend = append(resend, seq)
		}
	}
	publishAll(dev2, resend, -1, nil)
	if len(acked) != total {
		t.Fatalf("acknowledged after the resend: got %d, want %d", len(acked), total)
	}
	t.Logf("resent %d; all acknowledged after %v", len(resend), time.Since(start))

	seen := make(map[int]int)
	for _, r := range binPlatform(t, s2).Readings(d.ID) {
		seen[int(*r.Value)]++
	}
	for seq := 1; seq <= total; seq++ {
		if seen[seq] != 1 {
			t.Errorf("seq %d stored %d times, want exactly once", seq, seen[seq])
		}
	}
	if len(seen) != total {
		t.Errorf("stored %d distinct readings, want %d", len(seen), total)
	}
}

// TestBinary_Enroll: `pylon enroll` makes a device that `pylon seal` and
// mosquitto_pub can use at once, with the files enroll.sh makes.
func TestBinary_Enroll(t *testing.T) {
	requireTools(t, "mosquitto_pub")
	s := startServe(t, filepath.Join(t.TempDir(), "d"), freePort(t), freePort(t))
	waitHealthy(t, s)
	var dev struct{ ID string }
	mustJSON(t, s.sh(t, `$PYLON devices create enrolled-by-cli -o json`), &dev)
	var tok struct{ Token string }
	mustJSON(t, s.sh(t, `$PYLON tokens create --device `+dev.ID+` -o json`), &tok)

	if out, err := s.shErr(`$PYLON enroll dev`); err == nil || !strings.Contains(out, "--enroll-token") {
		t.Fatalf("enroll without a token: got %v, %q; want a usage error", err, out)
	}
	out := s.sh(t, `PYLON_ENROLL_TOKEN='`+tok.Token+`' $PYLON enroll --key ed25519 dev`)
	if !strings.Contains(out, "enrolled device "+dev.ID) {
		t.Fatalf("enroll: got %q", out)
	}
	if got := s.sh(t, `stat -c '%n %a' dev dev/device.key; cat dev/device.id; ls dev | sort | tr '\n' ' '`); got != "dev 700\ndev/device.key 600\n"+dev.ID+"\nca.crt device.crt device.id device.key server.url " {
		t.Fatalf("files: got %q", got)
	}
	if out, err := s.shErr(`$PYLON enroll --enroll-token '` + tok.Token + `' dev`); err == nil || !strings.Contains(out, "already holds an enrolled device") {
		t.Fatalf("enroll into an enrolled directory: got %v, %q", err, out)
	}
	if out, err := s.shErr(`$PYLON enroll --enroll-token '` + tok.Token + `' dev2`); err == nil || !strings.Contains(out, "enrollment refused (HTTP 401)") {
		t.Fatalf("enroll with a used token: got %v, %q", err, out)
	}

	s.sh(t, `echo '[{"n":"temp","u":"Cel","v":20.5}]' | $PYLON seal --key dev/device.key --seq-file dev/seq |
  mosquitto_pub --cafile dev/ca.crt --cert dev/device.crt --key dev/device.key -h localhost -p $MQTT_PORT -i `+dev.ID+` -q 1 -V mqttv5 -t devices/`+dev.ID+`/telemetry -s`)
	var list struct{ Readings []pylon.Reading }
	mustJSON(t, s.sh(t, `$PYLON readings list `+dev.ID+` -o json`), &list)
	if len(list.Readings) != 1 || list.Readings[0].Name != "temp" || *list.Readings[0].Value != 20.5 {
		t.Fatalf("readings: got %+v, want temp 20.5", list.Readings)
	}
}
