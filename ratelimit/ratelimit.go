// Package ratelimit limits failed attempts per client: the HTTPS API
// (failed bearer-token authentications) and the dashboard (failed sign-ins)
// both count failures per client address and refuse a client that has used
// up its allowance until its window has passed.
package ratelimit

import (
	"container/list"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Failures counts failures per key in a fixed window that starts at the
// first failure. It remembers at most capacity keys, forgetting the one
// whose last failure is oldest, so its memory is bounded whatever clients
// do. It is safe for concurrent use.
type Failures struct {
	max      int
	window   time.Duration
	capacity int

	mu    sync.Mutex
	byKey map[string]*list.Element // of *entry
	order *list.List               // front: least recently failed
}

type entry struct {
	key   string
	start time.Time
	n     int
}

// NewFailures returns a limiter that blocks a key after max failures
// within window, remembering at most capacity keys.
func NewFailures(max int, window time.Duration, capacity int) *Failures {
	return &Failures{max: max, window: window, capacity: max1(capacity), byKey: make(map[string]*list.Element), order: list.New()}
}

func max1(n int) int {
	if n < 1 {
		return 1
	}
	return n
}

// Blocked reports whether key has used up its failures, and for how long
// it stays blocked.
func (l *Failures) Blocked(key string, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	el, ok := l.byKey[key]
	if !ok {
		return 0, false
	}
	e := el.Value.(*entry)
	end := e.start.Add(l.window)
	if !now.Before(end) {
		l.order.Remove(el)
		delete(l.byKey, key)
		return 0, false
	}
	if e.n >= l.max {
		return end.Sub(now), true
	}
	return 0, false
}

// Fail counts one failure of key.
func (l *Failures) Fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.byKey[key]; ok {
		e := el.Value.(*entry)
		if !now.Before(e.start.Add(l.window)) {
			e.start, e.n = now, 0
		}
		e.n++
		l.order.MoveToBack(el)
		return
	}
	for l.order.Len() >= l.capacity {
		oldest := l.order.Front()
		l.order.Remove(oldest)
		delete(l.byKey, oldest.Value.(*entry).key)
	}
	l.byKey[key] = l.order.PushBack(&entry{key: key, start: now, n: 1})
}

// ClientAddr returns the client's IP address and the key under which its
// failures are counted: the address itself, or its /64 network for IPv6
// (one host usually holds a whole /64). Forwarding headers are not
// trusted.
func ClientAddr(r *http.Request) (addr, key string) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if len(host) > 64 {
		host = host[:64]
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host, host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return ip.String(), p.String()
	}
	return ip.String(), ip.String()
}
