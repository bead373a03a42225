package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/pylonhq/pylon"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Limits of the telemetry store.
const (
	defaultReadingLimit    = 1000
	maxReadingLimit        = 10000
	maxBuckets             = 100_000
	maxUnitLen             = 32 // no SenML unit is longer than 16 bytes
	maxQuarantineReason    = 1024
	maxQuarantineCode      = 64
	defaultQuarantineLimit = 100
	maxQuarantineLimit     = 1000

	// insertChunk is the most rows one INSERT statement writes. Smaller
	// remainders use the statements for the powers of two below it.
	insertChunk = 64

	// deleteChunk is how many rows one retention transaction deletes at
	// most, so that the writer is never held for long.
	deleteChunk = 10_000

	// maxArms is the most series one compound query merges.
	maxArms = 200

	// lookupChunk is the most devices or messages one lookup query names.
	lookupChunk = 256

	// maxCached bounds each in-memory cache; a full cache is emptied.
	maxCached = 1 << 20
)

// The span of reading times: nanoseconds since the epoch in an int64,
// without the two extremes, which serve as open bounds in queries.
const (
	minNanos = math.MinInt64 + 1
	maxNanos = math.MaxInt64 - 1
)

// TelemetryService stores device telemetry: readings in series, the runs
// of stored sequence numbers that deduplicate and refuse replays, and
// quarantined messages.
//
// # Writing
//
// WriteMessages writes a whole batch in one transaction with multi-row
// INSERTs on statements prepared once. A reading that is a number and
// nothing else, as most are, goes in through statements that name only its
// four columns (binding the others as NULL cost about a sixth of a pack's
// insert); the readings still go in their order. The commit is durable
// against a crash of the process (kill -9) before WriteMessages returns:
// the database is in WAL mode with synchronous=NORMAL, so a commit is a
// write(2) of the WAL to the operating system, which survives the process.
// It does not survive a power loss or kernel crash between the commit and
// the next checkpoint; that would need synchronous=FULL (an fsync per
// commit).
//
// Deduplication keeps no row per message: the sequences table holds each
// device's runs of consecutive stored sequence numbers, and a device that
// sends in order has one run, whose upper end each commit moves up (one
// small row per device, where a row per message cost a B-tree insert, an
// index entry and, with many devices, a page of the WAL per message). A
// gap starts a new run; a late message fills its gap as a run of its own.
//
// A batch reads its devices and their top runs in its transaction (one
// query); only a message below its device's top run is looked up further.
// The store caches the ID of each series in memory. The cache assumes that
// this TelemetryService is the only writer of telemetry in its database;
// one per DB. It is updated only after a commit. If a device was deleted
// behind the cache's back, the batch fails on a constraint, and is then
// rolled back and run again once without the cache.
type TelemetryService struct {
	db *DB

	// sem serializes WriteMessages (writes are serialized by the single
	// writer connection anyway) and guards everything below.
	sem chan struct{}

	series map[seriesKey]int64 // (device ID, name) → series ID

	upsertRuns     [7]*sql.Stmt // [k] inserts or extends 1<<k runs
	insertReadings [7]*sql.Stmt // [k] inserts 1<<k readings
	insertNumbers  [7]*sql.Stmt // [k] inserts 1<<k readings with only a number

	args, numArgs []any // reused argument buffers

	readMu    sync.Mutex
	readStmts map[string]*sql.Stmt // prepared on the reader pool, by query
}

var _ pylon.TelemetryService = (*TelemetryService)(nil)

// seriesKey identifies a series by device and name.
type seriesKey struct{ device, name string }

// NewTelemetryService returns a TelemetryService on db.
func NewTelemetryService(db *DB) *TelemetryService {
	return &TelemetryService{
		db:     db,
		sem:    make(chan struct{}, 1),
		series: make(map[seriesKey]int64),

		readStmts: make(map[string]*sql.Stmt),
	}
}

// maxReadStmts bounds the read statement cache. The read queries are
// fixed strings (page queries come in a few sizes), far fewer than this.
const maxReadStmts = 64

// query runs a read query on the reader pool with a statement prepared
// once. It must not be called with a write transaction open: for
// ":memory:" the reader is the writer's connection.
func (s *TelemetryService) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s.db.reader == nil {
		return nil, fmt.Errorf("database not open")
	}
	s.readMu.Lock()
	st := s.readStmts[query]
	n := len(s.readStmts)
	s.readMu.Unlock()
	if st == nil {
		if n >= maxReadStmts {
			return s.db.reader.QueryContext(ctx, query, args...)
		}
		var err error
		if st, err = s.db.reader.PrepareContext(ctx, query); err != nil {
			return nil, err
		}
		s.readMu.Lock()
		if old := s.readStmts[query]; old != nil {
			st.Close()
			st = old
		} else {
			s.readStmts[query] = st
		}
		s.readMu.Unlock()
	}
	return st.QueryContext(ctx, args...)
}

// lock takes the write lock, or returns ctx's error.
func (s *TelemetryService) lock(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *TelemetryService) unlock() { <-s.sem }

// valuesSQL returns "(?,?,...),(?,?,...)...": rows groups of cols
// placeholders.
func valuesSQL(rows, cols int) string {
	one := "(" + strings.TrimSuffix(strings.Repeat("?,", cols), ",") + ")"
	return strings.TrimSuffix(strings.Repeat(one+",", rows), ",")
}

const (
	runCols     = 4
	readingCols = 8
	numberCols  = 4
)

// prepare prepares the insert statements on the writer pool once. It must
// not run inside a write transaction: preparing needs the writer's only
// connection.
func (s *TelemetryService) prepare(ctx context.Context) error {
	if s.insertReadings[0] != nil {
		return nil
	}
	if s.db.writer == nil {
		return fmt.Errorf("database not open")
	}
	var stmts [3][7]*sql.Stmt
	for k := range 7 {
		for i, q := range []string{
			`INSERT INTO sequences (device_id, lo, hi, received) VALUES ` + valuesSQL(1<<k, runCols) +
				// Only the top run's extension meets a row; max: a run
				// never shrinks nor looks older, whatever a caller does.
				` ON CONFLICT (device_id, lo) DO UPDATE SET hi = max(hi, excluded.hi), received = max(received, excluded.received)`,
			`INSERT INTO readings (series, time, unit, v, vs, vb, vd, s) VALUES ` + valuesSQL(1<<k, readingCols),
			// Most readings are a number alone: binding the four other
			// values as NULL cost a sixth of a pack's insert.
			`INSERT INTO readings (series, time, unit, v) VALUES ` + valuesSQL(1<<k, numberCols),
		} {
			st, err := s.db.writer.PrepareContext(ctx, q)
			if err != nil {
				for _, row := range stmts {
					for _, st := range row {
						if st != nil {
							st.Close()
						}
					}
				}
				return fmt.Errorf("prepare telemetry insert: %w", err)
			}
			stmts[i][k] = st
		}
	}
	s.upsertRuns, s.insertReadings, s.insertNumbers = stmts[0], stmts[1], stmts[2]
	return nil
}

// nanos returns t in nanoseconds since the epoch, clamped to
// [minNanos-1, maxNanos+1].
func nanos(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, minNanos)):
		return minNanos - 1
	case t.After(time.Unix(0, maxNanos)):
		return maxNanos + 1
	}
	return t.UnixNano()
}

// validateMessage checks m against the limits of package pylon. The ingest
// path validates messages before; this is the store's own bound on input.
func validateMessage(i int, m *pylon.TelemetryMessage) error {
	if m == nil {
		return pylon.Errorf(pylon.EINVALID, "message %d: missing", i)
	} else if m.DeviceID == "" {
		return pylon.Errorf(pylon.EINVALID, "message %d: device_id: required", i)
	} else if len(m.Readings) > pylon.MaxReadingsPerMessage {
		return pylon.Errorf(pylon.ETOOLARGE, "message %d: more than %d readings", i, pylon.MaxReadingsPerMessage)
	}
	for j := range m.Readings {
		r := &m.Readings[j]
		var problem string
		switch {
		case r.DeviceID != "" && r.DeviceID != m.DeviceID:
			problem = "device_id: not the message's device"
		case r.Name == "" || len(r.Name) > pylon.MaxSenMLNameLen || !utf8.ValidString(r.Name):
			problem = fmt.Sprintf("name: must be 1 to %d bytes of UTF-8", pylon.MaxSenMLNameLen)
		case len(r.Unit) > maxUnitLen:
			problem = fmt.Sprintf("unit: longer than %d bytes", maxUnitLen)
		case r.StringValue != nil && (len(*r.StringValue) > pylon.MaxStringValueLen || !utf8.ValidString(*r.StringValue)):
			problem = fmt.Sprintf("vs: must be at most %d bytes of UTF-8", pylon.MaxStringValueLen)
		case len(r.DataValue) > pylon.MaxDataValueLen:
			problem = fmt.Sprintf("vd: longer than %d bytes", pylon.MaxDataValueLen)
		case r.Value != nil && math.IsNaN(*r.Value), r.Sum != nil && math.IsNaN(*r.Sum):
			problem = "v, s: NaN"
		case r.Value == nil && r.StringValue == nil && r.BoolValue == nil && r.DataValue == nil && r.Sum == nil:
			problem = "no value"
		}
		if problem == "" {
			if n := nanos(r.Time); n < minNanos || n > maxNanos {
				problem = "time: out of range"
			}
		}
		if problem != "" {
			return pylon.Errorf(pylon.EINVALID, "message %d: reading %d: %s", i, j, problem)
		}
	}
	return nil
}

// errStale reports a constraint failure that a fresh attempt without the
// series cache resolves.
var errStale = errors.New("telemetry cache out of date")

// isStaleError reports whether err is a constraint failure: a device (and
// with it its series) deleted behind the series cache's back.
func isStaleError(err error) bool {
	var e *sqlite.Error
	if errors.As(err, &e) {
		switch e.Code() {
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			return true
		}
	}
	return false
}

// WriteMessages stores msgs in one transaction and durably commits it
// before returning (see TelemetryService). For each message, in order:
// a (device, seq) stored before, or earlier in msgs, is WriteDuplicate;
// a seq more than pylon.ReplayWindow below the device's highest stored seq
// is WriteReplay; otherwise the message and its readings are stored,
// WriteStored. A message of a device that does not exist (deleted while
// its message was in flight) or with a seq above 2^63-1 is refused as
// WriteReplay. Returns EINVALID or ETOOLARGE, writing nothing, if a
// message breaks the limits of package pylon.
func (s *TelemetryService) WriteMessages(ctx context.Context, msgs []*pylon.TelemetryMessage) ([]pylon.WriteStatus, error) {
	for i, m := range msgs {
		if err := validateMessage(i, m); err != nil {
			return nil, err
		}
	}
	if len(msgs) == 0 {
		return []pylon.WriteStatus{}, nil
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.unlock()
	if err := s.prepare(ctx); err != nil {
		return nil, err
	}
	statuses, err := s.write(ctx, msgs, false)
	if errors.Is(err, errStale) {
		s.db.logger.Debug("telemetry cache out of date, writing again without it", "err", err)
		statuses, err = s.write(ctx, msgs, true)
	}
	return statuses, err
}

// seqRun is a run of a device's sequence numbers, lo to hi, all stored:
// a row of the sequences table. A device sending in order has one, whose
// hi each commit moves up.
type seqRun struct{ lo, hi int64 }

// noRun is the top run of a device that has stored nothing yet.
var noRun = seqRun{-1, -1}

// msgKey is a device's sequence number.
type msgKey struct {
	device string
	seq    int64
}

// added is a message a batch stores: its seq and time of receipt.
type added struct{ seq, received int64 }

// batch is the state of one WriteMessages transaction.
type batch struct {
	tx  *Tx
	top map[string]seqRun // device → its top run before the batch; absent: no such device
	hwm map[string]int64  // device → highest seq, after the messages decided so far

	added     map[string][]added  // device → the messages this batch stores
	newSeries map[seriesKey]int64 // series created or looked up, cached after commit
}

// write runs one attempt of WriteMessages. With fresh, it ignores the
// series cache. It returns an error wrapping errStale if a constraint
// failed.
func (s *TelemetryService) write(ctx context.Context, msgs []*pylon.TelemetryMessage, fresh bool) ([]pylon.WriteStatus, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	b := &batch{tx: tx, top: make(map[string]seqRun), hwm: make(map[string]int64),
		added: make(map[string][]added), newSeries: make(map[seriesKey]int64)}

	// The devices of the batch: whether they exist, and their top runs,
	// read in the transaction (not cached: what the database holds is
	// what decides).
	var devices []string
	for _, m := range msgs {
		if len(m.DeviceID) <= 2*pylon.IDLen && !slices.Contains(devices, m.DeviceID) {
			devices = append(devices, m.DeviceID)
		}
	}
	if err := b.lookupDevices(ctx, devices); err != nil {
		return nil, err
	}
	for d, t := range b.top {
		b.hwm[d] = t.hi
	}

	// A message in its device's top run is stored; one below it may be,
	// in an earlier run: look those up.
	var maybe []msgKey
	for _, m := range msgs {
		if t, ok := b.top[m.DeviceID]; ok && m.Seq <= math.MaxInt64 && int64(m.Seq) < t.lo {
			maybe = append(maybe, msgKey{m.DeviceID, int64(m.Seq)})
		}
	}
	stored, err := b.lookupStored(ctx, maybe)
	if err != nil {
		return nil, err
	}

	// Decide, in order, as if the messages came one by one.
	statuses := make([]pylon.WriteStatus, len(msgs))
	var (
		keep    []*pylon.TelemetryMessage
		unknown []string
	)
	now := tx.now.UnixNano()
	for i, m := range msgs {
		t, exists := b.top[m.DeviceID]
		h := b.hwm[m.DeviceID]
		k := msgKey{m.DeviceID, int64(m.Seq)}
		switch {
		case !exists:
			statuses[i] = pylon.WriteReplay
			if !slices.Contains(unknown, m.DeviceID) {
				unknown = append(unknown, m.DeviceID)
				s.db.logger.Warn("telemetry of an unknown device refused", "device", truncate(m.DeviceID, 2*pylon.IDLen), "seq", m.Seq)
			}
		case m.Seq > math.MaxInt64:
			statuses[i] = pylon.WriteReplay
		case stored[k], k.seq >= t.lo && k.seq <= t.hi:
			statuses[i] = pylon.WriteDuplicate
		case h >= 0 && k.seq < h-pylon.ReplayWindow:
			statuses[i] = pylon.WriteReplay
		default:
			statuses[i] = pylon.WriteStored
			stored[k] = true
			keep = append(keep, m)
			received := now
			if !m.Received.IsZero() {
				received = nanos(m.Received)
			}
			b.added[m.DeviceID] = append(b.added[m.DeviceID], added{k.seq, received})
			b.hwm[m.DeviceID] = max(h, k.seq)
		}
	}
	if err := s.insert(ctx, b, keep, fresh); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit telemetry: %w", err)
	}

	// Committed: the caches may learn what this batch saw and wrote.
	if len(s.series)+len(b.newSeries) > maxCached {
		clear(s.series)
	}
	for k, id := range b.newSeries {
		s.series[k] = id
	}
	return statuses, nil
}

// lookupDevices reads whether each device exists and its top run into
// b.top.
func (b *batch) lookupDevices(ctx context.Context, ids []string) error {
	for chunk := range slices.Chunk(ids, lookupChunk) {
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		rows, err := b.tx.Tx.QueryContext(ctx, `
			SELECT d.id, t.lo, t.hi FROM devices d
			LEFT JOIN sequences t ON t.device_id = d.id
				AND t.lo = (SELECT max(x.lo) FROM sequences x WHERE x.device_id = d.id)
			WHERE d.id IN (`+strings.TrimSuffix(strings.Repeat("?,", len(chunk)), ",")+`)`, args...)
		if err != nil {
			return fmt.Errorf("look up devices: %w", err)
		}
		for rows.Next() {
			var (
				id     string
				lo, hi sql.NullInt64
			)
			if err := rows.Scan(&id, &lo, &hi); err != nil {
				rows.Close()
				return fmt.Errorf("look up devices: %w", err)
			}
			b.top[id] = noRun
			if lo.Valid && hi.Valid {
				b.top[id] = seqRun{lo.Int64, hi.Int64}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("look up devices: %w", err)
		}
	}
	return nil
}

// lookupStored returns which of keys are in a stored run: the run with
// the highest lo at or below the seq reaches it.
func (b *batch) lookupStored(ctx context.Context, keys []msgKey) (map[msgKey]bool, error) {
	stored := make(map[msgKey]bool, len(keys))
	for chunk := range slices.Chunk(keys, lookupChunk) {
		args := make([]any, 0, 2*len(chunk))
		for _, k := range chunk {
			args = append(args, k.device, k.seq)
		}
		rows, err := b.tx.Tx.QueryContext(ctx, `
			SELECT k.column1, k.column2 FROM (VALUES `+valuesSQL(len(chunk), 2)+`) k
			WHERE (SELECT r.hi FROM sequences r WHERE r.device_id = k.column1 AND r.lo <= k.column2
				ORDER BY r.lo DESC LIMIT 1) >= k.column2`, args...)
		if err != nil {
			return nil, fmt.Errorf("look up sequence numbers: %w", err)
		}
		for rows.Next() {
			var k msgKey
			if err := rows.Scan(&k.device, &k.seq); err != nil {
				rows.Close()
				return nil, fmt.Errorf("look up sequence numbers: %w", err)
			}
			stored[k] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("look up sequence numbers: %w", err)
		}
	}
	return stored, nil
}

// runRow is a row of the sequences table to write: a run and when its
// last message was received.
type runRow struct {
	seqRun
	received int64
}

// runs returns the runs to write for the messages a batch stores for a
// device whose top run was top: each run of consecutive new seqs, the one
// that continues top merged into it (same lo: the upsert moves its hi up).
func runs(top seqRun, add []added) []runRow {
	var out []runRow
	slices.SortFunc(add, func(x, y added) int { return cmp.Compare(x.seq, y.seq) })
	for i := 0; i < len(add); {
		j, last := i, add[i].received
		for j+1 < len(add) && add[j+1].seq == add[j].seq+1 {
			j++
			last = max(last, add[j].received)
		}
		r := seqRun{add[i].seq, add[j].seq}
		if top.hi >= 0 && r.lo == top.hi+1 {
			r.lo = top.lo
		}
		out = append(out, runRow{r, last})
		i = j + 1
	}
	return out
}

// insert writes the runs of sequence numbers and the readings of msgs.
func (s *TelemetryService) insert(ctx context.Context, b *batch, msgs []*pylon.TelemetryMessage, fresh bool) error {
	if len(msgs) == 0 {
		return nil
	}
	ins := newInserter(ctx, b.tx, &s.upsertRuns, runCols, s.args[:0])
	for d, add := range b.added {
		for _, r := range runs(b.top[d], add) {
			if err := ins.add(d, r.lo, r.hi, r.received); err != nil {
				return fmt.Errorf("write sequence numbers: %w", err)
			}
		}
	}
	if err := ins.flush(); err != nil {
		return fmt.Errorf("write sequence numbers: %w", err)
	}

	// Readings go in their order (their IDs keep it): a reading of the
	// other kind first writes the rows collected of this one.
	ins = newInserter(ctx, b.tx, &s.insertReadings, readingCols, ins.args[:0])
	nums := newInserter(ctx, b.tx, &s.insertNumbers, numberCols, s.numArgs[:0])
	defer func() { s.args, s.numArgs = ins.args[:0], nums.args[:0] }()
	for _, m := range msgs {
		for j := range m.Readings {
			r := &m.Readings[j]
			id, err := s.seriesID(ctx, b, m.DeviceID, r.Name, fresh)
			if err != nil {
				return err
			}
			if r.Value != nil && r.StringValue == nil && r.BoolValue == nil && r.DataValue == nil && r.Sum == nil {
				if err := ins.flush(); err != nil {
					return staleOr(err, "insert readings")
				}
				if err := nums.add(id, r.Time.UnixNano(), r.Unit, *r.Value); err != nil {
					return staleOr(err, "insert readings")
				}
				continue
			}
			if err := nums.flush(); err != nil {
				return staleOr(err, "insert readings")
			}
			var v, vs, vb, vd, sum any
			if r.Value != nil {
				v = *r.Value
			}
			if r.StringValue != nil {
				vs = *r.StringValue
			}
			if r.BoolValue != nil {
				vb = *r.BoolValue
			}
			if r.DataValue != nil {
				vd = r.DataValue
			}
			if r.Sum != nil {
				sum = *r.Sum
			}
			if err := ins.add(id, r.Time.UnixNano(), r.Unit, v, vs, vb, vd, sum); err != nil {
				return staleOr(err, "insert readings")
			}
		}
	}
	for _, in := range []*inserter{ins, nums} {
		if err := in.flush(); err != nil {
			return staleOr(err, "insert readings")
		}
	}
	return nil
}

// staleOr wraps err as errStale if it is a constraint failure, and
// otherwise as the failure of what.
func staleOr(err error, what string) error {
	if isStaleError(err) {
		return fmt.Errorf("%s: %w: %w", what, errStale, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// seriesID returns the ID of the device's series name, creating it if
// needed.
func (s *TelemetryService) seriesID(ctx context.Context, b *batch, device, name string, fresh bool) (int64, error) {
	k := seriesKey{device, name}
	if id, ok := b.newSeries[k]; ok {
		return id, nil
	}
	if id, ok := s.series[k]; ok && !fresh {
		return id, nil
	}
	var id int64
	err := b.tx.Tx.QueryRowContext(ctx, `SELECT id FROM series WHERE device_id = ? AND name = ?`, device, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		err = b.tx.Tx.QueryRowContext(ctx, `INSERT INTO series (device_id, name) VALUES (?, ?) RETURNING id`, device, name).Scan(&id)
	}
	if err != nil {
		return 0, staleOr(err, "find series")
	}
	b.newSeries[k] = id
	return id, nil
}

// inserter collects rows and writes them with multi-row INSERTs of
// insertChunk rows, and the remainder with the statements for its binary
// digits.
type inserter struct {
	ctx   context.Context
	tx    *Tx
	stmts *[7]*sql.Stmt
	cols  int
	args  []any
	bound [7]*sql.Stmt // stmts bound to tx, made on first use
}

func newInserter(ctx context.Context, tx *Tx, stmts *[7]*sql.Stmt, cols int, args []any) *inserter {
	return &inserter{ctx: ctx, tx: tx, stmts: stmts, cols: cols, args: args}
}

// add appends one row, writing a full chunk.
func (in *inserter) add(row ...any) error {
	in.args = append(in.args, row...)
	if len(in.args) == insertChunk*in.cols {
		return in.flush()
	}
	return nil
}

// flush writes the rows collected so far, in order.
func (in *inserter) flush() error {
	for off := 0; off < len(in.args); {
		rows := (len(in.args) - off) / in.cols
		k := len(in.stmts) - 1
		for 1<<k > rows {
			k--
		}
		if in.bound[k] == nil {
			in.bound[k] = in.tx.Tx.StmtContext(in.ctx, in.stmts[k])
		}
		n := (1 << k) * in.cols
		if _, err := in.bound[k].ExecContext(in.ctx, in.args[off:off+n]...); err != nil {
			return err
		}
		off += n
	}
	clear(in.args) // let the values go
	in.args = in.args[:0]
	return nil
}

// readingCursor is a position in a time-ordered list of readings.
type readingCursor struct {
	desc bool
	time int64
	id   int64
}

// encode returns the cursor as an opaque string.
func (c readingCursor) encode() string {
	var b [18]byte
	b[0] = 'r'
	if c.desc {
		b[1] = 1
	}
	binary.BigEndian.PutUint64(b[2:], uint64(c.time))
	binary.BigEndian.PutUint64(b[10:], uint64(c.id))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// decodeReadingCursor parses a cursor made by encode for a query in the
// direction desc. Returns EINVALID.
func decodeReadingCursor(s string, desc bool) (readingCursor, error) {
	bad := pylon.Errorf(pylon.EINVALID, "cursor: invalid")
	if len(s) > maxCursorLen {
		return readingCursor{}, bad
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != 18 || b[0] != 'r' || b[1] > 1 || (b[1] == 1) != desc {
		return readingCursor{}, bad
	}
	return readingCursor{desc: desc, time: int64(binary.BigEndian.Uint64(b[2:])), id: int64(binary.BigEndian.Uint64(b[10:]))}, nil
}

// readingColumns are the columns scanned by scanReading, of readings r.
const readingColumns = `r.id, r.series, r.time, r.unit, r.v, r.vs, r.vb, r.vd, r.vd IS NOT NULL, r.s`

// scanReading scans readingColumns into a Reading, with the reading's ID
// and series.
func scanReading(row rowScanner) (*pylon.Reading, int64, int64, error) {
	var (
		r          pylon.Reading
		id, series int64
		t          int64
		v, sum     sql.NullFloat64
		vs         sql.NullString
		vb         sql.NullBool
		vd         []byte
		hasVD      bool
	)
	if err := row.Scan(&id, &series, &t, &r.Unit, &v, &vs, &vb, &vd, &hasVD, &sum); err != nil {
		return nil, 0, 0, err
	}
	r.Time = time.Unix(0, t).UTC()
	if v.Valid {
		r.Value = &v.Float64
	}
	if vs.Valid {
		r.StringValue = &vs.String
	}
	if vb.Valid {
		r.BoolValue = &vb.Bool
	}
	if hasVD {
		r.DataValue = vd
		if vd == nil {
			r.DataValue = []byte{}
		}
	}
	if sum.Valid {
		r.Sum = &sum.Float64
	}
	return &r, id, series, nil
}

// FindReadings returns a page of the device's readings in time order
// (newest first with Desc), at most f.Limit (default 1000, at most 10000),
// and the cursor of the next page ("" on the last). From is inclusive, To
// exclusive. An unknown device has no readings. Returns EINVALID for a
// missing device ID or a bad cursor.
func (s *TelemetryService) FindReadings(ctx context.Context, f pylon.ReadingFilter) ([]*pylon.Reading, string, error) {
	if f.DeviceID == "" {
		return nil, "", pylon.Errorf(pylon.EINVALID, "device_id: required")
	}
	limit := clampLimit(f.Limit, defaultReadingLimit, maxReadingLimit)
	from, to := int64(minNanos-1), int64(maxNanos+1)
	if f.From != nil {
		from = nanos(*f.From)
	}
	if f.To != nil {
		to = nanos(*f.To)
	}
	// The open end of the range is a (time, id) bound: the cursor, or the
	// end of the filter's range if the cursor lies outside it.
	bound := readingCursor{desc: f.Desc, time: from, id: math.MinInt64}
	if f.Desc {
		bound.time = to
	}
	if f.Cursor != "" {
		c, err := decodeReadingCursor(f.Cursor, f.Desc)
		if err != nil {
			return nil, "", err
		}
		if !f.Desc && (c.time > bound.time || c.time == bound.time && c.id > bound.id) ||
			f.Desc && (c.time < bound.time || c.time == bound.time && c.id < bound.id) {
			bound = c
		}
	}
	if len(f.DeviceID) > 2*pylon.IDLen || len(f.Name) > pylon.MaxSenMLNameLen || from >= to {
		return []*pylon.Reading{}, "", nil
	}

	// No read transaction around the two queries: a series created in
	// between is like a reading stored behind the cursor, which paging
	// never promises to see.
	names, ids, err := s.findSeries(ctx, f.DeviceID, f.Name)
	if err != nil {
		return nil, "", err
	}
	var readings []*pylon.Reading
	type key struct{ time, id int64 }
	var keys []key
	for chunk := range slices.Chunk(ids, maxArms) {
		q, args := pageQuery(chunk, bound, from, to, limit+1)
		rows, err := s.query(ctx, q, args...)
		if err != nil {
			return nil, "", fmt.Errorf("query readings: %w", err)
		}
		for rows.Next() {
			r, id, series, err := scanReading(rows)
			if err != nil {
				rows.Close()
				return nil, "", fmt.Errorf("scan reading: %w", err)
			}
			r.DeviceID, r.Name = f.DeviceID, names[series]
			readings, keys = append(readings, r), append(keys, key{r.Time.UnixNano(), id})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, "", fmt.Errorf("query readings: %w", err)
		}
	}
	if len(ids) > maxArms {
		// Several chunks: merge their pages.
		idx := make([]int, len(readings))
		for i := range idx {
			idx[i] = i
		}
		slices.SortFunc(idx, func(a, b int) int {
			c := cmpInt(keys[a].time, keys[b].time)
			if c == 0 {
				c = cmpInt(keys[a].id, keys[b].id)
			}
			if f.Desc {
				c = -c
			}
			return c
		})
		idx = idx[:min(len(idx), limit+1)]
		sorted, sortedKeys := make([]*pylon.Reading, len(idx)), make([]key, len(idx))
		for i, j := range idx {
			sorted[i], sortedKeys[i] = readings[j], keys[j]
		}
		readings, keys = sorted, sortedKeys
	}
	next := ""
	if len(readings) > limit {
		readings = readings[:limit]
		last := keys[limit-1]
		next = readingCursor{desc: f.Desc, time: last.time, id: last.id}.encode()
	}
	if readings == nil {
		readings = []*pylon.Reading{}
	}
	return readings, next, nil
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// findSeries returns the device's series (only the one named name, unless
// name is ""): their names by ID, and their IDs in order.
func (s *TelemetryService) findSeries(ctx context.Context, deviceID, name string) (map[int64]string, []int64, error) {
	query, args := `SELECT id, name FROM series WHERE device_id = ? ORDER BY id`, []any{deviceID}
	if name != "" {
		query, args = `SELECT id, name FROM series WHERE device_id = ? AND name = ?`, []any{deviceID, name}
	}
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("query series: %w", err)
	}
	defer rows.Close()
	names := make(map[int64]string)
	var ids []int64
	for rows.Next() {
		var (
			id int64
			n  string
		)
		if err := rows.Scan(&id, &n); err != nil {
			return nil, nil, fmt.Errorf("scan series: %w", err)
		}
		names[id], ids = n, append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("query series: %w", err)
	}
	return names, ids, nil
}

// pageQuery returns a query for up to limit readings of the series ids
// beyond bound and within [from, to), in bound's direction. Each series is
// one arm of a UNION ALL that walks the (series, time) index in order;
// SQLite merges the arms and stops at the limit, so a page costs about
// limit rows read, however many readings the device has. The number of
// arms is rounded up to a power of two (or maxArms), with arms for the
// nonexistent series 0, so that few distinct statements exist to cache.
func pageQuery(ids []int64, bound readingCursor, from, to int64, limit int) (string, []any) {
	arms := 1
	for arms < len(ids) {
		arms *= 2
	}
	arms = min(arms, max(maxArms, len(ids)))
	// ?1, ?2: the (time, id) bound; ?3: the other end of the range;
	// ?4: limit; ?5...: series IDs.
	cond, order := `(r.time, r.id) > (?1, ?2) AND r.time < ?3`, `3, 1`
	other := to
	if bound.desc {
		cond, order, other = `(r.time, r.id) < (?1, ?2) AND r.time >= ?3`, `3 DESC, 1 DESC`, from
	}
	var q strings.Builder
	args := make([]any, 0, 4+len(ids))
	args = append(args, bound.time, bound.id, other, limit)
	for i := range arms {
		if i > 0 {
			q.WriteString(" UNION ALL ")
		}
		fmt.Fprintf(&q, `SELECT %s FROM readings r WHERE r.series = ?%d AND %s`, readingColumns, i+5, cond)
		if i < len(ids) {
			args = append(args, ids[i])
		} else {
			args = append(args, 0)
		}
	}
	fmt.Fprintf(&q, ` ORDER BY %s LIMIT ?4`, order)
	return q.String(), args
}

// LatestReadings returns the newest reading of each name of the device,
// in name order; none for an unknown device.
func (s *TelemetryService) LatestReadings(ctx context.Context, deviceID string) ([]*pylon.Reading, error) {
	readings := []*pylon.Reading{}
	if len(deviceID) > 2*pylon.IDLen {
		return readings, nil
	}
	rows, err := s.query(ctx, `
		SELECT s.name, `+readingColumns+`
		FROM series s JOIN readings r ON r.id = (
			SELECT l.id FROM readings l WHERE l.series = s.id ORDER BY l.time DESC, l.id DESC LIMIT 1)
		WHERE s.device_id = ?
		ORDER BY s.name`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("query latest readings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		r, _, _, err := scanReading(prefixScanner{rows, &name})
		if err != nil {
			return nil, fmt.Errorf("scan reading: %w", err)
		}
		r.DeviceID, r.Name = deviceID, name
		readings = append(readings, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query latest readings: %w", err)
	}
	return readings, nil
}

// prefixScanner scans one extra leading column into first.
type prefixScanner struct {
	rows  *sql.Rows
	first any
}

func (p prefixScanner) Scan(dest ...any) error {
	return p.rows.Scan(append([]any{p.first}, dest...)...)
}

// aggExprs maps an aggregation to its SQL over v.
var aggExprs = map[string]string{
	pylon.AggAvg:   "avg(r.v)",
	pylon.AggMin:   "min(r.v)",
	pylon.AggMax:   "max(r.v)",
	pylon.AggCount: "count(r.v)",
}

// floorDiv returns a/b rounded down, for b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b < 0 {
		q--
	}
	return q
}

// AggregateReadings returns the numeric readings of one series of the
// device in [From, To) aggregated in buckets aligned to multiples of
// Bucket since the Unix epoch, in time order; empty buckets are left out.
// Count is the number of values in the bucket. Returns EINVALID for a
// missing device or name, an unknown aggregation, a bucket under one
// second, To not after From, or more than 100000 buckets.
func (s *TelemetryService) AggregateReadings(ctx context.Context, f pylon.AggregateFilter) ([]*pylon.Bucket, error) {
	agg, ok := aggExprs[f.Agg]
	switch {
	case f.DeviceID == "":
		return nil, pylon.Errorf(pylon.EINVALID, "device_id: required")
	case f.Name == "":
		return nil, pylon.Errorf(pylon.EINVALID, "name: required")
	case !ok:
		return nil, pylon.Errorf(pylon.EINVALID, "agg: must be avg, min, max or count")
	case f.Bucket < time.Second:
		return nil, pylon.Errorf(pylon.EINVALID, "bucket: must be at least 1s")
	case !f.To.After(f.From):
		return nil, pylon.Errorf(pylon.EINVALID, "to: must be after from")
	}
	from, to, size := nanos(f.From), nanos(f.To), int64(f.Bucket)
	if n := floorDiv(to-1, size) - floorDiv(from, size) + 1; n > maxBuckets {
		return nil, pylon.Errorf(pylon.EINVALID, "bucket: more than %d buckets from from to to", maxBuckets)
	}
	buckets := []*pylon.Bucket{}
	if len(f.DeviceID) > 2*pylon.IDLen || len(f.Name) > pylon.MaxSenMLNameLen {
		return buckets, nil
	}
	// start is floor(time / size) * size, also for times before 1970.
	rows, err := s.query(ctx, `
		SELECT r.time - r.time % ?1 - (CASE WHEN r.time % ?1 < 0 THEN ?1 ELSE 0 END) AS start, `+agg+`, count(r.v)
		FROM readings r
		WHERE r.series = (SELECT id FROM series WHERE device_id = ?2 AND name = ?3)
			AND r.time >= ?4 AND r.time < ?5 AND r.v IS NOT NULL
		GROUP BY start ORDER BY start`, size, f.DeviceID, f.Name, from, to)
	if err != nil {
		return nil, fmt.Errorf("aggregate readings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			start int64
			b     pylon.Bucket
		)
		if err := rows.Scan(&start, &b.Value, &b.Count); err != nil {
			return nil, fmt.Errorf("scan bucket: %w", err)
		}
		b.Start = time.Unix(0, start).UTC()
		buckets = append(buckets, &b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("aggregate readings: %w", err)
	}
	return buckets, nil
}

// DeleteReadingsBefore deletes the readings older than t and the runs of
// sequence numbers whose last message was received before t, and returns
// how many readings went. It deletes in transactions of at most 10000
// rows, so that ingest is never held up for long. Each device's top run is
// kept, so that replay protection outlives retention.
func (s *TelemetryService) DeleteReadingsBefore(ctx context.Context, t time.Time) (int64, error) {
	before := nanos(t)
	var total int64
	for series := int64(0); ; {
		n, last, err := s.deleteReadingsChunk(ctx, series, before)
		total += n
		if err != nil {
			return total, err
		}
		if n < deleteChunk {
			break
		}
		series = last
	}
	if _, err := s.db.deleteChunked(ctx, `
		DELETE FROM sequences WHERE (device_id, lo) IN (
			SELECT r.device_id, r.lo FROM sequences r
			WHERE r.received < ?1 AND r.lo < (SELECT max(x.lo) FROM sequences x WHERE x.device_id = r.device_id)
			LIMIT ?2)`, before); err != nil {
		return total, fmt.Errorf("delete sequence numbers: %w", err)
	}
	return total, nil
}

// deleteReadingsChunk deletes up to deleteChunk readings older than
// before, of the series from fromSeries on, in one transaction. It returns
// how many it deleted and the highest series it deleted from.
func (s *TelemetryService) deleteReadingsChunk(ctx context.Context, fromSeries, before int64) (n, last int64, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	rows, err := tx.Tx.QueryContext(ctx, `
		DELETE FROM readings WHERE id IN (
			SELECT r.id FROM series s JOIN readings r ON r.series = s.id
			WHERE s.id >= ?1 AND r.time < ?2
			ORDER BY s.id LIMIT ?3)
		RETURNING series`, fromSeries, before, deleteChunk)
	if err != nil {
		return 0, 0, fmt.Errorf("delete readings: %w", err)
	}
	for rows.Next() {
		var series int64
		if err := rows.Scan(&series); err != nil {
			rows.Close()
			return 0, 0, fmt.Errorf("delete readings: %w", err)
		}
		n, last = n+1, max(last, series)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, fmt.Errorf("delete readings: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, fmt.Errorf("commit delete readings: %w", err)
	}
	return n, last, nil
}

// deleteChunked runs query, a DELETE of at most deleteChunk rows whose
// last argument is that limit (appended here), each time in a transaction
// of its own so that the single writer is never held for long, until a
// run deletes fewer. It returns how many rows went.
func (db *DB) deleteChunked(ctx context.Context, query string, args ...any) (int64, error) {
	args = append(args, deleteChunk)
	var total int64
	for {
		n, err := db.deleteOnce(ctx, query, args...)
		total += n
		if err != nil || n < deleteChunk {
			return total, err
		}
	}
}

// deleteOnce runs one DELETE in its own transaction and returns how many
// rows it deleted.
func (db *DB) deleteOnce(ctx context.Context, query string, args ...any) (int64, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	res, err := tx.Tx.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	return n, nil
}

// RunRetention deletes telemetry older than keep now and then every
// interval, until ctx ends. It logs what it deleted at Info and failures
// at Error. It returns at once if keep or every is not positive.
func (s *TelemetryService) RunRetention(ctx context.Context, keep, every time.Duration) {
	if keep <= 0 || every <= 0 {
		s.db.logger.Warn("telemetry retention disabled", "keep", keep, "every", every)
		return
	}
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		start := time.Now()
		before := s.db.now().Add(-keep)
		n, err := s.DeleteReadingsBefore(ctx, before)
		switch {
		case err != nil && ctx.Err() == nil:
			s.db.logger.Error("telemetry retention", "before", before, "deleted", n, "err", err)
		case n > 0:
			s.db.logger.Info("telemetry retention", "before", before, "deleted", n, "took", time.Since(start))
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// truncateUTF8 returns s cut to at most n bytes, not inside a rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// QuarantineMessage keeps a refused message of an existing device: its
// reason cut to 1 KiB, its code to 64 bytes and its payload to 64 KiB. It sets m.ID, and
// m.Received to now if zero. Only the newest pylon.MaxQuarantine messages
// are kept; older ones are deleted. Returns EINVALID without a device ID,
// ENOTFOUND for an unknown device.
func (s *TelemetryService) QuarantineMessage(ctx context.Context, m *pylon.QuarantinedMessage) error {
	if m == nil || m.DeviceID == "" {
		return pylon.Errorf(pylon.EINVALID, "device_id: required")
	} else if len(m.DeviceID) > 2*pylon.IDLen {
		return errNoSuchDevice()
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	received := m.Received
	if received.IsZero() {
		received = tx.now
	}
	payload := m.Payload
	if len(payload) > pylon.MaxQuarantinePayload {
		payload = payload[:pylon.MaxQuarantinePayload]
	}
	if payload == nil {
		payload = []byte{}
	}
	reason := truncateUTF8(m.Reason, maxQuarantineReason)
	var id int64
	code := truncateUTF8(m.Code, maxQuarantineCode)
	err = tx.Tx.QueryRowContext(ctx, `INSERT INTO quarantine (device_id, received, reason, payload, code, seq) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
		m.DeviceID, nanos(received), reason, payload, code, int64(m.Seq)).Scan(&id) // seq: two's complement, see migration 004
	var e *sqlite.Error
	if errors.As(err, &e) && e.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY {
		return errNoSuchDevice()
	} else if err != nil {
		return fmt.Errorf("insert quarantined message: %w", err)
	}
	// IDs increase by one per message (AUTOINCREMENT, never reused), so
	// this keeps the newest MaxQuarantine, or fewer after devices were
	// deleted, and costs one index range whatever the table's size.
	if _, err := tx.Tx.ExecContext(ctx, `DELETE FROM quarantine WHERE id <= ?`, id-pylon.MaxQuarantine); err != nil {
		return fmt.Errorf("prune quarantine: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit quarantined message: %w", err)
	}
	m.ID, m.Received, m.Reason, m.Code, m.Payload = id, time.Unix(0, nanos(received)).UTC(), reason, code, payload
	return nil
}

// FindQuarantine returns refused messages, newest first, of the device or
// of all devices if deviceID is "", at most limit (default 100, at most
// 1000).
func (s *TelemetryService) FindQuarantine(ctx context.Context, deviceID string, limit int) ([]*pylon.QuarantinedMessage, error) {
	limit = clampLimit(limit, defaultQuarantineLimit, maxQuarantineLimit)
	out := []*pylon.QuarantinedMessage{}
	if len(deviceID) > 2*pylon.IDLen {
		return out, nil
	}
	const columns = `SELECT id, device_id, received, reason, payload, code, seq FROM quarantine`
	query, args := columns+` ORDER BY id DESC LIMIT ?`, []any{limit}
	if deviceID != "" {
		query, args = columns+` WHERE device_id = ? ORDER BY id DESC LIMIT ?`, []any{deviceID, limit}
	}
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query quarantine: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			m        pylon.QuarantinedMessage
			received int64
			seq      int64
		)
		if err := rows.Scan(&m.ID, &m.DeviceID, &received, &m.Reason, &m.Payload, &m.Code, &seq); err != nil {
			return nil, fmt.Errorf("scan quarantined message: %w", err)
		}
		m.Received, m.Seq = time.Unix(0, received).UTC(), uint64(seq)
		if m.Payload == nil {
			m.Payload = []byte{}
		}
		out = append(out, &m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query quarantine: %w", err)
	}
	return out, nil
}
