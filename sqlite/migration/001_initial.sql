-- 001_initial.sql: the first schema of the Pylon store.
--
-- Times are TEXT in UTC, formatted "2006-01-02T15:04:05.000000000Z" (fixed
-- width, so they compare and sort as strings). Every table with a creation
-- order has an AUTOINCREMENT seq, which is never reused and never renumbered
-- by VACUUM, so that cursors and "newest first" stay stable.

CREATE TABLE devices (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	id         TEXT    NOT NULL UNIQUE,
	name       TEXT    NOT NULL UNIQUE,
	labels     TEXT    NOT NULL DEFAULT '{}', -- JSON object, mirrored in device_labels
	metadata   TEXT,                          -- JSON object or NULL
	state      TEXT    NOT NULL CHECK (state IN ('registered', 'active', 'suspended', 'decommissioned')),
	online     INTEGER NOT NULL DEFAULT 0 CHECK (online IN (0, 1)),
	last_seen  TEXT,
	created_at TEXT    NOT NULL,
	updated_at TEXT    NOT NULL
);

CREATE INDEX devices_state_idx  ON devices (state, seq);
CREATE INDEX devices_online_idx ON devices (online, seq);

-- device_labels makes label filters use an index at any fleet size.
CREATE TABLE device_labels (
	device_seq INTEGER NOT NULL REFERENCES devices (seq) ON DELETE CASCADE,
	key        TEXT    NOT NULL,
	value      TEXT    NOT NULL,
	PRIMARY KEY (device_seq, key)
) WITHOUT ROWID;

CREATE INDEX device_labels_kv_idx ON device_labels (key, value, device_seq);

-- connections keeps the newest connection events of each device (the store
-- prunes older ones).
CREATE TABLE connections (
	seq         INTEGER PRIMARY KEY,
	device_id   TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	online      INTEGER NOT NULL CHECK (online IN (0, 1)),
	at          TEXT    NOT NULL,
	remote_addr TEXT    NOT NULL DEFAULT '',
	reason      TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX connections_device_idx ON connections (device_id, seq);

CREATE TABLE certificates (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	serial     TEXT    NOT NULL UNIQUE,
	device_id  TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	not_before TEXT    NOT NULL,
	not_after  TEXT    NOT NULL,
	status     TEXT    NOT NULL CHECK (status IN ('valid', 'superseded', 'revoked')),
	revoked_at TEXT,
	reason     TEXT    NOT NULL DEFAULT '',
	key_type   TEXT    NOT NULL DEFAULT '',
	der        BLOB    NOT NULL,
	created_at TEXT    NOT NULL
);

CREATE INDEX certificates_device_idx ON certificates (device_id, status);
CREATE INDEX certificates_status_idx ON certificates (status, not_after);

CREATE TABLE enrollment_tokens (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	id         TEXT    NOT NULL UNIQUE,
	hash       BLOB    NOT NULL,
	device_id  TEXT    REFERENCES devices (id) ON DELETE CASCADE, -- NULL for a fleet token
	labels     TEXT    NOT NULL DEFAULT '{}',
	uses       INTEGER NOT NULL CHECK (uses >= 1),
	used       INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0 AND used <= uses),
	expires_at TEXT    NOT NULL,
	revoked_at TEXT,
	created_at TEXT    NOT NULL,
	created_by TEXT    NOT NULL
);

CREATE INDEX enrollment_tokens_device_idx ON enrollment_tokens (device_id);

CREATE TABLE api_tokens (
	seq          INTEGER PRIMARY KEY AUTOINCREMENT,
	id           TEXT    NOT NULL UNIQUE,
	name         TEXT    NOT NULL,
	role         TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
	hash         BLOB    NOT NULL,
	created_at   TEXT    NOT NULL,
	expires_at   TEXT,
	last_used_at TEXT,
	revoked_at   TEXT
);

-- audit is the append-only, hash-chained audit log. The triggers below make
-- any UPDATE or DELETE fail, whoever issues it.
CREATE TABLE audit (
	seq       INTEGER PRIMARY KEY,
	time      TEXT    NOT NULL,
	actor     TEXT    NOT NULL,
	action    TEXT    NOT NULL,
	object    TEXT    NOT NULL,
	details   TEXT,
	prev_hash TEXT    NOT NULL,
	hash      TEXT    NOT NULL
);

CREATE INDEX audit_object_idx ON audit (object, seq);
CREATE INDEX audit_actor_idx  ON audit (actor, seq);
CREATE INDEX audit_action_idx ON audit (action, seq);
CREATE INDEX audit_time_idx   ON audit (time);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
	SELECT RAISE(ABORT, 'audit log is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
	SELECT RAISE(ABORT, 'audit log is append-only');
END;
