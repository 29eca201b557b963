package nbd

import (
	"bytes"
	"context"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/blockdev"
)

// leakCounts returns the goroutines and open file descriptors of the
// process.
func leakCounts(t testing.TB) (goroutines, fds int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return runtime.NumGoroutine(), len(ents)
}

// checkNoLeak waits up to 10 s for the goroutine and fd counts to come back
// within tol of the baseline, then reports what is left.
func checkNoLeak(t testing.TB, what string, g0, f0, tol int) {
	t.Helper()
	var g, f int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		g, f = leakCounts(t)
		if (g <= g0+tol && f <= f0+tol) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("leak check %s: goroutines %d -> %d, fds %d -> %d", what, g0, g, f0, f)
	if g > g0+tol {
		buf := make([]byte, 1<<20)
		t.Errorf("%s: %d goroutines after, %d before (tolerance %d)\n%s", what, g, g0, tol, buf[:runtime.Stack(buf, true)])
	}
	if f > f0+tol {
		t.Errorf("%s: %d open fds after, %d before (tolerance %d)", what, f, f0, tol)
	}
}

// TestNoLeakConnections serves 20 NBD connections that negotiate, read and
// hang up (half of them without NBD_CMD_DISC), then stops the server:
// goroutines and file descriptors return to where they were, both with the
// server still up and after it stopped.
func TestNoLeakConnections(t *testing.T) {
	img := testImage()
	g0, f0 := leakCounts(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- NewServer(map[string]Export{"x": {Device: blockdev.NewMemDevice(img)}}, Config{}).Serve(ctx, l)
	}()
	// One connection first, so the listener's own goroutine is counted.
	g1, f1 := 0, 0
	for i := range 21 {
		c := dialNBD(t, "tcp", l.Addr().String())
		if typ, err := c.goExport("x"); err != nil || typ != repAck {
			t.Fatalf("goExport = %d, %v", typ, err)
		}
		dst := make([]byte, 4096)
		if errno, err := c.do(cmdRead, 4096, 4096, nil, dst); err != nil || errno != 0 || !bytes.Equal(dst, img[4096:8192]) {
			t.Fatalf("read = %d, %v", errno, err)
		}
		if i%2 == 0 {
			c.do(cmdDisc, 0, 0, nil, nil)
		}
		c.c.Close()
		if i == 0 {
			time.Sleep(100 * time.Millisecond)
			g1, f1 = leakCounts(t)
		}
	}
	checkNoLeak(t, "20 NBD connections closed, server up", g1, f1, 2)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve = %v", err)
	}
	checkNoLeak(t, "server stopped", g0, f0, 2)
}
