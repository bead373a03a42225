package device

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// File names inside a device directory.
const (
	fileKey       = "device.key" // PKCS#8 PEM, 0600
	fileCert      = "device.crt" // PEM
	fileCA        = "ca.crt"     // PEM, the only trusted root
	fileID        = "device.id"  // the device id; written last by Enroll
	fileServer    = "server.url" // the HTTPS URL enrolled with
	fileMQTTAddr  = "mqtt.addr"  // the last broker address learnt from the server
	fileSeq       = "seq"        // reserved sequence-number high-water mark
	dirOutbox     = "outbox"     // sealed messages not yet acknowledged
	dirRejected   = "rejected"   // under outbox: messages the platform refused
	dirKeys       = "keys"       // previous public keys, to re-seal queued messages
	newSuffix     = ".new"       // renewal: key and certificate before they replace the current ones
	maxSmallFile  = 64 << 10     // bound on identity files read
	dirPerm       = 0o700
	secretPerm    = 0o600
	publicPerm    = 0o644
	maxRejected   = 1000 // refused messages kept in outbox/rejected
	maxKeyHistory = 8    // previous public keys kept in keys/
)

// readSmall reads a file of at most maxSmallFile bytes.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSmallFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSmallFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxSmallFile)
	}
	return b, nil
}

// writeAtomic writes data to dir/name so that a crash leaves either the old
// or the new content: a temporary file in the same directory is written,
// synced and renamed over the target, then the directory is synced.
func writeAtomic(dir, name string, data []byte, perm os.FileMode) error {
	if err := writeSynced(dir, name, data, perm); err != nil {
		return err
	}
	return syncDir(dir)
}

// writeSynced is writeAtomic without the final directory sync, for callers
// that sync the directory once for several files.
func writeSynced(dir, name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(dir, ".tmp-"+name+"-*")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("rename %s: %w", name, err)
	}
	ok = true
	return nil
}

// syncDir makes the directory's entries (creations, renames) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// mkdirPrivate creates dir (and parents) and makes it 0700.
func mkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	if err := os.Chmod(dir, dirPerm); err != nil {
		return fmt.Errorf("chmod directory: %w", err)
	}
	return nil
}

// dirSyncer syncs one directory for many concurrent writers with a group
// commit: a writer that renamed a file into the directory waits for a sync
// that started after its rename, and one sync serves every writer waiting
// when it starts.
type dirSyncer struct {
	dir string

	mu        sync.Mutex
	cond      *sync.Cond
	requested uint64 // generation of the latest request
	done      uint64 // generation covered by the last finished sync
	running   bool
	err       error // of the last sync
}

func newDirSyncer(dir string) *dirSyncer {
	s := &dirSyncer{dir: dir}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// sync returns once a directory sync that started after the call has
// finished.
func (s *dirSyncer) sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requested++
	mine := s.requested
	for s.done < mine {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		target := s.requested
		s.mu.Unlock()
		err := syncDir(s.dir)
		s.mu.Lock()
		s.running = false
		s.done, s.err = target, err
		s.cond.Broadcast()
	}
	return s.err
}

// isNotExist reports whether err says a file does not exist.
func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
