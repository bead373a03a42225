package sqlite

import (
	"context"
	"fmt"
	"time"
)

const (
	// checkpointPause is the least time between two checkpoints: the
	// writes of that span share one checkpoint and its fsyncs.
	checkpointPause = 100 * time.Millisecond

	// walLimit is the WAL length, in bytes, from which a checkpoint makes
	// the writer start the WAL over (see startCheckpointer), and the size
	// the WAL file is cut back to when it does (journal_size_limit in
	// writerTuning). The larger, the rarer the brief hold on the writer
	// that a restart under load takes; and a WAL cut back below the length
	// it reached would be extended again, block by block, before the next
	// restart.
	walLimit = 256 << 20

	// restartPages is walLimit in pages of SQLite's default size.
	restartPages = walLimit / 4096

	// catchUpRounds is how many PASSIVE checkpoints one checkpoint runs
	// at most to copy what the writer committed during the previous one.
	catchUpRounds = 4

	// checkpointParams are the checkpoint connection's: synchronous as
	// the writer's (a checkpoint must fsync before the WAL starts over),
	// and a short busy timeout: PASSIVE checkpoints wait for no reader or
	// writer, only for SQLite's brief internal locks.
	checkpointParams = "_pragma=busy_timeout(100)&_pragma=synchronous(NORMAL)"

	// checkpointWarnEvery is the least time between two warnings of the
	// checkpointer.
	checkpointWarnEvery = time.Minute

	// defaultWriterWait is the longest the checkpointer waits for the writer's
	// connection to start the WAL over (a write transaction holds it for
	// milliseconds; retention's, for a chunk). Past it, the checkpointer
	// gives up for this round and warns: a transaction left open would
	// otherwise hold it, and Close, forever.
	defaultWriterWait = 10 * time.Second
)

// startCheckpointer opens the checkpoint connection and starts its loop.
//
// SQLite's default is an automatic checkpoint by the connection that
// commits once the WAL holds 1000 pages: the single writer would copy the
// WAL into the database file and wait for two fsyncs while every other
// write waits for it. A file database turns that off on the writer
// (wal_autocheckpoint=0) and runs checkpoints on a connection of its own
// instead, in the background, at most every checkpointPause and only after
// a commit. They are PASSIVE: a checkpoint never blocks the writer or a
// reader, and copies what no reader still needs; so a checkpoint runs
// PASSIVE rounds until it has copied everything (the writer adds frames
// only when it commits, and a round copies far faster than the writer
// writes), catchUpRounds at most.
//
// The writer starts the WAL over only if, as it begins a transaction, all
// of the WAL is in the database file. Under steady load it never is: the
// writer commits again while a round copies and syncs. So once the WAL is
// restartPages long, the checkpointer takes the writer's connection
// between two transactions (the writer waits for it in database/sql's
// pool, and goes on the moment it is back, with no polling) and runs one
// more PASSIVE round on it, which copies the few frames committed since
// the previous round and syncs; the writer's next transaction starts the
// WAL over. That holds writes back for the copy and two fsyncs, once per
// walLimit of WAL. SQLite's RESTART checkpoint did the same from the
// checkpoint connection, but the writer then waited for it in SQLite's
// busy handler, which sleeps in steps of up to 100 ms, and the RESTART
// also waits for readers. If readers still hold part of the WAL, the round
// copies what it can and the next checkpoint tries again; a WAL that grows
// past 4×restartPages is logged.
func (db *DB) startCheckpointer(ctx context.Context) error {
	c, err := openSingle(db.DSN + "?" + checkpointParams)
	if err != nil {
		return fmt.Errorf("open checkpoint connection: %w", err)
	}
	if err := c.PingContext(ctx); err != nil {
		c.Close()
		return fmt.Errorf("open checkpoint connection: %w", err)
	}
	db.ckpt = c
	db.ckptKick = make(chan struct{}, 1)
	db.ckptDone = make(chan struct{})
	go db.checkpointLoop()
	return nil
}

// checkpointWarn logs a checkpoint problem at most every
// checkpointWarnEvery. Only the checkpoint loop calls it.
func (db *DB) checkpointWarn(msg string, args ...any) {
	if now := time.Now(); now.Sub(db.ckptWarned) >= checkpointWarnEvery {
		db.ckptWarned = now
		db.logger.Warn(msg, args...)
	}
}

// kickCheckpointer tells the checkpointer that a commit added to the WAL.
func (db *DB) kickCheckpointer() {
	if db.ckptKick != nil {
		select {
		case db.ckptKick <- struct{}{}:
		default:
		}
	}
}

func (db *DB) checkpointLoop() {
	defer close(db.ckptDone)
	pause := time.NewTimer(checkpointPause)
	for {
		select {
		case <-db.ckptKick:
		case <-db.batchStop:
			return
		}
		if err := db.checkpoint(); err != nil {
			db.checkpointWarn("wal checkpoint failed", "err", err)
		}
		pause.Reset(checkpointPause)
		select {
		case <-pause.C:
		case <-db.batchStop:
			return
		}
	}
}

// checkpoint runs PASSIVE checkpoints until the WAL is all copied (or
// catchUpRounds), and, if the WAL is db.restartPages long, a last one on
// the writer's connection.
func (db *DB) checkpoint() error {
	var busy, log, done int
	for range catchUpRounds {
		prev := done
		if err := db.ckpt.QueryRow(`PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &log, &done); err != nil {
			return err
		}
		db.logger.Debug("wal checkpoint", "wal_pages", log, "checkpointed", done)
		if done >= log || done == prev {
			break // all copied, or readers hold the rest
		}
	}
	if log < db.restartPages {
		return nil
	}
	if db.testWriterWait != nil {
		db.testWriterWait(true)
		defer db.testWriterWait(false)
	}
	start := time.Now()
	w, err := db.writerConn(db.writerWait, 0) // Close ends the wait at once
	if err != nil {
		return fmt.Errorf("wait for the writer to start the WAL over: %w", err)
	}
	held := time.Now()
	err = w.QueryRowContext(context.Background(), `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &log, &done)
	w.Close()
	if err != nil {
		return err
	}
	db.logger.Debug("wal checkpoint on the writer", "wal_pages", log, "checkpointed", done,
		"waited", held.Sub(start), "held", time.Since(held))
	if done < log && log >= 4*db.restartPages {
		db.checkpointWarn("wal keeps growing: readers hold it", "wal_pages", log)
	}
	return nil
}

// stopCheckpointer waits for the checkpoint loop to end (db.batchStop is
// closed) and closes its connection.
func (db *DB) stopCheckpointer() error {
	if db.ckpt == nil {
		return nil
	}
	<-db.ckptDone
	return db.ckpt.Close()
}
