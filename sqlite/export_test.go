package sqlite

import (
	"context"
	"time"
)

// SetRestartPages sets the WAL length, in pages, at which the checkpointer
// starts the WAL over. Call it before Open.
func (db *DB) SetRestartPages(n int) { db.restartPages = n }

// SetWriterWait sets the longest the checkpointer waits for the writer,
// and a function called with true as it starts to wait and with false when
// its round on the writer is over. Call it before Open.
func (db *DB) SetWriterWait(d time.Duration, hook func(waiting bool)) {
	db.writerWait, db.testWriterWait = d, hook
}

// KickCheckpointer tells the checkpointer that a commit added to the WAL.
func (db *DB) KickCheckpointer() { db.kickCheckpointer() }

// WriterWaits returns how many times a caller waited for the writer's
// connection.
func (db *DB) WriterWaits() int64 { return db.writer.Stats().WaitCount }

// RunBatched runs fn in a group commit (runBatched).
func (db *DB) RunBatched(ctx context.Context, fn func(ctx context.Context, tx *Tx) error) error {
	return db.runBatched(ctx, fn)
}
