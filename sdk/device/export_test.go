package device

import (
	"time"

	"github.com/pylonhq/pylon/senml"
)

// Internals for the external tests.

// EncodeForTest resolves recs as Publish does at now and encodes the pack.
func EncodeForTest(recs []senml.Record, now time.Time, contentType int) ([]byte, error) {
	rs, err := resolve(recs, now)
	if err != nil {
		return nil, err
	}
	return encodePack(rs, contentType)
}

// HealthRecordsForTest returns the heartbeat records.
func HealthRecordsForTest(uptime time.Duration, firmware string, h Health) []senml.Record {
	return healthRecords(uptime, firmware, h)
}

// SeqStore is the sequence-number store.
type SeqStore = seqStore

// OpenSeqForTest opens the sequence store of dir.
func OpenSeqForTest(dir string, floor uint64) (*SeqStore, error) { return openSeq(dir, floor) }

// Take returns the next sequence number.
func (s *seqStore) Take() (uint64, error) { return s.take() }

// Outbox is the durable queue.
type Outbox = outbox

// OpenOutboxForTest opens an outbox directory.
func OpenOutboxForTest(dir string, maxMsgs int, maxBytes int64) (*Outbox, error) {
	return openOutbox(dir, maxMsgs, maxBytes)
}

func (o *outbox) Put(seq uint64, msg []byte) error { return o.put(seq, [32]byte{1}, msg) }
func (o *outbox) Load(seq uint64) ([]byte, error)  { _, m, err := o.load(seq); return m, err }
func (o *outbox) Remove(seq uint64) bool           { return o.remove(seq) }
func (o *outbox) Reject(seq uint64) error          { return o.reject(seq) }
func (o *outbox) Seqs() []uint64                   { return o.seqs() }
func (o *outbox) Size() (int, int64)               { return o.size() }
func (o *outbox) MaxSeq() uint64                   { return o.maxSeq() }
