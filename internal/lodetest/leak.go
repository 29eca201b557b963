package lodetest

import (
	"os"
	"runtime"
	"testing"
	"time"
)

// Resources is a count of the process's goroutines and open file
// descriptors, for leak tests.
type Resources struct{ Goroutines, FDs int }

// Count returns the process's current goroutines and open descriptors.
func Count(t testing.TB) Resources {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return Resources{Goroutines: runtime.NumGoroutine(), FDs: len(ents)}
}

// CheckNoLeak waits up to 10 s for the goroutine and descriptor counts to
// come back within tol of before, then fails t (with every goroutine's
// stack) if they have not.
func CheckNoLeak(t testing.TB, what string, before Resources, tol int) {
	t.Helper()
	var now Resources
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		now = Count(t)
		if (now.Goroutines <= before.Goroutines+tol && now.FDs <= before.FDs+tol) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("leak check %s: goroutines %d -> %d, fds %d -> %d", what, before.Goroutines, now.Goroutines, before.FDs, now.FDs)
	if now.Goroutines > before.Goroutines+tol {
		buf := make([]byte, 1<<20)
		t.Errorf("%s: %d goroutines after, %d before (tolerance %d)\n%s", what, now.Goroutines, before.Goroutines, tol, buf[:runtime.Stack(buf, true)])
	}
	if now.FDs > before.FDs+tol {
		t.Errorf("%s: %d open fds after, %d before (tolerance %d)", what, now.FDs, before.FDs, tol)
	}
}
