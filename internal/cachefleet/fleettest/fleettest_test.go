package fleettest

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestSamePortCollision: when the port a same-port fleet first picks is
// taken on one of its addresses, Start tries another port; the test is
// neither skipped nor failed.
func TestSamePortCollision(t *testing.T) {
	var collisions atomic.Int32
	listen = func(network, addr string) (net.Listener, error) {
		if strings.HasPrefix(addr, "127.0.0.4:") && !strings.HasSuffix(addr, ":0") && collisions.Add(1) <= 2 {
			return nil, &net.OpError{Op: "listen", Net: network, Err: fmt.Errorf("simulated: %w", syscall.EADDRINUSE)}
		}
		return net.Listen(network, addr)
	}
	defer func() { listen = net.Listen }()
	var f *Fleet
	skipped := true
	ok := t.Run("start", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		f = Start(t, 4, Options{SamePort: true})
	})
	if !ok || skipped || f == nil {
		t.Fatal("Start failed or was skipped on a port collision")
	}
	if collisions.Load() < 3 {
		t.Errorf("%d listens on 127.0.0.4, want the 2 collisions and a success", collisions.Load())
	}
	ports := map[string]bool{}
	for _, u := range f.URLs() {
		_, p, _ := net.SplitHostPort(strings.TrimPrefix(u, "http://"))
		ports[p] = true
	}
	if len(ports) != 1 || f.Len() != 4 {
		t.Errorf("fleet %v: want 4 nodes on one port", f.URLs())
	}
}
