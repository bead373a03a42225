package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/ratelimit"
)

// Sessions.
const (
	// SessionCookie is the name of the session cookie.
	SessionCookie = "pylon_session"

	// SessionTTL is how long a session lasts from sign-in, used or not.
	// It bounds idle sessions too.
	SessionTTL = 12 * time.Hour

	// MaxSessions is how many sessions are kept at once; signing in beyond
	// it ends the oldest session.
	MaxSessions = 10_000

	// TokenRecheckInterval is how often the API token behind a session is
	// checked again, at most; a revoked token ends its sessions.
	TokenRecheckInterval = time.Minute
)

// Sign-in limits, per client address.
const (
	loginCookie        = "pylon_login" // binds the sign-in form to the browser (login CSRF)
	loginCookieTTL     = time.Hour
	maxLoginFailures   = 10          // failures allowed per window
	loginFailureWindow = time.Minute // from the first failure
	maxTrackedClients  = 10_000      // addresses remembered; the least recent is forgotten first
	maxTokenLen        = 256         // an API token is 66 bytes
)

// session is a signed-in browser. Sessions are kept in memory only.
type session struct {
	key       [32]byte // SHA-256 of the cookie value: the map key
	id        string   // public part of the cookie value, for logs
	tokenID   string
	tokenHash []byte // SHA-256 of the API token, to check it again
	role      pylon.Role
	csrf      string
	created   time.Time
	checked   time.Time // when the API token was last authenticated
}

// sessionStore holds the sessions, at most max of them.
type sessionStore struct {
	max int

	mu sync.Mutex
	m  map[[32]byte]*session
}

func newSessionStore(max int) *sessionStore {
	return &sessionStore{max: max, m: make(map[[32]byte]*session)}
}

// create stores a new session for the authenticated token and returns the
// cookie value. A full store first forgets expired sessions, then the
// oldest.
func (st *sessionStore) create(tok *pylon.APIToken, tokenHash []byte, now time.Time) (string, *session) {
	secret, id, hash := pylon.NewSecret(pylon.SessionPrefix)
	sess := &session{
		key: [32]byte(hash), id: id, tokenID: tok.ID, tokenHash: tokenHash, role: tok.Role,
		csrf: randomToken(), created: now, checked: now,
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.m) >= st.max {
		var oldest *session
		for k, s := range st.m {
			if expired(s, now) {
				delete(st.m, k)
			} else if oldest == nil || s.created.Before(oldest.created) {
				oldest = s
			}
		}
		if len(st.m) >= st.max && oldest != nil {
			delete(st.m, oldest.key)
		}
	}
	st.m[sess.key] = sess
	c := *sess
	return secret, &c
}

func expired(s *session, now time.Time) bool {
	return !now.Before(s.created.Add(SessionTTL))
}

// get returns a copy of the live session with the given cookie value.
func (st *sessionStore) get(cookie string, now time.Time) (*session, bool) {
	_, hash, err := pylon.ParseSecret(pylon.SessionPrefix, cookie)
	if err != nil {
		return nil, false
	}
	key := [32]byte(hash)
	st.mu.Lock()
	defer st.mu.Unlock()
	s, ok := st.m[key]
	if !ok {
		return nil, false
	}
	if expired(s, now) {
		delete(st.m, key)
		return nil, false
	}
	c := *s
	return &c, true
}

// checked records that the session's token was authenticated at now.
func (st *sessionStore) checked(key [32]byte, role pylon.Role, now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if s, ok := st.m[key]; ok {
		s.checked, s.role = now, role
	}
}

// delete ends one session.
func (st *sessionStore) delete(key [32]byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.m, key)
}

// deleteToken ends every session of an API token and returns how many.
func (st *sessionStore) deleteToken(tokenID string) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	n := 0
	for k, s := range st.m {
		if s.tokenID == tokenID {
			delete(st.m, k)
			n++
		}
	}
	return n
}

// randomToken returns 256 random bits, base64url-encoded.
func randomToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// user is the signed-in person behind a request.
type user struct {
	Actor   string // audit actor, "token:ID"
	TokenID string
	Role    pylon.Role
	CSRF    string
	key     [32]byte
}

type userContextKey struct{}

func userFromContext(ctx context.Context) *user {
	u, _ := ctx.Value(userContextKey{}).(*user)
	return u
}

// authenticate returns the user of the request's session, re-checking its
// API token when TokenRecheckInterval has passed. It returns nil without a
// live session. An error means the token could not be checked.
func (s *Server) authenticate(r *http.Request) (*user, error) {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return nil, nil
	}
	now := s.now()
	sess, ok := s.sessions.get(c.Value, now)
	if !ok {
		return nil, nil
	}
	if now.Sub(sess.checked) >= TokenRecheckInterval || now.Before(sess.checked) {
		tok, err := s.APITokens.AuthenticateAPIToken(r.Context(), sess.tokenID, sess.tokenHash)
		if pylon.ErrorCode(err) == pylon.EUNAUTHORIZED {
			n := s.sessions.deleteToken(sess.tokenID)
			s.log.Info("dashboard sessions ended: api token no longer valid", "token_id", sess.tokenID, "sessions", n)
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		sess.role = tok.Role
		s.sessions.checked(sess.key, tok.Role, now)
	}
	return &user{
		Actor:   pylon.Principal{Kind: pylon.PrincipalAPIToken, ID: sess.tokenID}.Actor(),
		TokenID: sess.tokenID, Role: sess.role, CSRF: sess.csrf, key: sess.key,
	}, nil
}

// withUser returns r with u and its principal in the context.
func withUser(r *http.Request, u *user) *http.Request {
	ctx := context.WithValue(r.Context(), userContextKey{}, u)
	ctx = pylon.NewContextWithPrincipal(ctx, pylon.Principal{Kind: pylon.PrincipalAPIToken, ID: u.TokenID, Role: u.Role})
	return r.WithContext(ctx)
}

// page wraps a GET handler that needs a signed-in user with read access.
// Without a session the browser goes to the sign-in page.
func (s *Server) page(h func(w http.ResponseWriter, r *http.Request, u *user)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := s.authenticate(r)
		if err != nil {
			s.fail(w, r, err)
			return
		} else if u == nil {
			redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()))
			return
		}
		r = withUser(r, u)
		if !u.Role.Allows(pylon.PermRead) {
			s.renderError(w, r, http.StatusForbidden, "Your API token's role may not use the dashboard.")
			return
		}
		h(w, r, u)
	})
}

// action wraps a POST handler that changes state: it needs a signed-in
// user whose role allows perm, the session's CSRF token and, when the
// browser sends one, an Origin of this host. The form is parsed.
func (s *Server) action(perm pylon.Permission, h func(w http.ResponseWriter, r *http.Request, u *user)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !sameOrigin(r) {
			s.renderError(w, r, http.StatusForbidden, "Cross-origin request refused.")
			return
		}
		u, err := s.authenticate(r)
		if err != nil {
			s.fail(w, r, err)
			return
		} else if u == nil {
			s.renderError(w, r, http.StatusForbidden, "Your session has ended. Sign in again.")
			return
		}
		r = withUser(r, u)
		if err := parseForm(w, r); err != nil {
			s.fail(w, r, err)
			return
		}
		got := r.Header.Get("X-CSRF-Token")
		if got == "" {
			got = r.PostForm.Get("csrf")
		}
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(u.CSRF)) != 1 {
			s.renderError(w, r, http.StatusForbidden, "Missing or wrong CSRF token. Reload the page and try again.")
			return
		}
		if !u.Role.Allows(perm) {
			s.renderError(w, r, http.StatusForbidden, "Your API token's role ("+string(u.Role)+") may not do this.")
			return
		}
		h(w, r, u)
	})
}

// loginData is the data of the sign-in page.
type loginData struct {
	Next  string
	Token string // the form's CSRF value, also in loginCookie
}

// handleLoginForm shows the sign-in form, and binds it to the browser with
// a cookie whose value the form must send back.
func (s *Server) handleLoginForm(w http.ResponseWriter, r *http.Request) {
	next := localPath(r.URL.Query().Get("next"))
	if u, err := s.authenticate(r); err == nil && u != nil {
		redirect(w, r, next)
		return
	}
	s.showLogin(w, r, http.StatusOK, next, "")
}

func (s *Server) showLogin(w http.ResponseWriter, r *http.Request, status int, next, msg string) {
	token := randomToken()
	http.SetCookie(w, &http.Cookie{
		Name: loginCookie, Value: token, Path: "/login", MaxAge: int(loginCookieTTL.Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
	v := s.newView(nil, "login", "Sign in", loginData{Next: next, Token: token})
	v.Error = msg
	s.render(w, r, status, "login", v)
}

// handleLogin signs in with an API token.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	addr, key := ratelimit.ClientAddr(r)
	now := s.now()
	if wait, blocked := s.limiter.Blocked(key, now); blocked {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		s.renderError(w, r, http.StatusTooManyRequests, "Too many failed sign-ins from your address. Try again in a minute.")
		return
	}
	if !sameOrigin(r) {
		s.renderError(w, r, http.StatusForbidden, "Cross-origin request refused.")
		return
	}
	if err := parseForm(w, r); err != nil {
		s.fail(w, r, err)
		return
	}
	next := localPath(r.PostForm.Get("next"))
	c, err := r.Cookie(loginCookie)
	form := r.PostForm.Get("csrf")
	if err != nil || c.Value == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(form)) != 1 {
		s.showLogin(w, r, http.StatusForbidden, next, "The sign-in form expired. Please try again.")
		return
	}

	secret := r.PostForm.Get("token")
	var tok *pylon.APIToken
	id, hash, err := pylon.ParseSecret(pylon.APITokenPrefix, trimToken(secret))
	if err == nil {
		tok, err = s.APITokens.AuthenticateAPIToken(r.Context(), id, hash)
	}
	if err != nil {
		if pylon.ErrorCode(err) != pylon.EUNAUTHORIZED {
			s.fail(w, r, err)
			return
		}
		s.limiter.Fail(key, now)
		s.auditFailure(r, addr)
		s.showLogin(w, r, http.StatusUnauthorized, next, "Invalid API token.")
		return
	}
	if !tok.Role.Allows(pylon.PermRead) {
		s.showLogin(w, r, http.StatusForbidden, next, "This API token's role may not use the dashboard.")
		return
	}
	value, sess := s.sessions.create(tok, hash, now)
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: value, Path: "/", Expires: now.Add(SessionTTL), MaxAge: int(SessionTTL.Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Path: "/login", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	s.log.Info("dashboard sign-in", "token_id", tok.ID, "role", tok.Role, "session", sess.id, "remote", addr)
	redirect(w, r, next)
}

// trimToken trims the white space around a pasted token and refuses an
// oversized one.
func trimToken(s string) string {
	if len(s) > maxTokenLen {
		return ""
	}
	return strings.TrimSpace(s)
}

// auditFailure writes the audit record of a failed sign-in.
func (s *Server) auditFailure(r *http.Request, addr string) {
	details, _ := json.Marshal(map[string]string{"path": "/login", "via": "dashboard"})
	rec := &pylon.AuditRecord{
		Time:    s.now(),
		Actor:   "anonymous",
		Action:  pylon.ActionAuthFailed,
		Object:  "ip:" + addr,
		Details: details,
	}
	if err := s.Audit.AppendAudit(r.Context(), rec); err != nil {
		s.log.Error("audit failed sign-in", "remote", addr, "err", err)
	}
	s.log.Info("dashboard sign-in failed", "remote", addr)
}

// handleLogoutForm shows a page with the sign-out button.
func (s *Server) handleLogoutForm(w http.ResponseWriter, r *http.Request, u *user) {
	s.render(w, r, http.StatusOK, "logout", s.newView(u, "", "Sign out", nil))
}

// handleLogout ends the session.
func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request, u *user) {
	s.sessions.delete(u.key)
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	s.log.Info("dashboard sign-out", "token_id", u.TokenID)
	redirect(w, r, "/login")
}
