package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/mock"
)

// TestPruneCertificates checks that the loop deletes what expired more
// than expiredCertKeep ago, at once and then every interval, as the
// system, and ends with its context.
func TestPruneCertificates(t *testing.T) {
	calls := make(chan time.Time, 10)
	certs := &mock.CertificateService{DeleteExpiredCertificatesFn: func(ctx context.Context, before time.Time) (int64, error) {
		if p := pylon.PrincipalFromContext(ctx); p.Kind != pylon.SystemPrincipal.Kind {
			t.Errorf("called as %+v, want the system", p)
		}
		calls <- before
		return 3, nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() {
		pruneCertificates(ctx, certs, slog.New(slog.DiscardHandler), 10*time.Millisecond)
		close(done)
	}()
	for i := range 2 {
		select {
		case before := <-calls:
			if want := start.Add(-expiredCertKeep); before.Before(want.Add(-time.Second)) || before.After(time.Now().Add(-expiredCertKeep)) {
				t.Fatalf("call %d: before %v, want about %v", i, before, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d did not come", i)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop did not end with its context")
	}
}
