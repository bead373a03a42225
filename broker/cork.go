package broker

import (
	"crypto/tls"
	"net"
	"sync"
	"time"
)

const (
	// maxCorked is the most a corked connection holds before it writes
	// anyway.
	maxCorked = 64 << 10

	// keptCorked is the most buffer a connection keeps between corks: the
	// PUBACKs of a Receive Maximum of messages fit.
	keptCorked = 4 << 10
)

// corkConn is a device's TCP connection, under TLS, whose writes can be
// held back and sent as one. answerLoop corks it while it answers the
// messages one commit completed, so that their PUBACKs leave in one write
// (one system call, one TCP segment) rather than one each. What else is
// written meanwhile (mochi's own packets) is held with them, in order, and
// Close writes what is held before it closes, so that a DISCONNECT written
// just before is not lost.
type corkConn struct {
	net.Conn

	// mu guards corked, buf and err and is held during writes to Conn,
	// so that they come in order.
	mu     sync.Mutex
	corked bool
	buf    []byte

	// err is the first write error. TLS records the corked bytes as
	// written; once a write of them failed, the stream is torn, and no
	// later byte may follow them.
	err error
}

func newCorkConn(c net.Conn) *corkConn {
	return &corkConn{Conn: c}
}

// Write implements net.Conn: held while corked, else written at once.
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.corked && len(c.buf)+len(p) <= maxCorked {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		c.err = err
	}
	return n, err
}

// Close implements net.Conn: it writes what is held and closes, within
// kickWriteTimeout in all. A write stuck on a peer that does not read
// (whatever deadline mochi set, which it moves on every packet it reads)
// ends when the timer closes the connection under it.
func (c *corkConn) Close() error {
	timer := time.AfterFunc(kickWriteTimeout, func() { c.Conn.Close() })
	c.mu.Lock()
	c.corked = false
	_ = c.flushLocked()
	c.mu.Unlock()
	if !timer.Stop() {
		return nil // closed by the timer
	}
	return c.Conn.Close()
}

// cork holds writes back until uncork. Nil corks nothing.
func (c *corkConn) cork() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork writes what was held back, and later writes at once. An error
// means the connection is broken: what was held may be lost.
func (c *corkConn) uncork() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.flushLocked()
}

func (c *corkConn) flushLocked() error {
	if c.err != nil {
		return c.err
	}
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if err != nil {
		c.err = err
	}
	if cap(c.buf) > keptCorked {
		c.buf = nil // a rare large write: do not keep its memory per connection
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// corkOf returns the corkConn under a device connection, or nil.
func corkOf(c net.Conn) *corkConn {
	if tc, ok := c.(*tls.Conn); ok {
		cc, _ := tc.NetConn().(*corkConn)
		return cc
	}
	return nil
}

// corkListener wraps each connection it accepts in a corkConn.
type corkListener struct{ net.Listener }

// Accept implements net.Listener.
func (l corkListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newCorkConn(c), nil
}
