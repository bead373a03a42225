package sqlite

// SetRestartPages sets the WAL length, in pages, at which the checkpointer
// starts the WAL over. Call it before Open.
func (db *DB) SetRestartPages(n int) { db.restartPages = n }

// KickCheckpointer tells the checkpointer that a commit added to the WAL.
func (db *DB) KickCheckpointer() { db.kickCheckpointer() }

// WriterWaits returns how many times a caller waited for the writer's
// connection.
func (db *DB) WriterWaits() int64 { return db.writer.Stats().WaitCount }
