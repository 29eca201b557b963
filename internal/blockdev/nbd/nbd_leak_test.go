package nbd

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/lodetest"
)

// TestNoLeakConnections serves 20 NBD connections that negotiate, read and
// hang up (half of them without NBD_CMD_DISC), then stops the server:
// goroutines and file descriptors return to where they were, both with the
// server still up and after it stopped.
func TestNoLeakConnections(t *testing.T) {
	img := testImage()
	r0 := lodetest.Count(t)
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
	var r1 lodetest.Resources
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
			r1 = lodetest.Count(t)
		}
	}
	lodetest.CheckNoLeak(t, "20 NBD connections closed, server up", r1, 2)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve = %v", err)
	}
	lodetest.CheckNoLeak(t, "server stopped", r0, 2)
}
