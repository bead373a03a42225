-- 002_telemetry.sql: device telemetry (TelemetryService, telemetry.go).
--
-- Times here are INTEGER nanoseconds since the Unix epoch (UTC), not text:
-- readings are the bulk of the database, and integers are smaller and
-- faster to compare. Telemetry is data, not state, so it is not audited.
-- Every table reaches devices through a foreign key with ON DELETE CASCADE:
-- deleting a device deletes its telemetry.

-- series names each (device, resolved SenML name) once, so that a reading
-- row and its index entry carry a small integer instead of the device ID
-- and the name. AUTOINCREMENT: an ID is never reused, so an ID cached in
-- memory can never point at another device's series.
CREATE TABLE series (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	device_id TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	name      TEXT    NOT NULL,
	UNIQUE (device_id, name)
);

-- readings holds one row per SenML record. v and s have no declared type on
-- purpose: with REAL affinity SQLite stores an integral float as an integer
-- and -0.0 would come back as 0.0; without it every float64 round-trips
-- bit for bit. vb is 0 or 1. A NULL column is a field the record did not
-- have.
CREATE TABLE readings (
	id     INTEGER PRIMARY KEY,
	series INTEGER NOT NULL REFERENCES series (id) ON DELETE CASCADE,
	time   INTEGER NOT NULL,
	unit   TEXT    NOT NULL DEFAULT '',
	v,
	vs     TEXT,
	vb     INTEGER,
	vd     BLOB,
	s
);

-- The one index of readings: every query (a page of readings, the latest
-- reading, aggregates, retention) is by series and time; the rowid at the
-- end of each entry orders readings with equal times.
CREATE INDEX readings_series_time_idx ON readings (series, time);

-- messages records each stored telemetry message for deduplication and
-- replay protection. seq is the device's sequence number (at most 2^63-1).
CREATE TABLE messages (
	device_id TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	seq       INTEGER NOT NULL,
	received  INTEGER NOT NULL,
	PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;

-- For retention; received grows with time, so new entries are appended.
CREATE INDEX messages_received_idx ON messages (received);

-- quarantine keeps refused messages for inspection, at most
-- pylon.MaxQuarantine of them (the store deletes the oldest).
CREATE TABLE quarantine (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	device_id TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	received  INTEGER NOT NULL,
	reason    TEXT    NOT NULL,
	payload   BLOB    NOT NULL
);

CREATE INDEX quarantine_device_idx ON quarantine (device_id, id);
