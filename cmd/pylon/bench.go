package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/est"
	"github.com/pylonhq/pylon/httpapi"
)

const benchVerbs = "enroll, ingest"

// runBench implements `pylon bench KIND`: load generators that measure a
// running server.
func (e *cliEnv) runBench(ctx context.Context, args []string) error {
	v, args, err := verb(args, benchVerbs)
	if err != nil {
		return err
	}
	switch v {
	case "enroll":
		return e.benchEnroll(ctx, args)
	case "ingest":
		return e.benchIngest(ctx, args)
	}
	return usageErrorf("bench: unknown kind %q; want one of: %s", v, benchVerbs)
}

// benchEnroll measures EST simpleenroll: each request on a new TCP and TLS
// connection (a full handshake: no keep-alive, no session resumption), each
// a new device from one fleet token. Keys and CSRs are made before the
// clock starts: on a real fleet the devices make them. Where the numbers
// can be had (Linux, an admin token), it also reports the CPU time the
// server (its process_cpu_seconds_total metric) and this client (from
// /proc) spent per enrollment, which is what decides the rate when both
// share the machine.
func (e *cliEnv) benchEnroll(ctx context.Context, args []string) error {
	fs := e.flags("bench enroll")
	n := fs.Int("n", 2000, "enrollments")
	conc := fs.Int("concurrency", 8*runtime.NumCPU(), "parallel clients")
	kex := fs.String("kex", "default", "TLS key exchange the clients offer: default (Go's: hybrid X25519MLKEM768 first), x25519 or p256")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the client's timed phase to `file`")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *n < 1 || *conc < 1 {
		return usageErrorf("-n and -concurrency must be positive")
	}
	curves, known := benchCurves[*kex]
	if !known {
		return usageErrorf("-kex must be default, x25519 or p256")
	}
	prof, err := createCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer prof.stop()
	c, err := e.client()
	if err != nil {
		return err
	}
	en, err := newEnroller(c, curves)
	if err != nil {
		return err
	}
	run := pylon.NewID()[:6]
	tok, err := c.CreateEnrollmentToken(ctx, httpapi.EnrollmentTokenRequest{Labels: map[string]string{"bench": run}, Uses: *n, TTL: "1h"})
	if err != nil {
		return err
	}
	en.token = tok.Token
	fmt.Fprintf(e.stderr, "making %d P-256 keys and CSRs...\n", *n)
	bodies := make([][]byte, *n)
	var wg sync.WaitGroup
	for w := 0; w < runtime.NumCPU(); w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < *n; i += runtime.NumCPU() {
				key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: fmt.Sprintf("bench-%s-%d", run, i)}}, key)
				bodies[i] = est.EncodeCSR(der)
			}
		}(w)
	}
	wg.Wait()

	if err := prof.start(); err != nil {
		return err
	}
	// The load generator's own garbage collection is CPU the server does
	// not get: with a small heap, collect less often while measuring.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	var (
		next, failed atomic.Int64
		lat          = make([]time.Duration, *n)
		errOnce      sync.Once
		firstErr     error
	)
	fmt.Fprintf(e.stderr, "enrolling with %d clients, a new TLS connection per request...\n", *conc)
	srv0, srvOK := serverCPU(ctx, c)
	cli0, cliOK := processCPU()
	start := time.Now()
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				err := en.enroll(ctx, bodies[i])
				lat[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cli1, _ := processCPU()
	srv1, srvOK1 := serverCPU(ctx, c)
	slices.Sort(lat)
	ok := int64(*n) - failed.Load()
	res := map[string]any{
		"enrollments": *n, "failed": failed.Load(), "concurrency": *conc, "kex": *kex,
		"seconds": elapsed.Seconds(), "per_second": float64(ok) / elapsed.Seconds(),
		"p50_ms": ms(lat[len(lat)/2]), "p99_ms": ms(lat[len(lat)*99/100]), "max_ms": ms(lat[len(lat)-1]),
	}
	perOK := float64(max(ok, 1))
	if cliOK {
		cpu := (cli1 - cli0).Seconds()
		res["client_cpu_s"], res["client_cpu_ms_per_enrollment"] = cpu, 1000*cpu/perOK
	}
	if srvOK && srvOK1 {
		cpu := srv1 - srv0
		res["server_cpu_s"], res["server_cpu_ms_per_enrollment"] = cpu, 1000*cpu/perOK
	}
	if firstErr != nil {
		res["first_error"] = firstErr.Error()
	}
	return e.print(res, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "enrollments\t%d (%d failed)\n", *n, failed.Load())
		fmt.Fprintf(w, "rate\t%.0f/s over %.2fs with %d clients, key exchange %s\n", res["per_second"], elapsed.Seconds(), *conc, *kex)
		fmt.Fprintf(w, "latency\tp50 %.1f ms, p99 %.1f ms, max %.1f ms\n", res["p50_ms"], res["p99_ms"], res["max_ms"])
		for _, who := range []string{"server", "client"} {
			if cpu, ok := res[who+"_cpu_s"].(float64); ok {
				fmt.Fprintf(w, "%s CPU\t%.2f ms per enrollment (%.2f cores)\n", who, res[who+"_cpu_ms_per_enrollment"], cpu/elapsed.Seconds())
			}
		}
		if s, ok := res["first_error"]; ok {
			fmt.Fprintf(w, "first error\t%s\n", s)
		}
	})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// benchCurves are the key exchanges `bench enroll -kex` can offer. nil is
// Go's default, which prefers the post-quantum hybrid X25519MLKEM768 as the
// device SDK does; the classic ones are what most embedded TLS stacks
// offer. The server keeps its own (default) preferences either way.
var benchCurves = map[string][]tls.CurveID{
	"default": nil,
	"x25519":  {tls.X25519},
	"p256":    {tls.CurveP256},
}

// enrollTimeout bounds one enrollment of the benchmark.
const enrollTimeout = 30 * time.Second

// enroller sends simpleenroll requests, each on its own connection. It is
// deliberately lean (no http.Transport and its goroutines per request),
// because it shares the machine's CPUs with the server it measures.
type enroller struct {
	addr  string // host:port
	url   string // of simpleenroll
	token string
	conf  *tls.Config // shared; no session cache, so no resumption

	roots      *x509.CertPool // nil: the system roots
	serverName string
	verified   atomic.Pointer[verifiedLeaf]
}

// verifiedLeaf is a server certificate whose chain has been verified.
type verifiedLeaf struct {
	raw      []byte
	notAfter time.Time
}

// verifyServer is the enroller's check of the server's certificate. The
// first handshake verifies the chain to the roots and the host name in
// full; later ones check that the server presents that same certificate,
// still valid, instead of building and checking the chain again for
// identical bytes. crypto/tls still verifies the server's CertificateVerify
// signature with that certificate's key on every handshake, so each
// connection proves that the server holds the key.
func (en *enroller) verifyServer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	now := time.Now()
	if v := en.verified.Load(); v != nil && bytes.Equal(v.raw, leaf.Raw) && now.Before(v.notAfter) {
		return nil
	}
	opts := x509.VerifyOptions{Roots: en.roots, DNSName: en.serverName, Intermediates: x509.NewCertPool(), CurrentTime: now}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return err
	}
	en.verified.Store(&verifiedLeaf{raw: leaf.Raw, notAfter: leaf.NotAfter})
	return nil
}

func newEnroller(c *httpapi.Client, curves []tls.CurveID) (*enroller, error) {
	u, err := url.Parse(c.BaseURL)
	if err != nil || u.Scheme != "https" {
		return nil, usageErrorf("bench enroll needs an https:// server, not %q", c.BaseURL)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	en := &enroller{addr: addr, url: c.BaseURL + "/.well-known/est/simpleenroll", serverName: u.Hostname()}
	if tr, ok := c.HTTP.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
		en.roots = tr.TLSClientConfig.RootCAs // the pinned CA, or nil for the system roots
	}
	en.conf = &tls.Config{
		MinVersion:       tls.VersionTLS12,
		ServerName:       en.serverName,
		NextProtos:       []string{"http/1.1"},
		CurvePreferences: curves,
		// The certificate is verified by verifyServer instead.
		InsecureSkipVerify: true,
		VerifyConnection:   en.verifyServer,
	}
	return en, nil
}

// enroll does one simpleenroll: a TCP connection, a full TLS handshake
// verifying the server's certificate, the request, and the PKCS#7 answer
// decoded.
func (en *enroller) enroll(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, enrollTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", en.addr)
	if err != nil {
		return err
	}
	conn := tls.Client(raw, en.conf)
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls handshake: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, en.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Close = true
	req.Header.Set("Content-Type", "application/pkcs10")
	req.Header.Set("Authorization", "Bearer "+en.token)
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, est.MaxCertsOnlySize))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	_, err = est.DecodeCertsOnly(b)
	return err
}

// userHZ is the unit of the times in /proc (USER_HZ, 100 on Linux).
const userHZ = 100

// processCPU returns the user and system CPU time this process has used,
// from /proc/self/stat, and false where there is no such file.
func processCPU() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, false
	}
	// The command name (field 2) may hold spaces; utime and stime are
	// fields 14 and 15, the 12th and 13th after the name.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * time.Second / userHZ, true
}

// serverCPU returns the server's process_cpu_seconds_total from /metrics,
// and false if the server does not give it (no admin token, not Linux).
func serverCPU(ctx context.Context, c *httpapi.Client) (float64, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/metrics", nil)
	if err != nil {
		return 0, false
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, false
	}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "process_cpu_seconds_total "); ok {
			cpu, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return cpu, err == nil
		}
	}
	return 0, false
}

// cpuProfile is the file a CPU profile of this process is written to,
// created as soon as the flags are read so that a bad path fails before
// the benchmark's setup. A nil *cpuProfile profiles nothing.
type cpuProfile struct{ f *os.File }

// createCPUProfile creates the file name; with no name, it returns nil.
func createCPUProfile(name string) (*cpuProfile, error) {
	if name == "" {
		return nil, nil
	}
	f, err := os.Create(name)
	if err != nil {
		return nil, err
	}
	return &cpuProfile{f}, nil
}

// start starts profiling into the file.
func (p *cpuProfile) start() error {
	if p == nil {
		return nil
	}
	return pprof.StartCPUProfile(p.f)
}

// stop ends the profile, if one is under way, and closes the file; once.
func (p *cpuProfile) stop() {
	if p == nil || p.f == nil {
		return
	}
	pprof.StopCPUProfile()
	p.f.Close()
	p.f = nil
}
