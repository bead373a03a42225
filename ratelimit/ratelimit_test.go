package ratelimit_test

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pylonhq/pylon/ratelimit"
)

func TestFailures_BlocksAfterMaxUntilWindowEnds(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	l := ratelimit.NewFailures(3, time.Minute, 10)
	for i := range 3 {
		if _, blocked := l.Blocked("a", t0); blocked {
			t.Fatalf("blocked after %d failures, want only after 3", i)
		}
		l.Fail("a", t0.Add(time.Duration(i)*time.Second))
	}
	wait, blocked := l.Blocked("a", t0.Add(10*time.Second))
	if !blocked || wait != 50*time.Second {
		t.Fatalf("after 3 failures: got blocked=%v wait=%v, want true and 50s (the window started at the first failure)", blocked, wait)
	}
	if _, blocked := l.Blocked("b", t0); blocked {
		t.Fatal("another key is blocked")
	}
	if _, blocked := l.Blocked("a", t0.Add(time.Minute)); blocked {
		t.Fatal("still blocked when the window has passed")
	}
	l.Fail("a", t0.Add(time.Minute))
	if _, blocked := l.Blocked("a", t0.Add(time.Minute)); blocked {
		t.Fatal("one failure in a new window blocks")
	}
}

func TestFailures_BoundedForgetsOldest(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	l := ratelimit.NewFailures(1, time.Hour, 3)
	for i := range 4 { // key-0 is forgotten when key-3 arrives
		l.Fail(fmt.Sprintf("key-%d", i), t0.Add(time.Duration(i)*time.Second))
	}
	if _, blocked := l.Blocked("key-0", t0.Add(time.Minute)); blocked {
		t.Error("the oldest key is still remembered beyond capacity")
	}
	for i := 1; i < 4; i++ {
		if _, blocked := l.Blocked(fmt.Sprintf("key-%d", i), t0.Add(time.Minute)); !blocked {
			t.Errorf("key-%d: not blocked", i)
		}
	}
}

func TestClientAddr(t *testing.T) {
	for _, tc := range []struct{ remote, addr, key string }{
		{"192.0.2.7:5555", "192.0.2.7", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:5555", "192.0.2.7", "192.0.2.7"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:443", "fe80::1", "fe80::/64"},
		{"not-an-address", "not-an-address", "not-an-address"},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.remote
		addr, key := ratelimit.ClientAddr(r)
		if addr != tc.addr || key != tc.key {
			t.Errorf("%s: got %q, %q; want %q, %q", tc.remote, addr, key, tc.addr, tc.key)
		}
	}
}
