package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/sqlite"
	"github.com/pylonhq/pylon/storetest"
)

// TestMigration006_ManyRows: more than 10000 rows, equal times across
// page boundaries, rows not in time order, several series.
func TestMigration006_ManyRows(t *testing.T) {
	ctx := context.Background()
	path, devs := closedWithDevices(t, 1)
	raw := openRaw(t, path)
	back006(t, raw, fmt.Sprintf(`INSERT INTO series (device_id, name) VALUES ('%s', 'a'), ('%s', 'b'), ('%s', 'c')`, devs[0], devs[0], devs[0]))
	tx, _ := raw.Begin()
	rng := rand.New(rand.NewPCG(1, 2))
	type row struct {
		series, id int
		t          int64
	}
	var rows []row
	for id := 1; id <= 31000; id++ {
		s := 1 + rng.IntN(3)
		tm := storetest.T0.UnixNano() + int64(rng.IntN(3000))*int64(3*time.Second) // ~10 rows per time per series
		rows = append(rows, row{s, id, tm})
		if _, err := tx.Exec(`INSERT INTO readings (id, series, time, unit, v) VALUES (?, ?, ?, 'W', ?)`, id, s, tm, float64(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	db, _ := MustOpenDB(t, path)
	ts := sqlite.NewTelemetryService(db)
	for s, name := range []string{"a", "b", "c"} {
		var want []row
		for _, r := range rows {
			if r.series == s+1 {
				want = append(want, r)
			}
		}
		// time, then id
		sortRows := func(a, b row) int {
			if a.t != b.t {
				if a.t < b.t {
					return -1
				}
				return 1
			}
			return a.id - b.id
		}
		slices.SortFunc(want, sortRows)
		var got []*pylon.Reading
		for cursor := ""; ; {
			page, next, err := ts.FindReadings(ctx, pylon.ReadingFilter{DeviceID: devs[0], Name: name, Cursor: cursor, Limit: 777})
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, page...)
			if cursor = next; cursor == "" {
				break
			}
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d readings, want %d", name, len(got), len(want))
		}
		for i := range got {
			if got[i].Time.UnixNano() != want[i].t || *got[i].Value != float64(want[i].id) {
				t.Fatalf("%s: reading %d: got %v, want row %d", name, i, *got[i].Value, want[i].id)
			}
		}
	}
}

// back006 turns the database raw back to before migration 006, with its
// readings table, and runs stmts.
func back006(t *testing.T, raw *sql.DB, stmts ...string) {
	t.Helper()
	for _, q := range append([]string{
		`DROP TABLE blocks`,
		`ALTER TABLE series DROP COLUMN span`,
		`CREATE TABLE readings (id INTEGER PRIMARY KEY, series INTEGER NOT NULL REFERENCES series (id) ON DELETE CASCADE,
			time INTEGER NOT NULL, unit TEXT NOT NULL DEFAULT '', v, vs TEXT, vb INTEGER, vd BLOB, s)`,
		`CREATE INDEX readings_series_time_idx ON readings (series, time)`,
		`DELETE FROM migrations WHERE name = '006_reading_blocks.sql'`,
	}, stmts...) {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}
