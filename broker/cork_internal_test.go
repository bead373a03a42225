package broker

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// recConn records each Write to it.
type recConn struct {
	net.Conn
	writes []string
	closed bool
	err    error
}

func (r *recConn) Write(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	r.writes = append(r.writes, string(p))
	return len(p), nil
}

func (r *recConn) Close() error                     { r.closed = true; return nil }
func (r *recConn) SetWriteDeadline(time.Time) error { return nil }

func TestCorkConn_HoldsAndWritesOnce(t *testing.T) {
	r := &recConn{}
	c := newCorkConn(r)
	c.Write([]byte("a"))
	c.cork()
	c.Write([]byte("b"))
	c.Write([]byte("c"))
	if len(r.writes) != 1 {
		t.Fatalf("corked writes reached the connection: %q", r.writes)
	}
	if err := c.uncork(); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("d"))
	if got, want := strings.Join(r.writes, "|"), "a|bc|d"; got != want {
		t.Fatalf("got writes %q, want %q", got, want)
	}
	if err := c.uncork(); err != nil || len(r.writes) != 3 {
		t.Fatalf("an empty uncork wrote or failed: %q, %v", r.writes, err)
	}
}

func TestCorkConn_Overflow(t *testing.T) {
	r := &recConn{}
	c := newCorkConn(r)
	c.cork()
	big := bytes.Repeat([]byte("x"), maxCorked-1)
	c.Write(big)
	c.Write([]byte("yy")) // would go over maxCorked: what is held, then this
	if len(r.writes) != 2 || len(r.writes[0]) != maxCorked-1 || r.writes[1] != "yy" {
		t.Fatalf("got %d writes, want the held bytes then the new ones", len(r.writes))
	}
	if c.buf != nil {
		t.Fatalf("kept a buffer of %d bytes after a large write", cap(c.buf))
	}
}

// TestCorkConn_CloseWritesHeld checks that what was written just before
// Close, such as a DISCONNECT, leaves.
func TestCorkConn_CloseWritesHeld(t *testing.T) {
	r := &recConn{}
	c := newCorkConn(r)
	c.cork()
	c.Write([]byte("disconnect"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !r.closed || strings.Join(r.writes, "|") != "disconnect" {
		t.Fatalf("closed %v, writes %q; want the held bytes written, then closed", r.closed, r.writes)
	}
}

// TestCorkConn_CloseEndsBlockedWrite checks that a peer that does not read
// cannot keep a connection from closing.
func TestCorkConn_CloseEndsBlockedWrite(t *testing.T) {
	a, b := net.Pipe() // writes block until read; b is never read
	defer b.Close()
	c := newCorkConn(a)
	done := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("stuck"))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close is stuck behind a blocked write")
	}
	if err := <-done; err == nil {
		t.Fatal("the blocked write succeeded, want an error after Close")
	}
}

// TestCorkConn_CloseBoundedDespiteDeadlines checks that Close ends within
// its budget even while mochi keeps moving the connection's deadline on
// (it does on every packet it reads) and the peer does not read.
func TestCorkConn_CloseBoundedDespiteDeadlines(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newCorkConn(a)
	c.cork()
	c.Write([]byte("held, never read"))
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = a.SetDeadline(time.Now().Add(time.Hour))
				time.Sleep(time.Millisecond)
			}
		}
	}()
	start := time.Now()
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close is stuck flushing to a peer that does not read")
	}
	if d := time.Since(start); d > 5*kickWriteTimeout {
		t.Errorf("Close took %v, want about kickWriteTimeout (%v)", d, kickWriteTimeout)
	}
}

// TestCorkConn_TornStaysTorn checks that uncork reports a failed write of
// the held bytes, and that nothing more is written after them.
func TestCorkConn_TornStaysTorn(t *testing.T) {
	r := &recConn{}
	c := newCorkConn(r)
	c.cork()
	c.Write([]byte("a"))
	r.err = errors.New("broken pipe")
	if err := c.uncork(); err == nil {
		t.Fatal("uncork on a broken connection: no error")
	}
	r.err = nil // the socket would take bytes again
	if _, err := c.Write([]byte("close_notify")); err == nil || len(r.writes) != 0 {
		t.Fatalf("a write after a torn one: err %v, writes %q; want the first error and nothing written", err, r.writes)
	}
}
