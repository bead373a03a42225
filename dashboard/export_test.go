package dashboard

import (
	"time"

	"github.com/pylonhq/pylon"
)

// EnrollCommands exposes enrollCommands to the external tests.
var EnrollCommands = enrollCommands

// Time formatting, for the tests.
var (
	RelTime      = relTime
	ExpiryText   = expiryText
	FormatNumber = formatNumber
	FormatRate   = formatRate
	ReadingText  = readingText
	DetailsText  = detailsText
)

// SessionStore exposes the session store to the tests.
type SessionStore struct{ st *sessionStore }

// NewSessionStore returns a store of at most max sessions.
func NewSessionStore(max int) SessionStore { return SessionStore{newSessionStore(max)} }

// Create signs in tok at now and returns the cookie value.
func (s SessionStore) Create(tok *pylon.APIToken, now time.Time) string {
	v, _ := s.st.create(tok, pylon.HashSecret("x"), now)
	return v
}

// Live reports whether the session of cookie is live at now.
func (s SessionStore) Live(cookie string, now time.Time) bool {
	_, ok := s.st.get(cookie, now)
	return ok
}
