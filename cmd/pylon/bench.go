package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/est"
	"github.com/pylonhq/pylon/httpapi"
)

const benchVerbs = "enroll"

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
	}
	return usageErrorf("bench: unknown kind %q; want one of: %s", v, benchVerbs)
}

// benchEnroll measures EST simpleenroll: each request on a new TLS
// connection, each a new device from one fleet token. Keys and CSRs are
// made before the clock starts: on a real fleet the devices make them.
func (e *cliEnv) benchEnroll(ctx context.Context, args []string) error {
	fs := e.flags("bench enroll")
	n := fs.Int("n", 2000, "enrollments")
	conc := fs.Int("concurrency", 2*runtime.NumCPU(), "parallel clients")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *n < 1 || *conc < 1 {
		return usageErrorf("-n and -concurrency must be positive")
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	run := pylon.NewID()[:6]
	tok, err := c.CreateEnrollmentToken(ctx, httpapi.EnrollmentTokenRequest{Labels: map[string]string{"bench": run}, Uses: *n, TTL: "1h"})
	if err != nil {
		return err
	}
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

	tlsConf := c.HTTP.Transport.(*http.Transport).TLSClientConfig.Clone()
	tlsConf.NextProtos = []string{"http/1.1"}
	tlsConf.ClientSessionCache = nil // a full handshake every time
	var (
		next, failed atomic.Int64
		lat          = make([]time.Duration, *n)
		errOnce      sync.Once
		firstErr     error
	)
	fmt.Fprintf(e.stderr, "enrolling with %d clients, a new TLS connection per request...\n", *conc)
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
				err := enrollOnce(ctx, c.BaseURL, tlsConf, tok.Token, bodies[i])
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
	slices.Sort(lat)
	ok := int64(*n) - failed.Load()
	res := map[string]any{
		"enrollments": *n, "failed": failed.Load(), "concurrency": *conc,
		"seconds": elapsed.Seconds(), "per_second": float64(ok) / elapsed.Seconds(),
		"p50_ms": ms(lat[len(lat)/2]), "p99_ms": ms(lat[len(lat)*99/100]), "max_ms": ms(lat[len(lat)-1]),
	}
	if firstErr != nil {
		res["first_error"] = firstErr.Error()
	}
	return e.print(res, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "enrollments\t%d (%d failed)\n", *n, failed.Load())
		fmt.Fprintf(w, "rate\t%.0f/s over %.2fs with %d clients\n", res["per_second"], elapsed.Seconds(), *conc)
		fmt.Fprintf(w, "latency\tp50 %.1f ms, p99 %.1f ms, max %.1f ms\n", res["p50_ms"], res["p99_ms"], res["max_ms"])
		if s, ok := res["first_error"]; ok {
			fmt.Fprintf(w, "first error\t%s\n", s)
		}
	})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// enrollOnce does one simpleenroll on its own TLS connection.
func enrollOnce(ctx context.Context, base string, conf *tls.Config, token string, body []byte) error {
	tr := &http.Transport{TLSClientConfig: conf, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/.well-known/est/simpleenroll", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/pkcs10")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	_, err = est.DecodeCertsOnly(b)
	return err
}
