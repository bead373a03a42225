package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/bits"
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

	// lookupChunk is the most messages one lookup of stored sequence
	// numbers names.
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
// INSERTs on statements prepared once. Readings are stored in blocks
// (block.go): a message's readings of one series are one row and one
// index entry, where a row per reading made the single writer's B-tree
// inserts, and the WAL pages they dirty, the limit of ingest. The commit
// is durable against a crash of the process (kill -9) before
// WriteMessages returns: the database is in WAL mode with
// synchronous=NORMAL, so a commit is a write(2) of the WAL to the
// operating system, which survives the process. It does not survive a
// power loss or kernel crash between the commit and the next checkpoint;
// that would need synchronous=FULL (an fsync per commit).
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
// The store caches the ID and span of each series in memory. The cache assumes that
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
	spans  map[int64]int64     // series ID → its span, as committed

	upsertRuns   [7]*sql.Stmt // [k] inserts or extends 1<<k runs
	insertBlocks [7]*sql.Stmt // [k] inserts 1<<k blocks
	lookupTops   [7]*sql.Stmt // [k] reads 1<<k devices and their top runs

	// reused buffers; for the message at hand, its series in the order of
	// their first reading (ordered), and the readings of ordered[i] in
	// groups[i], found by series in byName
	args    []any
	blocks  []block
	byName  map[int64]int
	ordered []int64
	groups  [][]*pylon.Reading

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
		spans:  make(map[int64]int64),
		byName: make(map[int64]int),

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
	st, err := s.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return s.db.reader.QueryContext(ctx, query, args...)
	}
	return st.QueryContext(ctx, args...)
}

// stmt returns query prepared on the reader pool, preparing it if the
// cache has room; nil if it has none.
func (s *TelemetryService) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if s.db.reader == nil {
		return nil, fmt.Errorf("database not open")
	}
	s.readMu.Lock()
	st := s.readStmts[query]
	n := len(s.readStmts)
	s.readMu.Unlock()
	if st != nil || n >= maxReadStmts {
		return st, nil
	}
	st, err := s.db.reader.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	s.readMu.Lock()
	defer s.readMu.Unlock()
	if old := s.readStmts[query]; old != nil {
		st.Close()
		return old, nil
	}
	s.readStmts[query] = st
	return st, nil
}

// readTx is a read-only transaction on the reader pool, so that the
// queries of one call see one snapshot: a page read with the series'
// spans of another snapshot could come out of order.
type readTx struct {
	s      *TelemetryService
	tx     *sql.Tx
	unprep []string // queries run unprepared, to prepare after
}

// beginRead begins a readTx; end it with done.
func (s *TelemetryService) beginRead(ctx context.Context) (*readTx, error) {
	if s.db.reader == nil {
		return nil, fmt.Errorf("database not open")
	}
	tx, err := s.db.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	return &readTx{s: s, tx: tx}, nil
}

// query runs query in the transaction, on its statement if one is
// prepared. A statement is not prepared on the pool while the transaction
// holds a connection (for ":memory:" the pool's only one; for a file,
// transactions could hold them all): done prepares it afterwards.
func (r *readTx) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	r.s.readMu.Lock()
	st := r.s.readStmts[query]
	r.s.readMu.Unlock()
	if st == nil {
		r.unprep = append(r.unprep, query)
		return r.tx.QueryContext(ctx, query, args...)
	}
	return r.tx.StmtContext(ctx, st).QueryContext(ctx, args...)
}

// done ends the transaction and prepares what it ran unprepared.
func (r *readTx) done(ctx context.Context) {
	r.tx.Rollback()
	for _, q := range r.unprep {
		if _, err := r.s.stmt(ctx, q); err != nil {
			return // prepared next time, or never: only slower
		}
	}
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
	runCols   = 4
	blockCols = 7
)

// prepare prepares the insert statements on the writer pool once. It must
// not run inside a write transaction: preparing needs the writer's only
// connection.
func (s *TelemetryService) prepare(ctx context.Context) error {
	if s.insertBlocks[0] != nil {
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
			insertBlockSQL + valuesSQL(1<<k, blockCols),
			// Prepared once: preparing it for each commit had cost a
			// tenth of the server's CPU at 3,700 packs a second. The IDs
			// come as a VALUES list, scanned in order (CROSS JOIN fixes
			// the join order), not as an IN list, which SQLite first sorts
			// into a temporary index: a third less time for 128 devices.
			`SELECT d.id, t.lo, t.hi FROM (VALUES ` + valuesSQL(1<<k, 1) + `) v
			CROSS JOIN devices d ON d.id = v.column1
			LEFT JOIN sequences t ON t.device_id = d.id
				AND t.lo = (SELECT max(x.lo) FROM sequences x WHERE x.device_id = d.id)`,
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
	s.upsertRuns, s.insertBlocks, s.lookupTops = stmts[0], stmts[1], stmts[2]
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
	newSpans  map[int64]int64     // spans widened, cached after commit
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
		added: make(map[string][]added), newSeries: make(map[seriesKey]int64), newSpans: make(map[int64]int64)}

	// The devices of the batch: whether they exist, and their top runs,
	// read in the transaction (not cached: what the database holds is
	// what decides).
	var devices []string
	for _, m := range msgs {
		if len(m.DeviceID) <= 2*pylon.IDLen && !slices.Contains(devices, m.DeviceID) {
			devices = append(devices, m.DeviceID)
		}
	}
	if err := b.lookupDevices(ctx, &s.lookupTops, devices); err != nil {
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
	if len(s.spans)+len(b.newSpans) > maxCached {
		clear(s.spans)
	}
	for id, span := range b.newSpans {
		s.spans[id] = span
	}
	return statuses, nil
}

// lookupDevices reads whether each device exists and its top run into
// b.top, with the statements stmts (the VALUES list of stmts[k] has 1<<k
// places; those left over are given "", which no device ID is).
func (b *batch) lookupDevices(ctx context.Context, stmts *[7]*sql.Stmt, ids []string) error {
	for chunk := range slices.Chunk(ids, 1<<(len(stmts)-1)) {
		k := bits.Len(uint(len(chunk) - 1)) // 1<<k places, the fewest that hold chunk
		args := make([]any, 1<<k)
		for i := range args {
			args[i] = ""
		}
		for i, id := range chunk {
			args[i] = id
		}
		rows, err := b.tx.Tx.StmtContext(ctx, stmts[k]).QueryContext(ctx, args...)
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

	// Readings go in blocks: per message, one for each series (more if
	// its readings spread over more than maxBlockSpan).
	ins = newInserter(ctx, b.tx, &s.insertBlocks, blockCols, ins.args[:0])
	defer func() { s.args = ins.args[:0] }()
	defer s.forgetReadings()
	for _, m := range msgs {
		clear(s.byName)
		s.ordered = s.ordered[:0]
		for j := range m.Readings {
			r := &m.Readings[j]
			id, err := s.seriesID(ctx, b, m.DeviceID, r.Name, fresh)
			if err != nil {
				return err
			}
			g, ok := s.byName[id]
			if !ok {
				g = len(s.ordered)
				s.byName[id] = g
				s.ordered = append(s.ordered, id)
				if g == len(s.groups) {
					s.groups = append(s.groups, nil)
				}
				s.groups[g] = s.groups[g][:0]
			}
			s.groups[g] = append(s.groups[g], r)
		}
		s.blocks = s.blocks[:0]
		for g, id := range s.ordered {
			s.blocks = appendBlocks(s.blocks, id, s.groups[g])
		}
		for i := range s.blocks {
			bl := &s.blocks[i]
			if err := ins.add(bl.series, bl.t0, bl.t1, bl.tick, len(bl.readings), bl.unit, bl.encode()); err != nil {
				return staleOr(err, "insert readings")
			}
			if err := s.widen(ctx, b, bl.series, bl.t1-bl.t0); err != nil {
				return err
			}
		}
	}
	if err := ins.flush(); err != nil {
		return staleOr(err, "insert readings")
	}
	return nil
}

// forgetReadings empties the buffers insert groups a message's readings
// in, so that they keep no reading alive until the next commit.
func (s *TelemetryService) forgetReadings() {
	clear(s.byName)
	clear(s.blocks)
	for g, rs := range s.groups {
		clear(rs[:cap(rs)])
		s.groups[g] = rs[:0]
	}
}

// widen records that series has a block spanning span nanoseconds, if
// that is wider than any before.
func (s *TelemetryService) widen(ctx context.Context, b *batch, series, span int64) error {
	known, ok := b.newSpans[series]
	if !ok {
		known = s.spans[series]
	}
	if span <= known {
		return nil
	}
	if _, err := b.tx.Tx.ExecContext(ctx, widenSQL, span, series); err != nil {
		return staleOr(err, "widen series")
	}
	b.newSpans[series] = span
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

// readingCursor is a position in a time-ordered list of readings: the
// key of the last reading of a page.
type readingCursor struct {
	desc bool
	readingKey
}

// cursorVersion starts every cursor; cursors of the row-per-reading store
// ('r') are refused as invalid.
const cursorVersion = 'b'

// encode returns the cursor as an opaque string.
func (c readingCursor) encode() string {
	var b [22]byte
	b[0] = cursorVersion
	if c.desc {
		b[1] = 1
	}
	binary.BigEndian.PutUint64(b[2:], uint64(c.time))
	binary.BigEndian.PutUint64(b[10:], uint64(c.block))
	binary.BigEndian.PutUint32(b[18:], uint32(c.idx))
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
	if err != nil || len(b) != 22 || b[0] != cursorVersion || b[1] > 1 || (b[1] == 1) != desc {
		return readingCursor{}, bad
	}
	idx := binary.BigEndian.Uint32(b[18:])
	if idx >= pylon.MaxReadingsPerMessage {
		return readingCursor{}, bad
	}
	return readingCursor{desc: desc, readingKey: readingKey{
		time:  int64(binary.BigEndian.Uint64(b[2:])),
		block: int64(binary.BigEndian.Uint64(b[10:])),
		idx:   int(idx),
	}}, nil
}

// blockColumns are the columns scanned by scanBlock, of blocks b.
const blockColumns = `b.id, b.series, b.t0, b.tick, b.first, b.unit, b.data`

// scanBlock scans blockColumns.
func scanBlock(row rowScanner) (*storedBlock, error) {
	var b storedBlock
	if err := row.Scan(&b.id, &b.series, &b.t0, &b.tick, &b.first, &b.unit, &b.data); err != nil {
		return nil, err
	}
	return &b, nil
}

// satSub returns a-b for b >= 0, no lower than minNanos-1.
func satSub(a, b int64) int64 {
	if a < minNanos-1+b {
		return minNanos - 1
	}
	return a - b
}

// FindReadings returns a page of the device's readings in time order
// (newest first with Desc), at most f.Limit (default 1000, at most 10000),
// and the cursor of the next page ("" on the last). From is inclusive, To
// exclusive. Readings with equal times come in the order they were stored.
// An unknown device has no readings. Returns EINVALID for a missing
// device ID or a bad cursor.
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
	// The open end of the range is a bound on the readings' keys: the
	// cursor, or the end of the filter's range if the cursor lies outside
	// it.
	bound := readingKey{time: from, block: math.MinInt64, idx: math.MinInt}
	if f.Desc {
		bound.time = to
	}
	if f.Cursor != "" {
		c, err := decodeReadingCursor(f.Cursor, f.Desc)
		if err != nil {
			return nil, "", err
		}
		if cmp := c.readingKey.cmp(bound); !f.Desc && cmp > 0 || f.Desc && cmp < 0 {
			bound = c.readingKey
		}
	}
	if len(f.DeviceID) > 2*pylon.IDLen || len(f.Name) > pylon.MaxSenMLNameLen || from >= to {
		return []*pylon.Reading{}, "", nil
	}

	tx, err := s.beginRead(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("query readings: %w", err)
	}
	defer tx.done(ctx)
	names, ids, spans, err := s.findSeries(ctx, tx, f.DeviceID, f.Name)
	if err != nil {
		return nil, "", err
	}
	var page []keyed
	for chunk := range slices.Chunk(ids, maxArms) {
		p := &pager{bound: bound, from: from, to: to, limit: limit + 1, wait: waiting{desc: f.Desc}}
		for _, id := range chunk {
			p.span = max(p.span, spans[id])
		}
		q, args := pageQuery(chunk, p)
		rows, err := tx.query(ctx, q, args...)
		if err != nil {
			return nil, "", fmt.Errorf("query readings: %w", err)
		}
		for !p.full() && rows.Next() {
			b, err := scanBlock(rows)
			if err == nil {
				err = p.add(b)
			}
			if err != nil {
				rows.Close()
				return nil, "", fmt.Errorf("read readings: %w", err)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, "", fmt.Errorf("query readings: %w", err)
		}
		p.finish()
		page = append(page, p.out...)
	}
	if len(ids) > maxArms {
		// Several chunks: merge their pages.
		slices.SortFunc(page, func(a, b keyed) int {
			if f.Desc {
				return b.key.cmp(a.key)
			}
			return a.key.cmp(b.key)
		})
		page = page[:min(len(page), limit+1)]
	}
	next := ""
	if len(page) > limit {
		page = page[:limit]
		next = readingCursor{desc: f.Desc, readingKey: page[limit-1].key}.encode()
	}
	readings := make([]*pylon.Reading, len(page))
	for i, k := range page {
		k.r.DeviceID, k.r.Name = f.DeviceID, names[k.series]
		readings[i] = k.r
	}
	return readings, next, nil
}

// findSeries returns the device's series (only the one named name, unless
// name is ""): their names by ID, their IDs in order, and their spans by
// ID.
func (s *TelemetryService) findSeries(ctx context.Context, tx *readTx, deviceID, name string) (map[int64]string, []int64, map[int64]int64, error) {
	query, args := `SELECT id, name, span FROM series WHERE device_id = ? ORDER BY id`, []any{deviceID}
	if name != "" {
		query, args = `SELECT id, name, span FROM series WHERE device_id = ? AND name = ?`, []any{deviceID, name}
	}
	rows, err := tx.query(ctx, query, args...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("query series: %w", err)
	}
	defer rows.Close()
	names, spans := make(map[int64]string), make(map[int64]int64)
	var ids []int64
	for rows.Next() {
		var (
			id, span int64
			n        string
		)
		if err := rows.Scan(&id, &n, &span); err != nil {
			return nil, nil, nil, fmt.Errorf("scan series: %w", err)
		}
		names[id], spans[id], ids = n, span, append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("query series: %w", err)
	}
	return names, ids, spans, nil
}

// pageQuery returns a query for the blocks of the series ids that can
// hold readings of p's page, in p's direction by t0. Each series is one
// arm of a UNION ALL that walks the (series, t0) index in order; SQLite
// merges the arms as the caller reads, and the caller stops when its page
// is full, so a page costs about the blocks it takes, however many the
// device has. The number of arms is rounded up to a power of two (or
// maxArms), with arms for the nonexistent series 0, so that few distinct
// statements exist to cache.
func pageQuery(ids []int64, p *pager) (string, []any) {
	arms := 1
	for arms < len(ids) {
		arms *= 2
	}
	arms = min(arms, max(maxArms, len(ids)))
	// ?1 <= t0 < ?2; ?3...: series IDs. A block holds readings from its
	// t0 to at most t0 + span.
	lo, hi, order := satSub(p.bound.time, p.span), p.to, `3, 1`
	if p.wait.desc {
		lo, hi, order = satSub(p.from, p.span), min(p.bound.time, maxNanos)+1, `3 DESC, 1 DESC`
	}
	var q strings.Builder
	args := make([]any, 0, 2+len(ids))
	args = append(args, lo, hi)
	for i := range arms {
		if i > 0 {
			q.WriteString(" UNION ALL ")
		}
		fmt.Fprintf(&q, `SELECT %s FROM blocks b WHERE b.series = ?%d AND b.t0 >= ?1 AND b.t0 < ?2`, blockColumns, i+3)
		if i < len(ids) {
			args = append(args, ids[i])
		} else {
			args = append(args, 0)
		}
	}
	fmt.Fprintf(&q, ` ORDER BY %s`, order)
	return q.String(), args
}

// LatestReadings returns the newest reading of each name of the device,
// in name order; none for an unknown device.
func (s *TelemetryService) LatestReadings(ctx context.Context, deviceID string) ([]*pylon.Reading, error) {
	readings := []*pylon.Reading{}
	if len(deviceID) > 2*pylon.IDLen {
		return readings, nil
	}
	// The blocks that can hold a series' newest reading: the last by t0
	// and those that reach as far.
	rows, err := s.query(ctx, `
		SELECT s.name, `+blockColumns+`
		FROM series s JOIN blocks b ON b.series = s.id
			AND b.t0 >= (SELECT max(x.t0) FROM blocks x WHERE x.series = s.id) - s.span
		WHERE s.device_id = ?
		ORDER BY s.name`, deviceID)
	if err != nil {
		return nil, fmt.Errorf("query latest readings: %w", err)
	}
	defer rows.Close()
	var (
		name   string
		newest keyed
	)
	for rows.Next() {
		var n string
		b, err := scanBlock(prefixScanner{rows, &n})
		if err != nil {
			return nil, fmt.Errorf("scan block: %w", err)
		}
		if n != name && newest.r != nil {
			readings = append(readings, newest.r)
			newest = keyed{}
		}
		name = n
		err = b.decode(func(k readingKey, r *pylon.Reading) {
			if newest.r == nil || k.cmp(newest.key) > 0 {
				r.DeviceID, r.Name = deviceID, n
				newest = keyed{key: k, r: r}
			}
		})
		if err != nil {
			return nil, err
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query latest readings: %w", err)
	}
	if newest.r != nil {
		readings = append(readings, newest.r)
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

// floorDiv returns a/b rounded down, for b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b < 0 {
		q--
	}
	return q
}

// aggregate accumulates the values of one bucket.
type aggregate struct {
	sum, comp float64 // Neumaier's compensated sum
	min, max  float64
	count     int64
}

func (a *aggregate) add(v float64) {
	if a.count == 0 {
		a.min, a.max = v, v
	}
	a.min, a.max = min(a.min, v), max(a.max, v)
	t := a.sum + v
	if math.Abs(a.sum) >= math.Abs(v) {
		a.comp += (a.sum - t) + v
	} else {
		a.comp += (v - t) + a.sum
	}
	a.sum = t
	a.count++
}

// AggregateReadings returns the numeric readings of one series of the
// device in [From, To) aggregated in buckets aligned to multiples of
// Bucket since the Unix epoch, in time order; empty buckets are left out.
// Count is the number of values in the bucket. Returns EINVALID for a
// missing device or name, an unknown aggregation, a bucket under one
// second, To not after From, or more than 100000 buckets.
func (s *TelemetryService) AggregateReadings(ctx context.Context, f pylon.AggregateFilter) ([]*pylon.Bucket, error) {
	switch {
	case f.DeviceID == "":
		return nil, pylon.Errorf(pylon.EINVALID, "device_id: required")
	case f.Name == "":
		return nil, pylon.Errorf(pylon.EINVALID, "name: required")
	case f.Agg != pylon.AggAvg && f.Agg != pylon.AggMin && f.Agg != pylon.AggMax && f.Agg != pylon.AggCount:
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
	tx, err := s.beginRead(ctx)
	if err != nil {
		return nil, fmt.Errorf("aggregate readings: %w", err)
	}
	defer tx.done(ctx)
	_, ids, spans, err := s.findSeries(ctx, tx, f.DeviceID, f.Name)
	if err != nil || len(ids) == 0 {
		return buckets, err
	}
	rows, err := tx.query(ctx, `SELECT `+blockColumns+` FROM blocks b WHERE b.series = ? AND b.t0 >= ? AND b.t0 < ?`,
		ids[0], satSub(from, spans[ids[0]]), to)
	if err != nil {
		return nil, fmt.Errorf("aggregate readings: %w", err)
	}
	defer rows.Close()
	aggs := make(map[int64]*aggregate)
	for rows.Next() {
		b, err := scanBlock(rows)
		if err != nil {
			return nil, fmt.Errorf("scan block: %w", err)
		}
		err = b.decode(func(k readingKey, r *pylon.Reading) {
			if r.Value == nil || k.time < from || k.time >= to {
				return
			}
			start := floorDiv(k.time, size)
			a := aggs[start]
			if a == nil {
				a = &aggregate{}
				aggs[start] = a
			}
			a.add(*r.Value)
		})
		if err != nil {
			return nil, err
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("aggregate readings: %w", err)
	}
	for _, start := range slices.Sorted(maps.Keys(aggs)) {
		a := aggs[start]
		at := int64(math.MinInt64) // a bucket starting before the earliest time
		if start >= math.MinInt64/size {
			at = start * size
		}
		b := &pylon.Bucket{Start: time.Unix(0, at).UTC(), Count: a.count}
		switch f.Agg {
		case pylon.AggAvg:
			b.Value = (a.sum + a.comp) / float64(a.count)
		case pylon.AggMin:
			b.Value = a.min
		case pylon.AggMax:
			b.Value = a.max
		case pylon.AggCount:
			b.Value = float64(a.count)
		}
		buckets = append(buckets, b)
	}
	return buckets, nil
}

// DeleteReadingsBefore deletes the readings older than t and the runs of
// sequence numbers whose last message was received before t, and returns
// how many readings went. It deletes in transactions of at most 10000
// blocks, so that ingest is never held up for long: first the blocks all
// older than t, then it rewrites those that straddle t without their
// older readings. Each device's top run is kept, so that replay
// protection outlives retention.
func (s *TelemetryService) DeleteReadingsBefore(ctx context.Context, t time.Time) (int64, error) {
	before := nanos(t)
	var total int64
	for series := int64(0); ; {
		blocks, n, last, err := s.deleteBlocksChunk(ctx, series, before)
		total += n
		if err != nil {
			return total, err
		}
		if blocks < deleteChunk {
			break
		}
		series = last
	}
	for {
		blocks, n, err := s.trimBlocksChunk(ctx, before)
		total += n
		if err != nil {
			return total, err
		}
		if blocks < trimChunk {
			break
		}
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

// deleteBlocksChunk deletes up to deleteChunk blocks whose readings are
// all older than before, of the series from fromSeries on, in one
// transaction. It returns how many blocks and readings it deleted and the
// highest series it deleted from.
func (s *TelemetryService) deleteBlocksChunk(ctx context.Context, fromSeries, before int64) (blocks, readings, last int64, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, 0, err
	}
	defer tx.Rollback()
	rows, err := tx.Tx.QueryContext(ctx, `
		DELETE FROM blocks WHERE id IN (
			SELECT b.id FROM series s JOIN blocks b ON b.series = s.id
			WHERE s.id >= ?1 AND b.t0 < ?2 AND b.t1 < ?2
			ORDER BY s.id LIMIT ?3)
		RETURNING series, n`, fromSeries, before, deleteChunk)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("delete readings: %w", err)
	}
	for rows.Next() {
		var series, n int64
		if err := rows.Scan(&series, &n); err != nil {
			rows.Close()
			return 0, 0, 0, fmt.Errorf("delete readings: %w", err)
		}
		blocks, readings, last = blocks+1, readings+n, max(last, series)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, 0, fmt.Errorf("delete readings: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, 0, fmt.Errorf("commit delete readings: %w", err)
	}
	return blocks, readings, last, nil
}

// trimChunk is how many blocks one retention transaction rewrites at most.
const trimChunk = 1000

// trimBlocksChunk rewrites up to trimChunk blocks that hold readings both
// older than before and not, without the older ones, in one transaction.
// It returns how many blocks it rewrote and how many readings went.
func (s *TelemetryService) trimBlocksChunk(ctx context.Context, before int64) (blocks, readings int64, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	// Past deleteBlocksChunk, each series has few blocks with t0 < before:
	// those reaching past it.
	stored, err := queryAll(ctx, tx.Tx, "blocks to trim", scanBlock, `
		SELECT `+blockColumns+` FROM series s JOIN blocks b ON b.series = s.id
		WHERE b.t0 < ?1 AND b.t1 >= ?1 LIMIT ?2`, before, trimChunk)
	if err != nil {
		return 0, 0, err
	}
	for _, sb := range stored {
		bl := block{series: sb.series, unit: sb.unit}
		gone := int64(0)
		err := sb.decode(func(k readingKey, r *pylon.Reading) {
			if k.time < before {
				gone++
				return
			}
			bl.readings = append(bl.readings, r)
		})
		if err != nil {
			return 0, 0, err
		}
		if len(bl.readings) == 0 { // t1 >= before: cannot happen
			return 0, 0, fmt.Errorf("trim block %d: no reading at or after its t1", sb.id)
		}
		bl.t0 = bl.readings[0].Time.UnixNano()
		data := bl.encode()
		// first moves on by the readings dropped: a cursor at a reading
		// of the block still points at it.
		if _, err := tx.Tx.ExecContext(ctx, `UPDATE blocks SET t0 = ?, tick = ?, first = first + ?, n = ?, data = ? WHERE id = ?`,
			bl.t0, bl.tick, gone, len(bl.readings), data, sb.id); err != nil {
			return 0, 0, fmt.Errorf("trim block %d: %w", sb.id, err)
		}
		blocks, readings = blocks+1, readings+gone
	}
	if err := tx.Commit(); err != nil {
		return 0, 0, fmt.Errorf("commit trim readings: %w", err)
	}
	return blocks, readings, nil
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
