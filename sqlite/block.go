package sqlite

import (
	"cmp"
	"container/heap"
	"context"
	"database/sql"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/internal/cborenc"
)

// Readings are stored in blocks (migration 006_reading_blocks.sql): one row
// holds the readings of one series that one message brought, in time
// order, as a CBOR array. A block spans at most maxBlockSpan; a message
// whose readings of a series spread wider makes several.
const maxBlockSpan = int64(time.Hour)

// blockRecord is one reading in a block's data. Its time is DT ticks
// after the previous reading's (the first's: after the block's t0); U is
// set only if the unit is not the block's.
type blockRecord struct {
	DT uint64   `cbor:"1,keyasint,omitempty"`
	U  *string  `cbor:"2,keyasint,omitempty"`
	V  *float64 `cbor:"3,keyasint,omitempty"`
	VS *string  `cbor:"4,keyasint,omitempty"`
	VB *bool    `cbor:"5,keyasint,omitempty"`
	VD *[]byte  `cbor:"6,keyasint,omitempty"`
	S  *float64 `cbor:"7,keyasint,omitempty"`
}

var (
	// blockDec bounds what a block may hold: a message has at most
	// pylon.MaxReadingsPerMessage readings.
	blockDec = must(cbor.DecOptions{
		MaxArrayElements: pylon.MaxReadingsPerMessage,
		MaxMapPairs:      16,
		MaxNestedLevels:  4,
	}.DecMode())
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// block is a block to write: readings of one series in time order.
type block struct {
	series   int64
	t0, t1   int64
	tick     int64 // set by encode
	unit     string
	readings []*pylon.Reading
}

// appendBlocks appends to dst the blocks of one message's readings of
// one series, rs in the message's order. The readings are sorted by time,
// stably (equal times keep the message's order), and cut where a block
// would span more than maxBlockSpan.
func appendBlocks(dst []block, series int64, rs []*pylon.Reading) []block {
	slices.SortStableFunc(rs, func(a, b *pylon.Reading) int { return a.Time.Compare(b.Time) })
	start := 0
	for i := 1; i <= len(rs); i++ {
		// Sub saturates: readings centuries apart do not wrap around.
		if i < len(rs) && rs[i].Time.Sub(rs[start].Time) <= time.Duration(maxBlockSpan) {
			continue
		}
		dst = append(dst, block{
			series:   series,
			t0:       rs[start].Time.UnixNano(),
			t1:       rs[i-1].Time.UnixNano(),
			unit:     rs[start].Unit,
			readings: rs[start:i],
		})
		start = i
	}
	return dst
}

// ticks are the units of a block's times, largest first: a reading taken
// a whole number of seconds after the one before, as most are, takes 1 to
// 5 bytes for its time instead of 9.
var ticks = [...]int64{1e9, 1e6, 1e3, 1}

// encode sets b.tick, the largest of ticks that divides the time of
// every reading after t0, and returns the block's data: the bytes that
// fxamacker/cbor writes for the block's []blockRecord with
// ShortestFloat16, written directly (by reflection they had cost 4–6% of
// the server's CPU).
func (b *block) encode() []byte {
	k := 0
	for _, r := range b.readings {
		for (r.Time.UnixNano()-b.t0)%ticks[k] != 0 {
			k++
		}
	}
	b.tick = ticks[k]
	d := make([]byte, 0, 8+12*len(b.readings))
	d = cborenc.AppendHead(d, cborenc.Array, uint64(len(b.readings)))
	prev := b.t0
	for _, r := range b.readings {
		t := r.Time.UnixNano()
		dt := uint64((t - prev) / b.tick)
		prev = t
		unit := r.Unit != b.unit
		n := 0
		for _, present := range [...]bool{dt != 0, unit, r.Value != nil, r.StringValue != nil,
			r.BoolValue != nil, r.DataValue != nil, r.Sum != nil} {
			if present {
				n++
			}
		}
		// The keys of blockRecord, in its order.
		d = cborenc.AppendHead(d, cborenc.Map, uint64(n))
		if dt != 0 {
			d = cborenc.AppendHead(append(d, 0x01), cborenc.Uint, dt)
		}
		if unit {
			d = cborenc.AppendText(append(d, 0x02), r.Unit)
		}
		if r.Value != nil {
			d = cborenc.AppendFloat(append(d, 0x03), *r.Value)
		}
		if r.StringValue != nil {
			d = cborenc.AppendText(append(d, 0x04), *r.StringValue)
		}
		if r.BoolValue != nil {
			v := byte(0xf4)
			if *r.BoolValue {
				v = 0xf5
			}
			d = append(d, 0x05, v)
		}
		if r.DataValue != nil {
			d = append(cborenc.AppendHead(append(d, 0x06), cborenc.Bytes, uint64(len(r.DataValue))), r.DataValue...)
		}
		if r.Sum != nil {
			d = cborenc.AppendFloat(append(d, 0x07), *r.Sum)
		}
	}
	return d
}

// readingKey orders readings: by time, then by block, then by place in
// the block (which keeps the order of a message's readings with equal
// times). A new block's ID is above those of all blocks stored (SQLite
// gives a row the highest rowid plus one), so readings with equal times
// come in the order they were stored. A reading's place is kept when
// retention drops the block's older readings (storedBlock.first).
type readingKey struct {
	time, block int64
	idx         int
}

func (a readingKey) cmp(b readingKey) int {
	if c := cmp.Compare(a.time, b.time); c != 0 {
		return c
	}
	if c := cmp.Compare(a.block, b.block); c != 0 {
		return c
	}
	return cmp.Compare(a.idx, b.idx)
}

// storedBlock is a block as read: its row.
type storedBlock struct {
	id, series, t0, tick int64
	first                int // the place in the block of data's first reading
	unit                 string
	data                 []byte
}

// decode calls visit with each reading of the block and its key, in
// order. The readings have no device ID or name.
func (b *storedBlock) decode(visit func(readingKey, *pylon.Reading)) error {
	var recs []blockRecord
	if err := blockDec.Unmarshal(b.data, &recs); err != nil {
		return fmt.Errorf("decode block %d: %w", b.id, err)
	}
	t := b.t0
	for i := range recs {
		rec := &recs[i]
		if b.tick < 1 || t > maxNanos || rec.DT > uint64(maxNanos-t)/uint64(b.tick) {
			return fmt.Errorf("decode block %d: reading %d out of range", b.id, i)
		}
		t += int64(rec.DT) * b.tick
		r := &pylon.Reading{
			Unit: b.unit, Time: time.Unix(0, t).UTC(),
			Value: rec.V, StringValue: rec.VS, BoolValue: rec.VB, Sum: rec.S,
		}
		if rec.U != nil {
			r.Unit = *rec.U
		}
		if rec.VD != nil {
			r.DataValue = *rec.VD
			if r.DataValue == nil {
				r.DataValue = []byte{}
			}
		}
		visit(readingKey{t, b.id, b.first + i}, r)
	}
	return nil
}

// keyed is a decoded reading with its key and series.
type keyed struct {
	key    readingKey
	series int64
	r      *pylon.Reading
}

// insertBlockSQL and widenSQL write a block and widen its series' span;
// the ingest path and migration 006 share them.
const (
	insertBlockSQL = `INSERT INTO blocks (series, t0, t1, tick, n, unit, data) VALUES `
	widenSQL       = `UPDATE series SET span = max(span, ?) WHERE id = ?`
)

// pager makes a page of readings from blocks read in the order of their
// t0 (descending for desc), with equal t0 in the order of their IDs.
// Readings wait in a heap until no block still to come can hold one that
// goes before them: going up, a reading before the next block's t0;
// going down, one after the next block's t0 plus span, the widest block
// of the series read. The direction is the heap's, wait.desc.
type pager struct {
	span     int64
	bound    readingKey // exclusive: the page starts after it
	from, to int64      // readings in [from, to)
	limit    int

	wait waiting
	out  []keyed
}

// full reports whether the page has its limit of readings.
func (p *pager) full() bool { return len(p.out) >= p.limit }

// add adds the readings of b that belong on the page, after emitting
// those that no later block can precede.
func (p *pager) add(b *storedBlock) error {
	p.emit(b.t0, false)
	return b.decode(func(k readingKey, r *pylon.Reading) {
		if k.time < p.from || k.time >= p.to {
			return
		}
		if c := k.cmp(p.bound); !p.wait.desc && c <= 0 || p.wait.desc && c >= 0 {
			return
		}
		heap.Push(&p.wait, keyed{key: k, series: b.series, r: r})
	})
}

// finish emits what waits: no block is left.
func (p *pager) finish() { p.emit(0, true) }

// emit moves waiting readings to the page, in order, while they cannot be
// preceded by a reading of a block whose t0 is next (any, with all).
func (p *pager) emit(next int64, all bool) {
	for len(p.wait.k) > 0 && !p.full() {
		top := p.wait.k[0].key.time
		if !all && (!p.wait.desc && top >= next || p.wait.desc && (top <= next || uint64(top)-uint64(next) <= uint64(p.span))) {
			return
		}
		p.out = append(p.out, heap.Pop(&p.wait).(keyed))
	}
}

// waiting is a heap of readings, first in page order on top.
type waiting struct {
	desc bool
	k    []keyed
}

func (w *waiting) Len() int { return len(w.k) }
func (w *waiting) Less(i, j int) bool {
	c := w.k[i].key.cmp(w.k[j].key)
	if w.desc {
		return c > 0
	}
	return c < 0
}
func (w *waiting) Swap(i, j int) { w.k[i], w.k[j] = w.k[j], w.k[i] }
func (w *waiting) Push(x any)    { w.k = append(w.k, x.(keyed)) }
func (w *waiting) Pop() any {
	x := w.k[len(w.k)-1]
	w.k[len(w.k)-1] = keyed{}
	w.k = w.k[:len(w.k)-1]
	return x
}

// migrateReadingBlocks is the Go step of 006_reading_blocks.sql: it moves
// the rows of readings into blocks, each series' readings in their order
// (time, then ID) in blocks of up to pylon.MaxReadingsPerMessage, and
// drops readings.
func migrateReadingBlocks(ctx context.Context, tx *sql.Tx) error {
	var (
		after  = [3]int64{math.MinInt64, math.MinInt64, math.MinInt64} // (series, time, id) read so far
		series int64
		rs     []*pylon.Reading
	)
	flush := func() error {
		for _, bl := range appendBlocks(nil, series, rs) {
			data := bl.encode()
			if _, err := tx.ExecContext(ctx, insertBlockSQL+valuesSQL(1, blockCols),
				bl.series, bl.t0, bl.t1, bl.tick, len(bl.readings), bl.unit, data); err != nil {
				return fmt.Errorf("move readings: %w", err)
			}
			if _, err := tx.ExecContext(ctx, widenSQL, bl.t1-bl.t0, bl.series); err != nil {
				return fmt.Errorf("move readings: %w", err)
			}
		}
		rs = rs[:0]
		return nil
	}
	for {
		rows, err := tx.QueryContext(ctx, `
			SELECT series, time, id, unit, v, vs, vb, vd, vd IS NOT NULL, s FROM readings
			WHERE (series, time, id) > (?, ?, ?) ORDER BY series, time, id LIMIT 10000`, after[0], after[1], after[2])
		if err != nil {
			return fmt.Errorf("move readings: %w", err)
		}
		n := 0
		for rows.Next() {
			var (
				r        pylon.Reading
				s, t, id int64
				v, sum   sql.NullFloat64
				vs       sql.NullString
				vb       sql.NullBool
				vd       []byte
				hasVD    bool
			)
			if err := rows.Scan(&s, &t, &id, &r.Unit, &v, &vs, &vb, &vd, &hasVD, &sum); err != nil {
				rows.Close()
				return fmt.Errorf("move readings: %w", err)
			}
			if s != series || len(rs) == pylon.MaxReadingsPerMessage {
				if err := flush(); err != nil {
					rows.Close()
					return err
				}
				series = s
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
			rs = append(rs, &r)
			after, n = [3]int64{s, t, id}, n+1
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("move readings: %w", err)
		}
		if n == 0 {
			break
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DROP TABLE readings`); err != nil {
		return fmt.Errorf("drop readings: %w", err)
	}
	return nil
}
