package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/sqlite"
	"github.com/pylonhq/pylon/storetest"
)

// clock is a settable clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// MustOpenDB opens the database at dsn with a settable clock and closes it
// when the test ends.
func MustOpenDB(tb testing.TB, dsn string) (*sqlite.DB, *clock) {
	tb.Helper()
	c := &clock{t: storetest.T0}
	db := sqlite.NewDB(dsn, nil)
	db.Now = c.Now
	if err := db.Open(context.Background()); err != nil {
		tb.Fatalf("open %s: %v", dsn, err)
	}
	tb.Cleanup(func() {
		if err := db.Close(); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	return db, c
}

// stores returns the services on db.
func stores(db *sqlite.DB, c *clock) storetest.Stores {
	return storetest.Stores{
		Devices:      sqlite.NewDeviceService(db),
		APITokens:    sqlite.NewAPITokenService(db),
		Certs:        sqlite.NewCertificateService(db),
		EnrollTokens: sqlite.NewEnrollmentTokenService(db),
		Enroll:       sqlite.NewEnrollmentStore(db),
		Audit:        sqlite.NewAuditService(db),
		Telemetry:    sqlite.NewTelemetryService(db),
		SetNow:       c.Set,
	}
}

// tempPath returns the path of a new database file in a temporary
// directory.
func tempPath(tb testing.TB) string {
	return filepath.Join(tb.TempDir(), "data", "pylon.db")
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Stores {
		// A file, so that concurrency is real (WAL, separate connections).
		return stores(MustOpenDB(t, tempPath(t)))
	})
}

func TestMemory(t *testing.T) {
	db, c := MustOpenDB(t, sqlite.MemoryDSN)
	s := stores(db, c)
	ctx := context.Background()
	d := &pylon.Device{Name: "in-memory"}
	if err := s.Devices.CreateDevice(ctx, d); err != nil {
		t.Fatalf("create: %v", err)
	}
	// Reads and writes from many goroutines see the same database.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 10 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := s.Devices.FindDeviceByID(ctx, d.ID); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			if err := s.Devices.CreateDevice(ctx, &pylon.Device{Name: fmt.Sprintf("m-%d", i)}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent use: %v", err)
	}
	if st, err := s.Devices.DeviceStats(ctx); err != nil || st.Total != 11 {
		t.Fatalf("got %d devices (err %v), want 11", st.Total, err)
	}
	if v, err := s.Audit.VerifyAudit(ctx); err != nil || !v.OK || v.Records != 11 {
		t.Fatalf("verify: %+v (err %v), want OK with 11 records", v, err)
	}
}

func TestReopen(t *testing.T) {
	path := tempPath(t)
	ctx := context.Background()

	db := sqlite.NewDB(path, nil)
	if err := db.Open(ctx); err != nil {
		t.Fatalf("open: %v", err)
	}
	d := &pylon.Device{Name: "durable", Labels: map[string]string{"k": "v"}}
	if err := sqlite.NewDeviceService(db).CreateDevice(ctx, d); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	// Reopening applies no migration twice and keeps the data.
	for i := range 2 {
		db := sqlite.NewDB(path, nil)
		if err := db.Open(ctx); err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		got, err := sqlite.NewDeviceService(db).FindDeviceByID(ctx, d.ID)
		if err != nil {
			t.Fatalf("find after reopen: %v", err)
		}
		if got.Name != d.Name || got.Labels["k"] != "v" || !got.CreatedAt.Equal(d.CreatedAt) {
			t.Fatalf("got %+v, want %+v", *got, *d)
		}
		if v, err := sqlite.NewAuditService(db).VerifyAudit(ctx); err != nil || !v.OK || v.Records != 1 {
			t.Fatalf("verify after reopen: %+v (err %v)", v, err)
		}
		if err := db.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
	}

	raw := openRaw(t, path)
	var n int
	if err := raw.QueryRow(`SELECT COUNT(*) FROM migrations`).Scan(&n); err != nil {
		t.Fatalf("count migrations: %v", err)
	}
	files, _ := filepath.Glob("migration/*.sql")
	if n != len(files) || n == 0 {
		t.Fatalf("got %d recorded migrations, want %d", n, len(files))
	}
	var mode string
	if err := raw.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("got journal mode %q (err %v), want wal", mode, err)
	}
}

func TestUnknownMigrationRefused(t *testing.T) {
	path := tempPath(t)
	MustOpenDB(t, path) // creates the schema; closed at cleanup
	raw := openRaw(t, path)
	if _, err := raw.Exec(`INSERT INTO migrations (name, applied_at) VALUES ('999_future.sql', '')`); err != nil {
		t.Fatalf("insert: %v", err)
	}
	db := sqlite.NewDB(path, nil)
	err := db.Open(context.Background())
	if err == nil || !strings.Contains(err.Error(), "999_future.sql") {
		db.Close()
		t.Fatalf("got error %v, want the unknown migration refused", err)
	}
}

func TestBadDSN(t *testing.T) {
	for name, dsn := range map[string]string{
		"empty":     "",
		"query":     filepath.Join(t.TempDir(), "x.db?mode=ro"),
		"file URI":  "file:" + filepath.Join(t.TempDir(), "x.db"),
		"directory": t.TempDir(),
	} {
		t.Run(name, func(t *testing.T) {
			db := sqlite.NewDB(dsn, nil)
			if err := db.Open(context.Background()); err == nil {
				db.Close()
				t.Fatalf("open %q: got no error, want one", dsn)
			}
		})
	}
}

func TestFileMode(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string)
	}{
		{"new file", func(t *testing.T, path string) {}},
		{"existing world-readable file", func(t *testing.T, path string) {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tempPath(t)
			tt.prepare(t, path)
			db, c := MustOpenDB(t, path)
			// Write something, so that the WAL exists too.
			if err := stores(db, c).Devices.CreateDevice(context.Background(), &pylon.Device{Name: "x"}); err != nil {
				t.Fatalf("create: %v", err)
			}
			for _, p := range []string{path, path + "-wal", path + "-shm"} {
				fi, err := os.Stat(p)
				if p != path && err != nil {
					continue // not every journal file need exist
				} else if err != nil {
					t.Fatalf("stat: %v", err)
				}
				if got := fi.Mode().Perm(); got&^0o600 != 0 {
					t.Fatalf("%s: got mode %v, want at most 0600", filepath.Base(p), got)
				}
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("got mode %v (err %v), want 0600", fi.Mode().Perm(), err)
			}
		})
	}
}

// openRaw opens the database file directly, bypassing the store, as an
// attacker with file access would.
func openRaw(t testing.TB, path string) *sql.DB {
	t.Helper()
	raw, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatalf("open raw: %v", err)
	}
	t.Cleanup(func() { raw.Close() })
	return raw
}

// auditedDB returns the path of a closed database with a few audit
// records.
func auditedDB(t *testing.T, n int) string {
	t.Helper()
	path := tempPath(t)
	db := sqlite.NewDB(path, nil)
	if err := db.Open(context.Background()); err != nil {
		t.Fatalf("open: %v", err)
	}
	ctx := pylon.NewContextWithPrincipal(context.Background(), pylon.Principal{Kind: pylon.PrincipalUser, ID: "alice"})
	devices := sqlite.NewDeviceService(db)
	for i := range n {
		if err := devices.CreateDevice(ctx, &pylon.Device{Name: fmt.Sprintf("d-%d", i)}); err != nil {
			t.Fatalf("create: %v", err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	return path
}

func TestAuditTriggers(t *testing.T) {
	path := auditedDB(t, 3)
	raw := openRaw(t, path)
	for name, stmt := range map[string]string{
		"update":     `UPDATE audit SET actor = 'user:mallory' WHERE seq = 2`,
		"delete":     `DELETE FROM audit WHERE seq = 3`,
		"delete all": `DELETE FROM audit`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := raw.Exec(stmt)
			if err == nil || !strings.Contains(err.Error(), "append-only") {
				t.Fatalf("got error %v, want the trigger to refuse", err)
			}
		})
	}
	var n int
	if err := raw.QueryRow(`SELECT COUNT(*) FROM audit WHERE actor = 'user:alice'`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("got %d untouched records (err %v), want 3", n, err)
	}
}

func TestAuditTamperDetected(t *testing.T) {
	tests := []struct {
		name    string
		tamper  []string
		wantBad int64
	}{
		{"altered actor", []string{`UPDATE audit SET actor = 'user:mallory' WHERE seq = 2`}, 2},
		{"altered details", []string{`UPDATE audit SET details = '{"name":"other"}' WHERE seq = 3`}, 3},
		{"altered time", []string{`UPDATE audit SET time = '2001-01-01T00:00:00.000000000Z' WHERE seq = 1`}, 1},
		{"deleted record", []string{`DELETE FROM audit WHERE seq = 2`}, 3},
		{"deleted last record", []string{`DELETE FROM audit WHERE seq = 4`}, 0},
		{"renumbered", []string{`DELETE FROM audit WHERE seq = 2`, `UPDATE audit SET seq = seq - 1 WHERE seq > 2`}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := auditedDB(t, 4)
			raw := openRaw(t, path)
			for _, stmt := range []string{`DROP TRIGGER audit_no_update`, `DROP TRIGGER audit_no_delete`} {
				if _, err := raw.Exec(stmt); err != nil {
					t.Fatalf("%s: %v", stmt, err)
				}
			}
			for _, stmt := range tt.tamper {
				if _, err := raw.Exec(stmt); err != nil {
					t.Fatalf("%s: %v", stmt, err)
				}
			}
			raw.Close()

			db, _ := MustOpenDB(t, path)
			v, err := sqlite.NewAuditService(db).VerifyAudit(context.Background())
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			if tt.wantBad == 0 {
				// Cutting off the tail is invisible to the chain alone.
				if !v.OK || v.Records != 3 {
					t.Fatalf("got %+v, want OK with 3 records", v)
				}
				return
			}
			if v.OK || v.BadSeq != tt.wantBad || v.Problem == "" {
				t.Fatalf("got %+v, want OK=false at seq %d with a problem", v, tt.wantBad)
			}
		})
	}
}

func TestAuditVerifyBatches(t *testing.T) {
	// More records than one verification batch (1000).
	const n = 2100
	path := tempPath(t)
	db, c := MustOpenDB(t, path)
	audit := stores(db, c).Audit
	ctx := context.Background()
	if err := audit.AppendAudit(ctx, &pylon.AuditRecord{Action: pylon.ActionAuthFailed, Object: "api_token:0"}); err != nil {
		t.Fatalf("append: %v", err)
	}
	// Bulk-load the rest of a valid chain in one transaction.
	first, err := audit.FindAuditRecords(ctx, pylon.AuditFilter{})
	if err != nil || len(first) != 1 {
		t.Fatalf("find: %v", err)
	}
	raw := openRaw(t, path)
	tx, err := raw.Begin()
	if err != nil {
		t.Fatal(err)
	}
	prev := first[0].Hash
	for i := 2; i <= n; i++ {
		r := pylon.AuditRecord{Seq: int64(i), Time: storetest.T0, Actor: "system", Action: pylon.ActionAuthFailed, Object: fmt.Sprintf("api_token:%d", i), PrevHash: prev}
		r.Hash = r.ComputeHash()
		if _, err := tx.Exec(`INSERT INTO audit (seq, time, actor, action, object, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)`,
			r.Seq, r.Time.Format("2006-01-02T15:04:05.000000000Z"), r.Actor, r.Action, r.Object, r.PrevHash, r.Hash); err != nil {
			t.Fatal(err)
		}
		prev = r.Hash
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// The store appends after the loaded records.
	if err := audit.AppendAudit(ctx, &pylon.AuditRecord{Action: pylon.ActionAuthFailed}); err != nil {
		t.Fatalf("append: %v", err)
	}
	v, err := audit.VerifyAudit(ctx)
	if err != nil || !v.OK || v.Records != n+1 {
		t.Fatalf("got %+v (err %v), want OK with %d records", v, err, n+1)
	}
	// A break in the second batch is found at its record.
	if _, err := raw.Exec(`DROP TRIGGER audit_no_update`); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`UPDATE audit SET object = 'api_token:x' WHERE seq = 1500`); err != nil {
		t.Fatal(err)
	}
	if v, err := audit.VerifyAudit(ctx); err != nil || v.OK || v.BadSeq != 1500 || v.Records != 1499 {
		t.Fatalf("got %+v (err %v), want a break at 1500 after 1499 good records", v, err)
	}
}

// loadDevices bulk-inserts n registered devices named dev-00000, ...
// with label site=site-(i%50), bypassing the store, and returns the raw
// connection.
func loadDevices(tb testing.TB, path string, n int) *sql.DB {
	tb.Helper()
	raw := openRaw(tb, path)
	for _, stmt := range []string{
		`WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
		 INSERT INTO devices (id, name, labels, state, created_at, updated_at)
		 SELECT lower(hex(randomblob(8))), printf('dev-%05d', i), '{"site":"site-' || (i % 50) || '"}', 'registered',
		        '2030-01-01T00:00:00.000000000Z', '2030-01-01T00:00:00.000000000Z' FROM n ORDER BY i`,
		`INSERT INTO device_labels (device_seq, key, value) SELECT seq, 'site', json_extract(labels, '$.site') FROM devices`,
		`ANALYZE`,
	} {
		var args []any
		if strings.Contains(stmt, "?") {
			args = append(args, n)
		}
		if _, err := raw.Exec(stmt, args...); err != nil {
			tb.Fatalf("bulk load: %v", err)
		}
	}
	return raw
}

func TestManyDevices(t *testing.T) {
	const n = 10_000
	path := tempPath(t)
	db, c := MustOpenDB(t, path)
	s := stores(db, c)

	// Bulk-load directly: the point is the read path at fleet size.
	raw := loadDevices(t, path, n)

	ctx := context.Background()
	filter := pylon.DeviceFilter{Labels: map[string]string{"site": "site-7"}, Limit: pylon.MaxDeviceLimit}
	devs, next, err := s.Devices.FindDevices(ctx, filter)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if len(devs) != n/50 || next != "" {
		t.Fatalf("got %d devices (next %q), want %d on one page", len(devs), next, n/50)
	}
	seen := 0
	f := pylon.DeviceFilter{Limit: pylon.MaxDeviceLimit}
	for {
		devs, next, err := s.Devices.FindDevices(ctx, f)
		if err != nil {
			t.Fatalf("find: %v", err)
		}
		for _, d := range devs {
			if want := fmt.Sprintf("dev-%05d", seen); d.Name != want {
				t.Fatalf("got %s, want %s", d.Name, want)
			}
			seen++
		}
		if next == "" {
			break
		}
		f.Cursor = next
	}
	if seen != n {
		t.Fatalf("paged through %d devices, want %d", seen, n)
	}

	// The label filter and the cursor use indexes, not a scan of devices.
	rows, err := raw.Query(`EXPLAIN QUERY PLAN SELECT seq FROM devices WHERE seq > ? AND seq IN (SELECT device_seq FROM device_labels WHERE key = ? AND value = ?) ORDER BY seq LIMIT 101`, 5, "site", "site-7")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	joined := strings.Join(plan, "; ")
	if !strings.Contains(joined, "device_labels_kv_idx") || strings.Contains(joined, "SCAN devices") && !strings.Contains(joined, "USING INTEGER PRIMARY KEY") {
		t.Fatalf("got plan %q, want the label index and no full scan", joined)
	}
}

func TestClosedDB(t *testing.T) {
	db := sqlite.NewDB(tempPath(t), nil)
	err := sqlite.NewDeviceService(db).CreateDevice(context.Background(), &pylon.Device{Name: "x"})
	if err == nil {
		t.Fatal("got no error from an unopened database")
	}
	if err := db.Close(); err != nil {
		t.Fatalf("close unopened: %v", err)
	}

	db, c := MustOpenDB(t, tempPath(t))
	s := stores(db, c)
	if err := db.Open(context.Background()); err == nil {
		t.Fatal("got no error opening an open database")
	}
	if err := db.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	ctx := context.Background()
	if _, err := s.Devices.FindDeviceByID(ctx, "aaaaaaaaaaaaaaaa"); err == nil || pylon.ErrorCode(err) != pylon.EINTERNAL {
		t.Fatalf("read after close: got %v, want an internal error", err)
	}
	if err := s.Devices.CreateDevice(ctx, &pylon.Device{Name: "late"}); err == nil {
		t.Fatal("write after close: got no error")
	}
}

func BenchmarkFindDevices(b *testing.B) {
	path := tempPath(b)
	db, c := MustOpenDB(b, path)
	loadDevices(b, path, 10_000)
	devices := stores(db, c).Devices
	ctx := context.Background()
	for name, f := range map[string]pylon.DeviceFilter{
		"first page":   {},
		"label":        {Labels: map[string]string{"site": "site-7"}},
		"query":        {Query: "dev-099"},
		"state online": {State: ptr(pylon.DeviceActive), Online: ptr(true)},
	} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := devices.FindDevices(ctx, f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
