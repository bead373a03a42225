package device

import (
	"context"
	"sync"
	"time"

	"github.com/pylonhq/pylon"
)

// maxBatchBytes bounds the estimated pack size of a batch, well under
// pylon.MaxMessageBytes once signed.
const maxBatchBytes = 48 << 10

// batcher collects the readings published within Options.BatchWindow into
// one message.
type batcher struct {
	c *Client

	mu  sync.Mutex
	cur *batch
}

// batch is one message in the making. Every Publish whose readings it
// holds waits on queued (and, without NoWait, acked).
type batch struct {
	rs    []reading
	size  int
	timer *time.Timer
	once  sync.Once

	queued   chan struct{} // closed once sealed and in the outbox, or failed
	queueErr error
	acked    chan struct{} // closed once acknowledged or refused
	ackErr   error
}

// add puts rs into the current batch, starting one if needed, and waits
// for the batch's outcome.
func (b *batcher) add(ctx context.Context, rs []reading) error {
	size := 0
	for i := range rs {
		size += estimateSize(&rs[i])
	}
	if size > maxBatchBytes {
		return pylon.Errorf(pylon.ETOOLARGE, "records of about %d bytes do not fit in one message", size)
	}
	b.mu.Lock()
	var full *batch
	if b.cur != nil && (len(b.cur.rs)+len(rs) > pylon.MaxReadingsPerMessage || b.cur.size+size > maxBatchBytes) {
		full, b.cur = b.cur, nil
	}
	if b.cur == nil {
		nb := &batch{queued: make(chan struct{}), acked: make(chan struct{})}
		nb.timer = time.AfterFunc(b.c.opts.BatchWindow, func() { b.flush(nb) })
		b.cur = nb
	}
	cur := b.cur
	cur.rs = append(cur.rs, rs...)
	cur.size += size
	b.mu.Unlock()
	if full != nil {
		b.flush(full)
	}

	select {
	case <-cur.queued:
	case <-ctx.Done():
		return ctx.Err() // the records are still published with the batch
	}
	if cur.queueErr != nil || b.c.opts.NoWait {
		return cur.queueErr
	}
	select {
	case <-cur.acked:
		return cur.ackErr
	case <-ctx.Done():
		return ctx.Err()
	case <-b.c.done:
		return ErrClosed
	}
}

// flush seals and queues bt, once.
func (b *batcher) flush(bt *batch) {
	bt.once.Do(func() {
		b.mu.Lock()
		bt.timer.Stop()
		if b.cur == bt {
			b.cur = nil
		}
		b.mu.Unlock()
		_, ack, err := b.c.enqueue(bt.rs, !b.c.opts.NoWait)
		bt.queueErr = err
		close(bt.queued)
		if err != nil || ack == nil {
			bt.ackErr = err
			close(bt.acked)
			return
		}
		go func() {
			select {
			case bt.ackErr = <-ack:
			case <-b.c.done:
				bt.ackErr = ErrClosed
			}
			close(bt.acked)
		}()
	})
}

// flushPending queues the current batch now.
func (b *batcher) flushPending() {
	b.mu.Lock()
	cur := b.cur
	b.mu.Unlock()
	if cur != nil {
		b.flush(cur)
	}
}
