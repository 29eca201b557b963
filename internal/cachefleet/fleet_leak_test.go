package cachefleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
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

// TestNoLeakStartStop starts three nodes and a client, fills and fetches a
// chunk, closes the client and stops the nodes, 20 times: goroutines and
// file descriptors return to where they were.
func TestNoLeakStartStop(t *testing.T) {
	ct := bytes.Repeat([]byte("leak"), 50<<10)
	name := chunk.Name(sha256.Sum256(ct))
	cycle := func() {
		ctx, cancel := context.WithCancel(context.Background())
		var urls []string
		var done []chan error
		for range 3 {
			srv, err := NewServer(ServerConfig{MemBytes: 8 << 20})
			if err != nil {
				t.Fatal(err)
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			urls = append(urls, "http://"+l.Addr().String())
			d := make(chan error, 1)
			go func() { d <- srv.Serve(ctx, l) }()
			done = append(done, d)
		}
		cl, err := NewClient(ClientConfig{Nodes: urls, M: 2, K: 3})
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.Fill(ctx, name, ct); err != nil {
			t.Fatal(err)
		}
		got, err := cl.Fetch(ctx, name, nil)
		if err != nil || !bytes.Equal(got, ct) {
			t.Fatalf("Fetch = %d bytes, %v", len(got), err)
		}
		cl.Close()
		cancel()
		for _, d := range done {
			if err := <-d; err != nil {
				t.Errorf("Serve = %v", err)
			}
		}
	}
	cycle() // warm up: first use starts the runtime's netpoller and the like
	g0, f0 := leakCounts(t)
	for range 20 {
		cycle()
	}
	checkNoLeak(t, "20 fleets of 3 nodes and a client started and stopped", g0, f0, 2)
}
