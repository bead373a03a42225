package device_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pylonhq/pylon/sdk/device"
)

func TestSeqStore_NeverReusesANumber(t *testing.T) {
	dir := t.TempDir()
	s, err := device.OpenSeqForTest(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	for want := uint64(1); want <= 3; want++ {
		if got, err := s.Take(); err != nil || got != want {
			t.Fatalf("take: got %d %v, want %d", got, err, want)
		}
	}
	// A "crash" now: the reserved block is skipped, nothing reused.
	s2, err := device.OpenSeqForTest(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s2.Take()
	if err != nil || got <= 3 || got > 1001 {
		t.Fatalf("after restart: got %d %v, want 4..1001", got, err)
	}
	// The reservation is raised before a number above it is handed out.
	for i := 0; i < 1500; i++ {
		if _, err := s2.Take(); err != nil {
			t.Fatal(err)
		}
	}
	last, _ := s2.Take()
	s3, _ := device.OpenSeqForTest(dir, 0)
	if next, _ := s3.Take(); next <= last {
		t.Fatalf("after restart: got %d, want above %d", next, last)
	}
	// The outbox's highest seq is a floor (a lost seq file).
	os.Remove(filepath.Join(dir, "seq"))
	s4, _ := device.OpenSeqForTest(dir, 5000)
	if next, _ := s4.Take(); next != 5001 {
		t.Fatalf("floor 5000: got %d, want 5001", next)
	}
	// A corrupt file stops rather than restarting at 1.
	os.WriteFile(filepath.Join(dir, "seq"), []byte("garbage"), 0o600)
	if _, err := device.OpenSeqForTest(dir, 0); err == nil {
		t.Fatal("corrupt seq file: got no error")
	}
}

func TestOutbox_DurableBoundedOrdered(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	o, err := device.OpenOutboxForTest(dir, 3, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{7, 3, 5} {
		if err := o.Put(seq, []byte{byte(seq)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Put(9, []byte("x")); !errors.Is(err, device.ErrQueueFull) {
		t.Fatalf("fourth message: got %v, want ErrQueueFull", err)
	}
	if got := o.Seqs(); !slices.Equal(got, []uint64{3, 5, 7}) {
		t.Fatalf("seqs: got %v, want [3 5 7]", got)
	}
	if m, err := o.Load(5); err != nil || len(m) != 1 || m[0] != 5 {
		t.Fatalf("load 5: got %v %v", m, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "00000000000000000005.msg"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("message file: got %v %v, want mode 600", fi, err)
	}

	// A leftover temporary file of a crashed write is cleaned up; the rest
	// is found again.
	os.WriteFile(filepath.Join(dir, ".tmp-00000000000000000011.msg-123"), []byte("partial"), 0o600)
	o2, err := device.OpenOutboxForTest(dir, 3, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got := o2.Seqs(); !slices.Equal(got, []uint64{3, 5, 7}) {
		t.Fatalf("reopened seqs: got %v, want [3 5 7]", got)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-00000000000000000011.msg-123")); !os.IsNotExist(err) {
		t.Fatal("temporary file left behind")
	}
	if !o2.Remove(3) || o2.Remove(3) {
		t.Fatal("remove: want true once, then false")
	}
	if err := o2.Reject(5); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "rejected", "00000000000000000005.msg")); err != nil {
		t.Fatalf("rejected message: %v", err)
	}
	if n, _ := o2.Size(); n != 1 {
		t.Fatalf("size: got %d, want 1", n)
	}
	if got := o2.MaxSeq(); got != 7 {
		t.Fatalf("max seq: got %d, want 7", got)
	}
	// Full by bytes.
	o3, _ := device.OpenOutboxForTest(filepath.Join(t.TempDir(), "o"), 100, 100)
	if err := o3.Put(1, make([]byte, 80)); !errors.Is(err, device.ErrQueueFull) {
		t.Fatalf("over the byte bound: got %v, want ErrQueueFull", err)
	}
}
