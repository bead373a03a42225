-- 006_reading_blocks.sql: readings stored in blocks, a row for the
-- readings of one series that one message brought, instead of a row per
-- reading (TelemetryService, telemetry.go and block.go).
--
-- A 50-reading pack was 50 rows and 50 index entries, each landing in
-- its own series' index leaf: at half of the ingest capacity the single
-- writer was busy three quarters of the time with B-tree inserts and the
-- WAL pages they dirtied. A block is one row and one index entry.
--
-- data is a CBOR array (RFC 8949) of the block's readings in time order,
-- each a map: 1 the time in ticks after the previous reading's (the
-- first's: after t0; absent if 0); 2 the unit, if not the block's; 3 v;
-- 4 vs; 5 vb; 6 vd; 7 s. Floats are written in the shortest CBOR form
-- that keeps their value exactly. t0 and t1 are the times of the first
-- and last reading, in nanoseconds since the epoch; tick is the unit of
-- the times in data, in nanoseconds: the largest of 10^9, 10^6, 10^3 and
-- 1 that divides them all (readings 10 s apart take 1 byte each for their
-- time, not 9); n is how many readings there are. first is the place in
-- the block of data's first reading: retention rewrites a block that
-- reaches past its cut without the older readings and moves first on, so
-- that a reading keeps its place (which paging cursors name).
--
-- A block spans at most an hour (t1 - t0); series.span is the widest of a
-- series' blocks ever written, so that a query for readings from time T
-- reads the blocks from t0 >= T - span on.
--
-- The rows of readings are moved into blocks by the Go step of this
-- migration (migrateReadingBlocks), series by series, which then drops
-- readings. Within a series, readings keep their order (time, then row);
-- readings of different series at one time, listed together, now come
-- series by series instead of in the order of their rows.
CREATE TABLE blocks (
	id     INTEGER PRIMARY KEY,
	series INTEGER NOT NULL REFERENCES series (id) ON DELETE CASCADE,
	t0     INTEGER NOT NULL,
	t1     INTEGER NOT NULL,
	tick   INTEGER NOT NULL,
	first  INTEGER NOT NULL DEFAULT 0,
	n      INTEGER NOT NULL,
	unit   TEXT    NOT NULL DEFAULT '',
	data   BLOB    NOT NULL
);

CREATE INDEX blocks_series_t0_idx ON blocks (series, t0);

ALTER TABLE series ADD COLUMN span INTEGER NOT NULL DEFAULT 0;
