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

// TestMigration003_CertificatesOutliveDevices applies migration 003 to a
// database whose certificates table still has the 001 schema (device_id
// referencing devices ON DELETE CASCADE) and holds a certificate: the row
// keeps every column, the foreign key is gone, and deleting the device
// then keeps its certificate, revoked.
func TestMigration003_CertificatesOutliveDevices(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	db := sqlite.NewDB(path, nil)
	db.Now = func() time.Time { return storetest.T0 }
	if err := db.Open(ctx); err != nil {
		t.Fatal(err)
	}
	_, tokID, hash := pylon.NewSecret(pylon.EnrollmentTokenPrefix)
	if err := sqlite.NewEnrollmentTokenService(db).CreateEnrollmentToken(ctx, &pylon.EnrollmentToken{ID: tokID, Uses: 1, ExpiresAt: storetest.T0.Add(time.Hour)}, hash); err != nil {
		t.Fatal(err)
	}
	der := []byte("certificate DER")
	d, c, err := sqlite.NewEnrollmentStore(db).Enroll(ctx, tokID, hash, "old-schema", func(d *pylon.Device) (*pylon.Certificate, error) {
		return &pylon.Certificate{Serial: "0a0b0c", DeviceID: d.ID, KeyType: "Ed25519",
			NotBefore: storetest.T0, NotAfter: storetest.T0.Add(24 * time.Hour), DER: der}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// Put the table back as 001 made it, and forget 003.
	raw := openRaw(t, path)
	for _, q := range []string{
		`CREATE TABLE certificates_001 (
			seq INTEGER PRIMARY KEY AUTOINCREMENT, serial TEXT NOT NULL UNIQUE,
			device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
			not_before TEXT NOT NULL, not_after TEXT NOT NULL,
			status TEXT NOT NULL CHECK (status IN ('valid', 'superseded', 'revoked')),
			revoked_at TEXT, reason TEXT NOT NULL DEFAULT '', key_type TEXT NOT NULL DEFAULT '',
			der BLOB NOT NULL, created_at TEXT NOT NULL)`,
		`INSERT INTO certificates_001 SELECT * FROM certificates`,
		`DROP TABLE certificates`,
		`ALTER TABLE certificates_001 RENAME TO certificates`,
		`DELETE FROM migrations WHERE name = '003_certificates_outlive_devices.sql'`,
		// As if the cascade had deleted certificates issued after this one.
		`UPDATE sqlite_sequence SET seq = 1000 WHERE name = 'certificates'`,
	} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var fks int
	if err := raw.QueryRow(`SELECT COUNT(*) FROM pragma_foreign_key_list('certificates')`).Scan(&fks); err != nil || fks != 1 {
		t.Fatalf("old schema: %d foreign keys (%v), want 1", fks, err)
	}
	raw.Close()

	db, _ = MustOpenDB(t, path) // applies 003
	var counter int64
	if err := openRaw(t, path).QueryRow(`SELECT seq FROM sqlite_sequence WHERE name = 'certificates'`).Scan(&counter); err != nil || counter != 1000 {
		t.Fatalf("certificate seq counter after the migration: %d (%v), want 1000 kept", counter, err)
	}
	certs := sqlite.NewCertificateService(db)
	got, err := certs.FindCertificateBySerial(ctx, c.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if got.DeviceID != d.ID || got.Status != pylon.CertValid || got.KeyType != "Ed25519" || string(got.DER) != string(der) ||
		!got.NotBefore.Equal(c.NotBefore) || !got.NotAfter.Equal(c.NotAfter) {
		t.Fatalf("after the migration: got %+v, want %+v", got, c)
	}
	if err := sqlite.NewDeviceService(db).DeleteDevice(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	if got, err = certs.FindCertificateBySerial(ctx, c.Serial); err != nil || got.Status != pylon.CertRevoked {
		t.Fatalf("after deleting the device: got %v, %v; want the certificate revoked", got, err)
	}
}
