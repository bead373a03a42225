-- 003_certificates_outlive_devices.sql: a deleted device's certificates
-- stay, revoked, so that they stay on the CRL until they expire.
--
-- certificates.device_id referenced devices (id) ON DELETE CASCADE:
-- deleting a device took its certificates off the CRL (GET
-- /api/v1/ca/crl), and an external broker that checks the CRL would have
-- accepted a still-valid certificate of a deleted device again.
-- DeleteDevice now revokes them first ("device deleted"); device_id keeps
-- the ID of a device that may be gone. SQLite cannot drop a foreign key,
-- so the table is rebuilt (https://sqlite.org/lang_altertable.html#otheralter).

CREATE TABLE certificates_new (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	serial     TEXT    NOT NULL UNIQUE,
	device_id  TEXT    NOT NULL, -- the device, or a deleted device's ID
	not_before TEXT    NOT NULL,
	not_after  TEXT    NOT NULL,
	status     TEXT    NOT NULL CHECK (status IN ('valid', 'superseded', 'revoked')),
	revoked_at TEXT,
	reason     TEXT    NOT NULL DEFAULT '',
	key_type   TEXT    NOT NULL DEFAULT '',
	der        BLOB    NOT NULL,
	created_at TEXT    NOT NULL
);

INSERT INTO certificates_new (seq, serial, device_id, not_before, not_after, status, revoked_at, reason, key_type, der, created_at)
	SELECT seq, serial, device_id, not_before, not_after, status, revoked_at, reason, key_type, der, created_at FROM certificates;

-- Keep the AUTOINCREMENT counter: DROP TABLE forgets it, and the new
-- table's would restart at the highest seq copied, reusing the seq of
-- certificates the old cascade deleted.
DELETE FROM sqlite_sequence WHERE name = 'certificates_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'certificates_new', seq FROM sqlite_sequence WHERE name = 'certificates';

DROP TABLE certificates;
ALTER TABLE certificates_new RENAME TO certificates;

CREATE INDEX certificates_device_idx ON certificates (device_id, status);
CREATE INDEX certificates_status_idx ON certificates (status, not_after);
