-- 005_sequence_runs.sql: deduplicate telemetry by runs of sequence
-- numbers instead of a row per message (TelemetryService, telemetry.go).
--
-- A row is a run lo..hi of a device's sequence numbers that are all
-- stored; received is when the last message of the run arrived (for
-- retention, which keeps each device's top run). A device sending in
-- order has one run, whose hi each commit moves up. The messages table it
-- replaces is turned into runs with the usual gaps-and-islands grouping:
-- within a run, seq minus its rank is the same.

CREATE TABLE sequences (
	device_id TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	lo        INTEGER NOT NULL,
	hi        INTEGER NOT NULL,
	received  INTEGER NOT NULL,
	PRIMARY KEY (device_id, lo)
) WITHOUT ROWID;

INSERT INTO sequences (device_id, lo, hi, received)
	SELECT device_id, min(seq), max(seq), max(received)
	FROM (SELECT device_id, seq, received,
		seq - row_number() OVER (PARTITION BY device_id ORDER BY seq) AS island
		FROM messages)
	GROUP BY device_id, island;

DROP TABLE messages;
