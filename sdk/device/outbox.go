package device

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Outbox files: "<seq, 20 digits>.msg" holding outboxMagic, the SHA-256
// fingerprint of the public key the message was sealed with, then the
// sealed message (the exact MQTT payload).
const (
	outboxMagic  = "POB1"
	outboxHeader = len(outboxMagic) + 32
	outboxExt    = ".msg"
	maxOutboxMsg = 1 << 20 // bound when reading a file back
)

// outbox is the durable queue of sealed messages: one file per message,
// written (and synced, with the directory) before the message is sent and
// removed only once the platform acknowledged it. Removal is not synced:
// after a crash a removed file may come back and be sent again, which the
// platform's (device, seq) deduplication absorbs.
type outbox struct {
	dir, rejDir string
	maxMsgs     int
	maxBytes    int64
	syncer      *dirSyncer

	mu       sync.Mutex
	items    map[uint64]*boxItem
	bytes    int64
	rejected []uint64 // sorted seqs in rejDir
}

type boxItem struct {
	size    int64
	written bool // false while put is writing it
}

// openOutbox opens (creating) dir and indexes the messages in it. Temporary
// files of interrupted writes are removed.
func openOutbox(dir string, maxMsgs int, maxBytes int64) (*outbox, error) {
	o := &outbox{dir: dir, rejDir: filepath.Join(dir, dirRejected), maxMsgs: maxMsgs, maxBytes: maxBytes, items: map[uint64]*boxItem{}}
	if err := mkdirPrivate(o.rejDir); err != nil {
		return nil, err
	}
	o.syncer = newDirSyncer(dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") {
			os.Remove(filepath.Join(dir, name))
			continue
		}
		seq, ok := parseBoxName(name)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		o.items[seq] = &boxItem{size: fi.Size(), written: true}
		o.bytes += fi.Size()
	}
	rej, err := os.ReadDir(o.rejDir)
	if err != nil {
		return nil, fmt.Errorf("read rejected: %w", err)
	}
	for _, e := range rej {
		if seq, ok := parseBoxName(e.Name()); ok {
			o.rejected = append(o.rejected, seq)
		}
	}
	slices.Sort(o.rejected)
	return o, nil
}

func boxName(seq uint64) string { return fmt.Sprintf("%020d%s", seq, outboxExt) }

func parseBoxName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, outboxExt)
	if !ok || len(s) != 20 {
		return 0, false
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	return seq, err == nil && seq > 0
}

// full reports whether a message of n bytes would not fit.
func (o *outbox) full(n int) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.items) >= o.maxMsgs || o.bytes+int64(n+outboxHeader) > o.maxBytes
}

// put durably stores msg under seq. It returns ErrQueueFull, without
// writing, if the outbox is full.
func (o *outbox) put(seq uint64, fp [32]byte, msg []byte) error {
	size := int64(outboxHeader + len(msg))
	o.mu.Lock()
	if len(o.items) >= o.maxMsgs || o.bytes+size > o.maxBytes {
		o.mu.Unlock()
		return ErrQueueFull
	}
	if _, dup := o.items[seq]; dup {
		o.mu.Unlock()
		return fmt.Errorf("outbox: sequence number %d already queued", seq)
	}
	it := &boxItem{size: size}
	o.items[seq] = it
	o.bytes += size
	o.mu.Unlock()

	err := o.write(seq, fp, msg)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		delete(o.items, seq)
		o.bytes -= size
		return err
	}
	it.written = true
	return nil
}

func (o *outbox) write(seq uint64, fp [32]byte, msg []byte) error {
	buf := make([]byte, 0, outboxHeader+len(msg))
	buf = append(append(append(buf, outboxMagic...), fp[:]...), msg...)
	if err := writeSynced(o.dir, boxName(seq), buf, secretPerm); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	if err := o.syncer.sync(); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// replace rewrites a queued message (re-sealed with a new key).
func (o *outbox) replace(seq uint64, fp [32]byte, msg []byte) error {
	if err := o.write(seq, fp, msg); err != nil {
		return err
	}
	size := int64(outboxHeader + len(msg))
	o.mu.Lock()
	if it, ok := o.items[seq]; ok {
		o.bytes += size - it.size
		it.size = size
	}
	o.mu.Unlock()
	return nil
}

// errBadEntry marks an outbox file that cannot be a message.
var errBadEntry = errors.New("outbox: corrupt entry")

// load reads a queued message and the fingerprint of its key.
func (o *outbox) load(seq uint64) (fp [32]byte, msg []byte, err error) {
	f, err := os.Open(filepath.Join(o.dir, boxName(seq)))
	if err != nil {
		return fp, nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(maxOutboxMsg+outboxHeader+1)))
	if err != nil {
		return fp, nil, err
	}
	if len(b) <= outboxHeader || len(b) > maxOutboxMsg+outboxHeader || !bytes.HasPrefix(b, []byte(outboxMagic)) {
		return fp, nil, errBadEntry
	}
	copy(fp[:], b[len(outboxMagic):outboxHeader])
	return fp, b[outboxHeader:], nil
}

// has reports whether seq is queued (and written).
func (o *outbox) has(seq uint64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	it, ok := o.items[seq]
	return ok && it.written
}

// remove deletes an acknowledged message. It reports whether seq was
// queued.
func (o *outbox) remove(seq uint64) bool {
	o.mu.Lock()
	it, ok := o.items[seq]
	if ok {
		delete(o.items, seq)
		o.bytes -= it.size
	}
	o.mu.Unlock()
	if ok {
		os.Remove(filepath.Join(o.dir, boxName(seq)))
	}
	return ok
}

// reject moves a refused message to rejected/, dropping the oldest beyond
// maxRejected there.
func (o *outbox) reject(seq uint64) error {
	o.mu.Lock()
	it, ok := o.items[seq]
	if ok {
		delete(o.items, seq)
		o.bytes -= it.size
	}
	var drop []uint64
	if ok {
		i, found := slices.BinarySearch(o.rejected, seq)
		if !found {
			o.rejected = slices.Insert(o.rejected, i, seq)
		}
		if n := len(o.rejected) - maxRejected; n > 0 {
			drop = slices.Clone(o.rejected[:n])
			o.rejected = slices.Delete(o.rejected, 0, n)
		}
	}
	o.mu.Unlock()
	if !ok {
		return nil
	}
	for _, s := range drop {
		os.Remove(filepath.Join(o.rejDir, boxName(s)))
	}
	if err := os.Rename(filepath.Join(o.dir, boxName(seq)), filepath.Join(o.rejDir, boxName(seq))); err != nil {
		return fmt.Errorf("outbox: move refused message: %w", err)
	}
	return nil
}

// seqs returns the written seqs in order.
func (o *outbox) seqs() []uint64 {
	o.mu.Lock()
	s := make([]uint64, 0, len(o.items))
	for seq, it := range o.items {
		if it.written {
			s = append(s, seq)
		}
	}
	o.mu.Unlock()
	slices.Sort(s)
	return s
}

// maxSeq returns the highest queued or rejected seq, 0 if none.
func (o *outbox) maxSeq() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	var m uint64
	for seq := range o.items {
		m = max(m, seq)
	}
	if n := len(o.rejected); n > 0 {
		m = max(m, o.rejected[n-1])
	}
	return m
}

// size returns how many messages and bytes are queued.
func (o *outbox) size() (int, int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.items), o.bytes
}

// seqBlock is how many sequence numbers are reserved at a time.
const seqBlock = 1000

// seqStore hands out sequence numbers that are never reused, across
// crashes too: before it hands out a number above the persisted high-water
// mark, it raises the mark by seqBlock and syncs it. A crash skips at most
// a block; gaps are allowed by the protocol.
type seqStore struct {
	dir string

	mu       sync.Mutex
	next     uint64 // the next number to hand out
	reserved uint64 // persisted: numbers up to this may have been used
}

// openSeq reads the high-water mark in dir/seq; floor is the highest seq
// known to be used (in the outbox). A seq file that cannot be read is an
// error, not a restart from 1, which would reuse numbers.
func openSeq(dir string, floor uint64) (*seqStore, error) {
	s := &seqStore{dir: dir}
	b, err := readSmall(filepath.Join(dir, fileSeq))
	switch {
	case isNotExist(err):
	case err != nil:
		return nil, fmt.Errorf("read sequence file: %w", err)
	default:
		n, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if perr != nil {
			return nil, fmt.Errorf("sequence file %s is corrupt; refusing to reuse sequence numbers", filepath.Join(dir, fileSeq))
		}
		s.reserved = n
	}
	s.reserved = max(s.reserved, floor)
	s.next = s.reserved + 1
	return s, nil
}

// take returns the next sequence number.
func (s *seqStore) take() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next > s.reserved {
		mark := s.next + seqBlock - 1
		if err := writeAtomic(s.dir, fileSeq, []byte(strconv.FormatUint(mark, 10)+"\n"), secretPerm); err != nil {
			return 0, fmt.Errorf("reserve sequence numbers: %w", err)
		}
		s.reserved = mark
	}
	n := s.next
	s.next++
	return n, nil
}

// last returns the last number handed out (0 if none since opening).
func (s *seqStore) last() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next - 1
}
