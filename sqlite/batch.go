package sqlite

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// maxBatch is how many write functions share one transaction at most.
const maxBatch = 128

// closeGrace is how long a group commit still waits for the writer's
// connection once Close has begun.
const closeGrace = 5 * time.Second

// errClosed is returned for writes submitted after Close.
var errClosed = errors.New("database closed")

// batchReq is one write waiting for the group committer.
type batchReq struct {
	ctx  context.Context
	fn   func(ctx context.Context, tx *Tx) error
	done chan error
}

// runBatched runs fn in a write transaction shared with other concurrent
// callers (group commit): one transaction and one commit for many small
// writes, each in its own savepoint so that a failing fn undoes only its own
// changes. It returns fn's error, or the commit's. fn must not commit or
// roll back tx; it runs on the committer's goroutine with ctx's values but
// not its cancellation (an interrupted statement would abort everyone's
// transaction), so a caller that gives up early only stops waiting.
func (db *DB) runBatched(ctx context.Context, fn func(ctx context.Context, tx *Tx) error) error {
	db.batchOnce.Do(db.startBatcher)
	r := &batchReq{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case db.batchCh <- r:
	case <-db.batchStop:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (db *DB) startBatcher() {
	db.batchCh = make(chan *batchReq)
	db.batchDone = make(chan struct{})
	go db.batchLoop()
}

// stopBatcher makes later writes fail and waits for the committer to
// finish its current batch.
func (db *DB) stopBatcher() {
	db.batchOnce.Do(func() {}) // no batcher starts after Close
	close(db.batchStop)
	if db.batchDone != nil {
		<-db.batchDone
	}
}

func (db *DB) batchLoop() {
	defer close(db.batchDone)
	batch := make([]*batchReq, 0, maxBatch)
	for {
		select {
		case r := <-db.batchCh:
			batch = append(batch[:0], r)
		case <-db.batchStop:
			return
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-db.batchCh:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		db.commitBatch(batch)
		clear(batch)
	}
}

// commitBatch runs the batch in one transaction and answers every request.
func (db *DB) commitBatch(batch []*batchReq) {
	errs := make([]error, len(batch))
	fail := func(err error) {
		for i, r := range batch {
			if errs[i] == nil {
				errs[i] = err
			}
			r.done <- errs[i]
		}
	}
	ctx := context.Background()
	tx, release, err := db.beginBatch()
	if err != nil {
		fail(err)
		return
	}
	defer release()
	for i, r := range batch {
		if err := r.ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		if _, err := tx.ExecContext(ctx, `SAVEPOINT batch_item`); err != nil {
			tx.Rollback()
			fail(fmt.Errorf("savepoint: %w", err))
			return
		}
		if errs[i] = r.fn(context.WithoutCancel(r.ctx), tx); errs[i] != nil {
			tx.auditHead = nil // the rollback may remove records appended by fn
			if _, err := tx.ExecContext(ctx, `ROLLBACK TO batch_item`); err != nil {
				tx.Rollback()
				fail(fmt.Errorf("rollback to savepoint: %w", err))
				return
			}
		}
		if _, err := tx.ExecContext(ctx, `RELEASE batch_item`); err != nil {
			tx.Rollback()
			fail(fmt.Errorf("release savepoint: %w", err))
			return
		}
	}
	if err := tx.Commit(); err != nil {
		fail(fmt.Errorf("commit: %w", err))
		return
	}
	for i, r := range batch {
		r.done <- errs[i]
	}
}

// beginBatch starts a group commit's write transaction, on a connection
// of its own that release gives back. Its wait for the writer ends
// closeGrace after Close begins (see writerConn); a batch that has the
// connection is finished.
func (db *DB) beginBatch() (tx *Tx, release func(), err error) {
	if db.writer == nil {
		return nil, nil, fmt.Errorf("database not open")
	}
	conn, err := db.writerConn(0, closeGrace)
	if err != nil {
		return nil, nil, fmt.Errorf("begin transaction: %w", err)
	}
	sqlTx, err := conn.BeginTx(context.Background(), nil)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("begin transaction: %w", err)
	}
	return db.newTx(sqlTx, false), func() { conn.Close() }, nil
}
