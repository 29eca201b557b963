package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// drainTransport is a prototype (bench only) of keeping keep-alive
// connections when the fleet client cancels a shard request it no longer
// needs. Go's transport closes a connection whose request is cancelled
// before its body is read to the end, so every Fetch that rebuilds from the
// first M of K answers tears down the connection of the slowest node and the
// next Fetch dials again. Here the request runs under a context detached from
// the caller's (bounded by grace); when the caller gives up, the rest of the
// answer is read and discarded in the background and the connection returns
// to the pool.
//
// With maxWaiting > 0 it also caps, per node, the requests still waiting for
// response headers: a stalled node (SIGSTOP, a hung disk) then costs one
// failed map lookup per Fetch instead of a new connection and goroutine, and
// it is used again as soon as its queued requests are answered.
type drainTransport struct {
	base       http.RoundTripper
	grace      time.Duration
	maxWaiting int

	mu      sync.Mutex
	waiting map[string]int // per host: requests without response headers yet
}

var errNodeStalled = errors.New("node has too many requests without an answer")

// newBenchTransport mirrors cachefleet's default transport settings.
func newBenchTransport() *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		DisableCompression:    true,
		ReadBufferSize:        64 << 10,
		WriteBufferSize:       64 << 10,
	}
}

type rtResult struct {
	resp *http.Response
	err  error
}

func (t *drainTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	outer := req.Context()
	host := req.URL.Host
	if t.maxWaiting > 0 {
		t.mu.Lock()
		if t.waiting == nil {
			t.waiting = map[string]int{}
		}
		if t.waiting[host] >= t.maxWaiting {
			t.mu.Unlock()
			return nil, fmt.Errorf("requesting %s: %w", req.URL, errNodeStalled)
		}
		t.waiting[host]++
		t.mu.Unlock()
	}
	ictx, cancel := context.WithTimeout(context.WithoutCancel(outer), t.grace)
	done := make(chan rtResult, 1)
	go func() {
		resp, err := t.base.RoundTrip(req.Clone(ictx))
		if t.maxWaiting > 0 {
			t.mu.Lock()
			t.waiting[host]--
			t.mu.Unlock()
		}
		done <- rtResult{resp, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			cancel()
			return nil, r.err
		}
		r.resp.Body = &drainBody{outer: outer, rc: r.resp.Body, cancel: cancel}
		return r.resp, nil
	case <-outer.Done():
		go func() { // finish in the background so the connection survives
			r := <-done
			if r.err == nil {
				io.Copy(io.Discard, r.resp.Body)
				r.resp.Body.Close()
			}
			cancel()
		}()
		return nil, outer.Err()
	}
}

type drainBody struct {
	outer  context.Context
	rc     io.ReadCloser
	cancel context.CancelFunc
	once   sync.Once
}

func (b *drainBody) Read(p []byte) (int, error) {
	if err := b.outer.Err(); err != nil {
		return 0, err
	}
	return b.rc.Read(p)
}

func (b *drainBody) Close() error {
	b.once.Do(func() {
		go func() {
			io.Copy(io.Discard, b.rc)
			b.rc.Close()
			b.cancel()
		}()
	})
	return nil
}
