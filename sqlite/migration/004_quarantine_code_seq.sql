-- 004_quarantine_code_seq.sql: what kind of error refused a quarantined
-- message, and its sequence number when its signature verified, so that
-- an operator can tell a device's refused messages apart and match them
-- with the device's error reports (devices/{id}/errors).
--
-- code is "invalid", "unauthorized" or "too_large" ('' for messages
-- quarantined before this migration). seq is the uint64 sequence number
-- stored as its two's-complement int64 (0: not known).

ALTER TABLE quarantine ADD COLUMN code TEXT NOT NULL DEFAULT '';
ALTER TABLE quarantine ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
