package sqlite_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/sqlite"
	"github.com/pylonhq/pylon/storetest"
)

// BenchmarkEnroll is the store's part of a fleet enrollment on a database
// file: the token checked and used, a device created and activated, the
// certificate recorded, four audit records chained, committed. The
// certificate is a stand-in of the size of a real one, so that signing is
// not measured. "serial" enrolls one at a time, a commit each;
// "concurrent" has about 8 callers share commits through the group
// committer.
func BenchmarkEnroll(b *testing.B) {
	for _, bc := range []struct {
		name    string
		callers int
	}{{"serial", 1}, {"concurrent", 8}} {
		b.Run(bc.name, func(b *testing.B) {
			db, _ := MustOpenDB(b, tempPath(b))
			ctx := context.Background()
			_, id, hash := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
			tok := &pylon.EnrollmentToken{ID: id, Labels: map[string]string{"fleet": "bench"}, Uses: pylon.MaxEnrollmentUses,
				ExpiresAt: storetest.T0.Add(time.Hour)}
			if err := sqlite.NewEnrollmentTokenService(db).CreateEnrollmentToken(ctx, tok, hash); err != nil {
				b.Fatal(err)
			}
			store := sqlite.NewEnrollmentStore(db)
			issue := func(d *pylon.Device) (*pylon.Certificate, error) {
				serial := make([]byte, 16)
				rand.Read(serial)
				der := make([]byte, 480)
				rand.Read(der)
				return &pylon.Certificate{Serial: hex.EncodeToString(serial), DeviceID: d.ID, KeyType: "ECDSA-P256",
					NotBefore: storetest.T0, NotAfter: storetest.T0.Add(30 * 24 * time.Hour), DER: der}, nil
			}
			var n atomic.Int64
			enroll := func() {
				name := fmt.Sprintf("sensor-%d", n.Add(1))
				if _, _, err := store.Enroll(ctx, id, hash, name, issue); err != nil {
					b.Error(err)
				}
			}
			b.ReportAllocs()
			if bc.callers == 1 {
				for b.Loop() {
					enroll()
				}
				return
			}
			b.SetParallelism(max(1, bc.callers/runtime.GOMAXPROCS(0)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					enroll()
				}
			})
		})
	}
}
