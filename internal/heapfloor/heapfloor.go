// Package heapfloor keeps the garbage collector's heap goal from falling
// below a floor.
//
// Go sets the next collection at GOGC percent above the heap still live
// after the last one. A server whose live heap is small but which
// allocates fast (a broker handing each message through a pipeline) then
// collects every few milliseconds: with 14 MB live and 230 MB/s of
// allocation, some twenty times a second, each collection taking a
// processor for its marking. Start raises GOGC after each collection so
// that the goal is at least the floor, and puts it back to the base
// value once the live heap alone reaches half the floor: memory above the
// default is bounded by the floor. This is the "GC tuner" Uber and others
// describe; the Go runtime has no minimum heap setting of its own.
package heapfloor

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// DefaultFloor is the heap goal `pylon serve` keeps at least.
const DefaultFloor = 64 << 20

// maxPercent bounds the GOGC Start sets, for a live heap of almost nothing.
const maxPercent = 10_000

// Percent is the GOGC that puts the heap goal, live × (1 + GOGC/100), at
// floor or above, never below base.
func Percent(live, floor uint64, base int) int {
	if live == 0 || live*2 >= floor {
		return base
	}
	p := (floor*100+live-1)/live - 100 // ceiling
	return max(base, int(min(p, maxPercent)))
}

// Start keeps the heap goal at floor bytes or more, from the next
// collection on, until stop is called; stop puts GOGC back as it was. It
// does nothing (and stop is a no-op) if GOGC is off.
func Start(floor uint64) (stop func()) {
	base := debug.SetGCPercent(-1)
	debug.SetGCPercent(base)
	if base < 0 {
		return func() {}
	}
	t := &tuner{floor: floor, base: base, current: base}
	t.sample = []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	t.arm()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.stopped {
			t.stopped = true
			debug.SetGCPercent(base)
		}
	}
}

// tuner sets GOGC after each collection, from a finalizer that re-arms
// itself: finalizers run once the collection that found their object
// unreachable is done.
type tuner struct {
	floor  uint64
	base   int
	sample []metrics.Sample // only the finalizer goroutine uses it

	mu      sync.Mutex
	current int
	stopped bool
}

type sentinel struct{ _ [16]byte } // not zero-sized: those may not be finalized

func (t *tuner) arm() {
	runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
		if t.adjust() {
			t.arm()
		}
	})
}

// adjust sets GOGC for the live heap of the collection just done. It
// returns false once stopped.
func (t *tuner) adjust() bool {
	metrics.Read(t.sample)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return true
	}
	p := Percent(t.sample[0].Value.Uint64(), t.floor, t.base)
	// Small changes are not worth setting: each moves the goal a little.
	if math.Abs(float64(p-t.current)) >= float64(t.current)/20 {
		debug.SetGCPercent(p)
		t.current = p
	}
	return true
}
