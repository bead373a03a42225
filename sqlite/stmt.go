package sqlite

import (
	"context"
	"database/sql"
	"sync"
)

// maxCachedStmts bounds the statement cache. The queries of this package
// are fixed strings plus a few filter combinations, far fewer than this.
const maxCachedStmts = 512

// stmtCache keeps statements prepared on the single writer connection, so
// that write transactions do not parse the same SQL again and again
// (parsing was a seventh of an enrollment's cost). A statement cannot be
// prepared on the writer while a transaction holds its only connection, so
// a query missing from the cache runs unprepared and is prepared after its
// transaction ends.
type stmtCache struct {
	mu     sync.Mutex
	stmts  map[string]*sql.Stmt // nil value: preparation pending
	closed bool
}

// get returns the prepared statement for query, or nil. want reports
// whether the caller should have it prepared after its transaction.
func (c *stmtCache) get(query string) (s *sql.Stmt, want bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.stmts[query]; ok || c.closed || len(c.stmts) >= maxCachedStmts {
		return s, false
	}
	if c.stmts == nil {
		c.stmts = make(map[string]*sql.Stmt)
	}
	c.stmts[query] = nil
	return nil, true
}

// prepare prepares queries on db and caches them. It waits for the writer
// connection, so it runs in the background.
func (c *stmtCache) prepare(db *sql.DB, queries []string) {
	for _, q := range queries {
		s, err := db.Prepare(q)
		c.mu.Lock()
		switch {
		case err != nil:
			delete(c.stmts, q) // try again next time
		case c.closed:
			s.Close()
		default:
			c.stmts[q] = s
		}
		c.mu.Unlock()
	}
}

// close closes every cached statement.
func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.stmts {
		if s != nil {
			s.Close()
		}
	}
	c.stmts, c.closed = nil, true
}

// prepared returns query as a statement of tx if the cache has it, and
// otherwise notes it for preparation when tx ends.
func (tx *Tx) prepared(ctx context.Context, query string) *sql.Stmt {
	if tx.readOnly {
		return nil
	}
	s, want := tx.db.stmts.get(query)
	if want {
		tx.unprepared = append(tx.unprepared, query)
	}
	if s == nil {
		return nil
	}
	return tx.Tx.StmtContext(ctx, s)
}

// Commit commits tx, then prepares the queries it ran unprepared.
func (tx *Tx) Commit() error {
	err := tx.Tx.Commit()
	if err == nil && !tx.readOnly {
		tx.db.kickCheckpointer()
	}
	tx.prepareLater()
	return err
}

// Rollback rolls tx back, then prepares the queries it ran unprepared.
func (tx *Tx) Rollback() error {
	err := tx.Tx.Rollback()
	tx.prepareLater()
	return err
}

func (tx *Tx) prepareLater() {
	if len(tx.unprepared) > 0 {
		go tx.db.stmts.prepare(tx.db.writer, tx.unprepared)
		tx.unprepared = nil
	}
}

// ExecContext runs query in tx with a cached prepared statement.
func (tx *Tx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if s := tx.prepared(ctx, query); s != nil {
		return s.ExecContext(ctx, args...)
	}
	return tx.Tx.ExecContext(ctx, query, args...)
}

// QueryContext runs query in tx with a cached prepared statement.
func (tx *Tx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s := tx.prepared(ctx, query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return tx.Tx.QueryContext(ctx, query, args...)
}

// QueryRowContext runs query in tx with a cached prepared statement.
func (tx *Tx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if s := tx.prepared(ctx, query); s != nil {
		return s.QueryRowContext(ctx, args...)
	}
	return tx.Tx.QueryRowContext(ctx, query, args...)
}
