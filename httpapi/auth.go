package httpapi

import (
	"container/list"
	"context"
	"encoding/json"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pylonhq/pylon"
)

// Limits on failed authentication, per client address.
const (
	maxAuthFailures   = 10          // failures allowed per window
	authFailureWindow = time.Minute // from the first failure
	maxTrackedClients = 10_000      // addresses remembered; the least recent is forgotten first
)

// WWW-Authenticate challenges.
const (
	bearerChallenge = `Bearer realm="pylon"`
	estChallenge    = `Basic realm="pylon-est"`
)

// authorize wraps h so that it runs only for a live API token whose role
// allows perm, with the token's principal in the request context.
//
// A client address with too many recent failures gets 429 before its
// credentials are even looked at. A request without credentials gets 401;
// one with wrong credentials gets 401 too, and also counts as a failure
// and is audited.
func (s *Server) authorize(perm pylon.Permission, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.rateLimited(w, r) {
			return
		}
		secret, ok := bearerToken(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", bearerChallenge)
			Error(w, r, pylon.Errorf(pylon.EUNAUTHORIZED, "missing API token (Authorization: Bearer ...)"))
			return
		}
		id, hash, err := pylon.ParseSecret(pylon.APITokenPrefix, secret)
		var tok *pylon.APIToken
		if err == nil {
			tok, err = s.APITokens.AuthenticateAPIToken(r.Context(), id, hash)
		}
		if err != nil {
			if pylon.ErrorCode(err) == pylon.EUNAUTHORIZED {
				s.authFailed(w, r, bearerChallenge+`, error="invalid_token"`)
				return
			}
			Error(w, r, err)
			return
		}
		if !tok.Role.Allows(perm) {
			Error(w, r, pylon.Errorf(pylon.EFORBIDDEN, "role %q does not have the %s permission", tok.Role, perm))
			return
		}
		p := pylon.Principal{Kind: pylon.PrincipalAPIToken, ID: tok.ID, Role: tok.Role}
		h(w, r.WithContext(pylon.NewContextWithPrincipal(r.Context(), p)))
	})
}

// bearerToken returns the credentials of an "Authorization: Bearer" header.
func bearerToken(r *http.Request) (string, bool) {
	scheme, rest, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token := strings.TrimSpace(rest)
	return token, token != ""
}

// rateLimited answers 429 and returns true if the client has failed to
// authenticate too often recently.
func (s *Server) rateLimited(w http.ResponseWriter, r *http.Request) bool {
	_, key := clientAddr(r)
	wait, blocked := s.limiter.blocked(key, s.now())
	if !blocked {
		return false
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	Error(w, r, pylon.Errorf(pylon.ERATELIMITED, "too many failed authentication attempts; retry later"))
	return true
}

// authFailed counts a failed authentication against the client, audits it
// and answers 401 with the given challenge.
func (s *Server) authFailed(w http.ResponseWriter, r *http.Request, challenge string) {
	addr, key := clientAddr(r)
	s.limiter.fail(key, s.now())
	details, _ := json.Marshal(map[string]string{"path": truncate(r.URL.Path, 256)})
	rec := &pylon.AuditRecord{
		Time:    s.now(),
		Actor:   "anonymous",
		Action:  pylon.ActionAuthFailed,
		Object:  "ip:" + addr,
		Details: details,
	}
	// Not cancelled by the client hanging up: every failure is recorded.
	if err := s.Audit.AppendAudit(context.WithoutCancel(r.Context()), rec); err != nil {
		s.log.Error("audit failed authentication", "remote", addr, "err", err)
	}
	s.log.Info("authentication failed", "remote", addr, "path", r.URL.Path)
	w.Header().Set("WWW-Authenticate", challenge)
	Error(w, r, pylon.Errorf(pylon.EUNAUTHORIZED, "invalid credentials"))
}

// clientAddr returns the client's IP address and the key under which its
// failures are counted: the address itself, or its /64 network for IPv6,
// where one client commonly holds a whole /64. Forwarding headers are not
// trusted.
func clientAddr(r *http.Request) (addr, key string) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return truncate(host, 64), truncate(host, 64)
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return ip.String(), p.String()
	}
	return ip.String(), ip.String()
}

// failureLimiter counts failures per key in a fixed window that starts at
// the first failure. It remembers at most capacity keys, forgetting the one
// whose last failure is oldest.
type failureLimiter struct {
	max      int
	window   time.Duration
	capacity int

	mu    sync.Mutex
	byKey map[string]*list.Element // of *failureEntry
	order *list.List               // front: least recently failed
}

type failureEntry struct {
	key   string
	start time.Time
	n     int
}

func newFailureLimiter(max int, window time.Duration, capacity int) *failureLimiter {
	return &failureLimiter{max: max, window: window, capacity: capacity, byKey: make(map[string]*list.Element), order: list.New()}
}

// blocked reports whether key has used up its failures, and for how long it
// stays blocked.
func (l *failureLimiter) blocked(key string, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	el, ok := l.byKey[key]
	if !ok {
		return 0, false
	}
	e := el.Value.(*failureEntry)
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

// fail counts one failure of key.
func (l *failureLimiter) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.byKey[key]; ok {
		e := el.Value.(*failureEntry)
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
		delete(l.byKey, oldest.Value.(*failureEntry).key)
	}
	l.byKey[key] = l.order.PushBack(&failureEntry{key: key, start: now, n: 1})
}
