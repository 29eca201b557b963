package cachefleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net"
	"testing"

	"github.com/lode-dev/lode/internal/cachenode"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/lodetest"
)

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
			srv, err := cachenode.NewServer(cachenode.ServerConfig{MemBytes: 8 << 20})
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
	r0 := lodetest.Count(t)
	for range 20 {
		cycle()
	}
	lodetest.CheckNoLeak(t, "20 fleets of 3 nodes and a client started and stopped", r0, 2)
}
