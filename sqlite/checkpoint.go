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

	// restartPages is the WAL length, in pages, from which a checkpoint
	// also makes the writer start the WAL over, with a RESTART.
	restartPages = 16384

	// catchUpRounds is how many PASSIVE checkpoints one checkpoint runs
	// at most to copy what the writer committed during the previous one.
	catchUpRounds = 4

	// checkpointParams are the checkpoint connection's: synchronous as
	// the writer's (a checkpoint must fsync before the WAL starts over),
	// and a short busy timeout, as the RESTART waits for readers while it
	// holds writes back.
	checkpointParams = "_pragma=busy_timeout(100)&_pragma=synchronous(NORMAL)"

	// checkpointWarnEvery is the least time between two warnings of the
	// checkpointer.
	checkpointWarnEvery = time.Minute
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
// reader, and copies what no reader still needs. The writer starts the WAL
// over when all of it is in the database file as it writes its next
// commit; so a checkpoint runs PASSIVE rounds until it has copied
// everything (the writer adds frames only when it commits, and a round
// copies far faster than the writer writes), catchUpRounds at most. Only
// if the WAL has grown to restartPages all the same (readers held it), a
// RESTART follows: it holds writes back while it copies the last frames and
// syncs, and waits at most its busy timeout for readers; if they are still
// reading, it gives up and the next checkpoint tries again. A WAL that
// grows past 4×restartPages is logged.
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
// catchUpRounds), and a RESTART one if the WAL is restartPages long.
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
	if log < restartPages {
		return nil
	}
	if err := db.ckpt.QueryRow(`PRAGMA wal_checkpoint(RESTART)`).Scan(&busy, &log, &done); err != nil {
		return err
	}
	db.logger.Debug("wal checkpoint restart", "busy", busy, "wal_pages", log, "checkpointed", done)
	if busy != 0 && log >= 4*restartPages {
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
