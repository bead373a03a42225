package dashboard_test

import (
	"testing"
	"time"

	"github.com/pylonhq/pylon"
	"github.com/pylonhq/pylon/dashboard"
)

func TestSessionStore_Bounded(t *testing.T) {
	start := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tok := &pylon.APIToken{ID: "aaaaaaaaaaaaaaaa", Role: pylon.RoleAdmin}
	t.Run("the oldest goes first", func(t *testing.T) {
		st := dashboard.NewSessionStore(3)
		var cookies []string
		now := start
		for range 4 {
			cookies = append(cookies, st.Create(tok, now))
			now = now.Add(time.Minute)
		}
		for i, want := range []bool{false, true, true, true} {
			if got := st.Live(cookies[i], now); got != want {
				t.Errorf("session %d: got live %v, want %v", i+1, got, want)
			}
		}
	})
	t.Run("expiry", func(t *testing.T) {
		st := dashboard.NewSessionStore(3)
		c := st.Create(tok, start)
		if !st.Live(c, start.Add(dashboard.SessionTTL-time.Second)) {
			t.Fatal("the session ended before SessionTTL")
		}
		if st.Live(c, start.Add(dashboard.SessionTTL)) {
			t.Fatal("the session outlived SessionTTL")
		}
	})
	t.Run("garbage cookies", func(t *testing.T) {
		st := dashboard.NewSessionStore(3)
		st.Create(tok, start)
		for _, c := range []string{"", "pyl_s_", "pyl_at_aaaaaaaaaaaaaaaa_" + string(make([]byte, 43)), "x"} {
			if st.Live(c, start) {
				t.Errorf("cookie %q is live", c)
			}
		}
	})
}
