// Package sqlite implements the store interfaces of package pylon
// (DeviceService, APITokenService, CertificateService,
// EnrollmentTokenService, EnrollmentStore, AuditService and
// TelemetryService) on SQLite, with the cgo-free driver modernc.org/sqlite.
//
// # Connections and locking
//
// A DB holds two pools on the same file. The writer pool has exactly one
// connection and begins every transaction with BEGIN IMMEDIATE, so writers
// queue in Go instead of failing with SQLITE_BUSY, and a read-then-write
// transaction (an enrollment, a transition) never races another writer. The
// reader pool has several connections with PRAGMA query_only; in WAL mode
// they read a consistent snapshot while a write is in progress. A
// ":memory:" database uses the single writer connection for everything, so
// that all callers see the same database.
//
// Code holding a write transaction must run every query on that
// transaction, never on the reader pool: with ":memory:" the two are the
// same connection and the second request would wait forever.
//
// # Schema
//
// Migrations are embedded from migration/*.sql, applied in lexical order,
// each in its own transaction, and recorded in the migrations table. A
// database that records a migration this build does not know is refused.
// Times are stored as fixed-width UTC text with nanoseconds, so they
// round-trip exactly and compare as strings.
//
// Every mutation of devices, tokens and certificates appends its audit
// record in the same transaction; the background deletions of expired
// certificates and old telemetry are logged, not audited (they change no
// state anybody acts on). The audit table has triggers that abort any
// UPDATE or DELETE.
package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pylonhq/pylon"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migration/*.sql
var migrationFS embed.FS

// MemoryDSN is the data source name of a private in-memory database.
const MemoryDSN = ":memory:"

// connection parameters understood by modernc.org/sqlite. busy_timeout is
// applied first by the driver.
const (
	commonParams = "_pragma=busy_timeout(5000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	writerParams = commonParams + "&_pragma=journal_mode(WAL)&_txlock=immediate" + writerTuning
	readerParams = commonParams + "&_pragma=query_only(1)"
)

// writerTuning are the writer connection's performance settings:
//   - temp_store(MEMORY): the statement journal of a multi-row INSERT or of
//     a group commit's savepoint is kept in memory; on disk it was a new
//     temporary file and a pwrite per page, per transaction.
//   - cache_size(-65536): 64 MiB of page cache, so that a large batch does
//     not spill dirty pages to the WAL before its commit.
//   - wal_autocheckpoint(0): the writer never checkpoints; see
//     startCheckpointer.
//   - journal_size_limit: the WAL file is cut back to walLimit (256 MiB)
//     when it starts over.
const writerTuning = "&_pragma=temp_store(2)&_pragma=cache_size(-65536)&_pragma=wal_autocheckpoint(0)&_pragma=journal_size_limit(268435456)"

// DB is the SQLite database shared by the services of this package.
type DB struct {
	writer *sql.DB // one connection; BEGIN IMMEDIATE
	reader *sql.DB // query_only pool; the writer itself for ":memory:"

	// DSN is a file path, or ":memory:".
	DSN string

	// Now returns the current time. It defaults to time.Now; tests inject
	// their own clock. It must be safe for concurrent use.
	Now func() time.Time

	logger *slog.Logger
	stmts  stmtCache // prepared on the writer connection

	// group commit, see runBatched
	batchOnce sync.Once
	batchCh   chan *batchReq
	batchStop chan struct{} // closed by Close
	batchDone chan struct{} // closed when the committer has stopped

	// background checkpoints of a file database, see startCheckpointer
	ckpt       *sql.DB
	ckptKick   chan struct{}
	ckptDone   chan struct{}
	ckptWarned time.Time // last checkpoint warning; the checkpoint loop's own

	// restartPages is the WAL length at which a checkpoint starts the WAL
	// over (the restartPages constant; tests set less before Open).
	restartPages int

	// writerWait bounds the checkpointer's wait for the writer
	// (defaultWriterWait; tests set more before Open). testWriterWait, if
	// set, is called with true as the checkpointer starts to wait for the
	// writer, and with false once its round there is over.
	writerWait     time.Duration
	testWriterWait func(waiting bool)

	closeOnce sync.Once
}

// NewDB returns a DB for dsn (a file path, or ":memory:" for tests). Call
// Open before use. A nil logger discards logs.
func NewDB(dsn string, logger *slog.Logger) *DB {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &DB{DSN: dsn, Now: time.Now, logger: logger, batchStop: make(chan struct{}),
		restartPages: restartPages, writerWait: defaultWriterWait}
}

// Open creates the database file (mode 0600) if it is missing, opens the
// connection pools, sets the pragmas and applies pending migrations.
func (db *DB) Open(ctx context.Context) (err error) {
	if db.DSN == "" {
		return fmt.Errorf("open database: dsn required")
	} else if db.writer != nil {
		return fmt.Errorf("open database: already open")
	}
	defer func() {
		if err != nil {
			db.Close()
			db.reader, db.writer = nil, nil
		}
	}()

	if db.DSN == MemoryDSN {
		if db.writer, err = openSingle(MemoryDSN + "?" + writerParams); err != nil {
			return fmt.Errorf("open database: %w", err)
		}
		db.reader = db.writer
	} else {
		if strings.ContainsRune(db.DSN, '?') || strings.HasPrefix(db.DSN, "file:") {
			return fmt.Errorf("open database: dsn must be a plain file path or %q", MemoryDSN)
		}
		if err := db.createFile(); err != nil {
			return err
		}
		if db.writer, err = openSingle(db.DSN + "?" + writerParams); err != nil {
			return fmt.Errorf("open database: %w", err)
		}
		// The writer connects first: it switches the file to WAL before any
		// query_only reader opens it.
		if err := db.writer.PingContext(ctx); err != nil {
			return fmt.Errorf("open database: %w", err)
		}
		var mode string
		if err := db.writer.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
			return fmt.Errorf("read journal mode: %w", err)
		} else if !strings.EqualFold(mode, "wal") {
			return fmt.Errorf("open database: journal mode is %q, want wal", mode)
		}
		if db.reader, err = sql.Open("sqlite", db.DSN+"?"+readerParams); err != nil {
			return fmt.Errorf("open database: %w", err)
		}
		n := max(4, runtime.GOMAXPROCS(0))
		db.reader.SetMaxOpenConns(n)
		db.reader.SetMaxIdleConns(n)
	}

	if err := db.migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if db.DSN != MemoryDSN {
		return db.startCheckpointer(ctx)
	}
	return nil
}

// openSingle opens a pool of exactly one connection, kept open for good.
func openSingle(dsn string) (*sql.DB, error) {
	c, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	c.SetMaxOpenConns(1)
	c.SetMaxIdleConns(1)
	c.SetConnMaxLifetime(0)
	c.SetConnMaxIdleTime(0)
	return c, nil
}

// createFile creates the parent directory (0700) and the database file
// (0600) if missing, and tightens the mode of an existing file that others
// may read.
func (db *DB) createFile() error {
	if err := os.MkdirAll(filepath.Dir(db.DSN), 0o700); err != nil {
		return fmt.Errorf("create database directory: %w", err)
	}
	f, err := os.OpenFile(db.DSN, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		return f.Close()
	} else if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create database file: %w", err)
	}
	fi, err := os.Stat(db.DSN)
	if err != nil {
		return fmt.Errorf("stat database file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("database file %s is not a regular file", db.DSN)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		db.logger.Warn("database file readable by others, restricting to 0600", "path", db.DSN, "mode", fi.Mode().Perm().String())
		if err := os.Chmod(db.DSN, 0o600); err != nil {
			return fmt.Errorf("restrict database file: %w", err)
		}
	}
	return nil
}

// migrate applies the embedded migrations that the migrations table does
// not record yet, in lexical order.
func (db *DB) migrate(ctx context.Context) error {
	if _, err := db.writer.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("create migrations table: %w", err)
	}
	names, err := fs.Glob(migrationFS, "migration/*.sql")
	if err != nil {
		return fmt.Errorf("list migrations: %w", err)
	}
	sort.Strings(names)
	known := make(map[string]bool, len(names))
	for _, name := range names {
		base := filepath.Base(name)
		known[base] = true
		if err := db.migrateFile(ctx, name, base); err != nil {
			return fmt.Errorf("migration %s: %w", base, err)
		}
	}

	// Refuse a database written by a newer build: its schema may not be
	// what this build's queries expect.
	rows, err := db.writer.QueryContext(ctx, `SELECT name FROM migrations ORDER BY name`)
	if err != nil {
		return fmt.Errorf("read migrations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return fmt.Errorf("read migrations: %w", err)
		}
		if !known[name] {
			return fmt.Errorf("database has migration %q unknown to this version of pylon", name)
		}
	}
	return rows.Err()
}

// migrationSteps are the parts of migrations written in Go, run in the
// migration's transaction after its SQL.
var migrationSteps = map[string]func(context.Context, *sql.Tx) error{
	"006_reading_blocks.sql": migrateReadingBlocks,
}

// migrateFile applies one migration in a transaction and records it.
func (db *DB) migrateFile(ctx context.Context, path, name string) error {
	tx, err := db.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()

	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM migrations WHERE name = ?`, name).Scan(&n); err != nil {
		return fmt.Errorf("check migration: %w", err)
	} else if n != 0 {
		return nil
	}
	buf, err := fs.ReadFile(migrationFS, path)
	if err != nil {
		return fmt.Errorf("read migration: %w", err)
	}
	if _, err := tx.ExecContext(ctx, string(buf)); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if step := migrationSteps[name]; step != nil {
		if err := step(ctx, tx); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO migrations (name, applied_at) VALUES (?, ?)`, name, timeArg(db.now())); err != nil {
		return fmt.Errorf("record migration: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	db.logger.Info("applied migration", "name", name)
	return nil
}

// optimizeWait bounds Close's PRAGMA optimize, a few milliseconds.
const optimizeWait = 2 * time.Second

// Close closes the connection pools. Later calls on the services fail
// with an error; closing twice is harmless. A write transaction left open
// (a bug) holds it up for a few seconds at most.
func (db *DB) Close() error {
	var errs []error
	db.closeOnce.Do(db.stopBatcher)
	errs = append(errs, db.stopCheckpointer())
	if db.reader != nil && db.reader != db.writer {
		errs = append(errs, db.reader.Close())
	}
	db.stmts.close()
	if db.writer != nil {
		// Bounded: a write transaction left open would hold the writer.
		ctx, cancel := context.WithTimeout(context.Background(), optimizeWait)
		if _, err := db.writer.ExecContext(ctx, `PRAGMA optimize`); err != nil {
			db.logger.Debug("pragma optimize", "err", err)
		}
		cancel()
		errs = append(errs, db.writer.Close())
	}
	return errors.Join(errs...)
}

// now returns the current time in UTC, without a monotonic reading.
func (db *DB) now() time.Time {
	return db.Now().UTC()
}

// BeginTx starts a transaction. Read-only transactions (opts.ReadOnly) run
// on the reader pool and see one snapshot; all others run on the single
// writer connection with BEGIN IMMEDIATE, one at a time.
func (db *DB) BeginTx(ctx context.Context, opts *sql.TxOptions) (*Tx, error) {
	if db.writer == nil {
		return nil, fmt.Errorf("database not open")
	}
	pool := db.writer
	if opts != nil && opts.ReadOnly {
		pool = db.reader
	}
	tx, err := pool.BeginTx(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("begin transaction: %w", err)
	}
	return db.newTx(tx, opts != nil && opts.ReadOnly), nil
}

// newTx returns tx with the time at which it started.
func (db *DB) newTx(tx *sql.Tx, readOnly bool) *Tx {
	return &Tx{Tx: tx, db: db, now: db.now(), readOnly: readOnly}
}

// writerConn waits for the writer's connection, for the caller alone: at
// most limit (no limit if 0), and no longer than grace after Close begins,
// so that a write transaction left open (a bug) cannot hold Close up for
// good.
func (db *DB) writerConn(limit, grace time.Duration) (*sql.Conn, error) {
	var (
		ctx    context.Context
		cancel context.CancelFunc
	)
	if limit > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), limit)
	} else {
		ctx, cancel = context.WithCancel(context.Background())
	}
	defer cancel()
	go func() {
		select {
		case <-db.batchStop:
		case <-ctx.Done():
			return
		}
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-ctx.Done():
		}
	}()
	return db.writer.Conn(ctx)
}

// Tx is a transaction with the time at which it started, used for every
// timestamp it writes.
type Tx struct {
	*sql.Tx
	db         *DB
	now        time.Time
	readOnly   bool
	unprepared []string   // queries to prepare once tx ends
	auditHead  *auditHead // last audit record appended in tx, if known
}

// queryer is what both *sql.DB and *sql.Tx offer.
type queryer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// queryAll runs query and scans every row with scan. what names the rows
// in errors ("certificates"). The result is never nil.
func queryAll[T any](ctx context.Context, q queryer, what string, scan func(rowScanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", what, err)
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query %s: %w", what, err)
	}
	return out, nil
}

// timeLayout is fixed-width (for years 0 to 9999), so stored times compare
// and sort as strings, and keeps nanoseconds.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

// timeValue is a time as a query argument.
type timeValue time.Time

// Value implements driver.Valuer.
func (v timeValue) Value() (driver.Value, error) {
	t := time.Time(v).UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("time %v out of the storable range", t)
	}
	return t.Format(timeLayout), nil
}

// timeArg returns t as a query argument.
func timeArg(t time.Time) timeValue { return timeValue(t) }

// nullTimeArg returns t as a query argument, NULL for nil.
func nullTimeArg(t *time.Time) any {
	if t == nil {
		return nil
	}
	return timeValue(*t)
}

// parseTime parses a stored time.
func parseTime(v any) (time.Time, error) {
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case []byte:
		s = string(v)
	default:
		return time.Time{}, fmt.Errorf("scan time: unexpected %T", v)
	}
	t, err := time.Parse(timeLayout, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("scan time: %w", err)
	}
	return t, nil
}

// timeScanner scans a NOT NULL time column.
type timeScanner struct{ p *time.Time }

// Scan implements sql.Scanner.
func (s timeScanner) Scan(v any) (err error) {
	*s.p, err = parseTime(v)
	return err
}

// nullTimeScanner scans a nullable time column into a *time.Time.
type nullTimeScanner struct{ p **time.Time }

// Scan implements sql.Scanner.
func (s nullTimeScanner) Scan(v any) error {
	if v == nil {
		*s.p = nil
		return nil
	}
	t, err := parseTime(v)
	if err != nil {
		return err
	}
	*s.p = &t
	return nil
}

// isUniqueViolation reports whether err is a UNIQUE or PRIMARY KEY
// constraint failure.
func isUniqueViolation(err error) bool {
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// encodeLabels returns labels as a JSON object, "{}" for none.
func encodeLabels(labels map[string]string) (string, error) {
	if len(labels) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(labels)
	if err != nil {
		return "", fmt.Errorf("encode labels: %w", err)
	}
	return string(b), nil
}

// decodeLabels parses a stored JSON object, never returning nil.
func decodeLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	if s == "" {
		return labels, nil
	}
	if err := json.Unmarshal([]byte(s), &labels); err != nil {
		return nil, fmt.Errorf("decode labels: %w", err)
	}
	if labels == nil {
		labels = map[string]string{}
	}
	return labels, nil
}

// copyLabels returns a copy of labels, never nil.
func copyLabels(labels map[string]string) map[string]string {
	out := make(map[string]string, len(labels))
	for k, v := range labels {
		out[k] = v
	}
	return out
}

// clampLimit returns limit, or def if it is not positive, at most max.
func clampLimit(limit, def, maxLimit int) int {
	if limit <= 0 {
		return def
	} else if limit > maxLimit {
		return maxLimit
	}
	return limit
}

// errNoSuchDevice is returned for an unknown device ID.
func errNoSuchDevice() error { return pylon.Errorf(pylon.ENOTFOUND, "device not found") }
