package sqlite

// SetRestartPages sets the WAL length, in pages, at which the checkpointer
// starts the WAL over. Call it before Open.
func (db *DB) SetRestartPages(n int) { db.restartPages = n }
