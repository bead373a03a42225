//go:build !unix

package device_test

import "time"

// cpuTime is not measured on this platform: the benchmarks then report no
// CPU time.
func cpuTime() (time.Duration, bool) { return 0, false }
