package httpapi

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/ratelimit"
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
	_, key := ratelimit.ClientAddr(r)
	wait, blocked := s.limiter.Blocked(key, s.now())
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
	addr, key := ratelimit.ClientAddr(r)
	s.limiter.Fail(key, s.now())
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
