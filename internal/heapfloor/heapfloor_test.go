package heapfloor_test

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/pylonhq/pylon/internal/heapfloor"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		live, floor uint64
		base, want  int
	}{
		{live: 16 * mib, floor: 64 * mib, base: 100, want: 300},  // goal 64 MiB
		{live: 10 * mib, floor: 64 * mib, base: 100, want: 540},  // 10 × 6.4
		{live: 10 * mib, floor: 64 * mib, base: 800, want: 800},  // never below base
		{live: 32 * mib, floor: 64 * mib, base: 100, want: 100},  // half the floor live: the default
		{live: 200 * mib, floor: 64 * mib, base: 100, want: 100}, // above the floor
		{live: 1, floor: 64 * mib, base: 100, want: 10_000},      // bounded
		{live: 0, floor: 64 * mib, base: 100, want: 100},         // nothing known
	}
	for _, tt := range tests {
		if got := heapfloor.Percent(tt.live, tt.floor, tt.base); got != tt.want {
			t.Errorf("Percent(%d, %d, %d) = %d, want %d", tt.live, tt.floor, tt.base, got, tt.want)
		}
		if p := heapfloor.Percent(tt.live, tt.floor, tt.base); tt.live > 0 && tt.live*2 < tt.floor && p < 10_000 {
			if goal := tt.live + tt.live*uint64(p)/100; goal < tt.floor {
				t.Errorf("live %d: goal %d below the floor %d", tt.live, goal, tt.floor)
			}
		}
	}
}

func gogc() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestStart checks that GOGC follows the floor after collections, and
// that stop puts it back. The test binary's live heap is a few MB, far
// below a 1 GiB floor.
func TestStart(t *testing.T) {
	base := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(base) })
	stop := heapfloor.Start(1 << 30)
	deadline := time.Now().Add(10 * time.Second)
	for gogc() <= 100 {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC still %d 10 s after collections began, want it raised for a 1 GiB floor", gogc())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if got := gogc(); got != 100 {
		t.Fatalf("GOGC %d after stop, want 100 back", got)
	}
	runtime.GC()
	time.Sleep(50 * time.Millisecond)
	if got := gogc(); got != 100 {
		t.Fatalf("GOGC %d after a collection once stopped, want 100", got)
	}
}

// TestStart_Off checks that Start leaves a collector turned off alone.
func TestStart_Off(t *testing.T) {
	base := debug.SetGCPercent(-1)
	t.Cleanup(func() { debug.SetGCPercent(base) })
	stop := heapfloor.Start(1 << 30)
	runtime.GC()
	time.Sleep(50 * time.Millisecond)
	if got := debug.SetGCPercent(-1); got != -1 {
		t.Fatalf("GOGC %d after Start with the collector off, want off", got)
	}
	stop()
	if got := debug.SetGCPercent(-1); got != -1 {
		t.Fatalf("GOGC %d after stop, want still off", got)
	}
}
