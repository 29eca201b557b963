package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/s3"
	"github.com/lode-dev/lode/internal/store/storetest"
)

// proxy forwards to the real server unless fault handles the request
// (returns true). It records each request as "METHOD" for the test.
type proxy struct {
	*httptest.Server
	mu    sync.Mutex
	seen  []string
	fault func(w http.ResponseWriter, r *http.Request, n int) bool // n: requests seen so far with this method
	cut   func(r *http.Request, n int) bool                        // cut this answer's body short
}

type cutBody struct {
	io.ReadCloser
	left int64
}

func (c *cutBody) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n, err := c.ReadCloser.Read(p[:min(int64(len(p)), c.left)])
	c.left -= int64(n)
	return n, err
}

func newProxy(t *testing.T, srv lodetest.S3, fault func(w http.ResponseWriter, r *http.Request, n int) bool) *proxy {
	target, _ := url.Parse(srv.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(target) // keeps the Host header the client signed
	p := &proxy{fault: fault}
	// cutProxy forwards the real answer, headers and all, but ends the body
	// halfway through and drops the connection.
	cutProxy := httputil.NewSingleHostReverseProxy(target)
	cutProxy.ModifyResponse = func(resp *http.Response) error {
		resp.Body = &cutBody{ReadCloser: resp.Body, left: resp.ContentLength / 2}
		return nil
	}
	cutProxy.ErrorLog = log.New(io.Discard, "", 0)
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		n := 0
		for _, m := range p.seen {
			if m == r.Method {
				n++
			}
		}
		p.seen = append(p.seen, r.Method)
		p.mu.Unlock()
		if p.cut != nil && p.cut(r, n) {
			cutProxy.ServeHTTP(w, r)
			return
		}
		if p.fault != nil && p.fault(w, r, n) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *proxy) count(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, m := range p.seen {
		if m == method {
			n++
		}
	}
	return n
}

func s3Error(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>injected by the test</Message></Error>`, code)
}

// requests sums lode_store_s3_http_requests_total by "METHOD CODE".
func requests(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "lode_store_s3_http_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var method, code string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "method":
					method = l.GetValue()
				case "code":
					code = l.GetValue()
				}
			}
			got[method+" "+code] += m.GetCounter().GetValue()
		}
	}
	return got
}

func wantErr(t *testing.T, what string, err, sentinel error, names ...string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Errorf("%s = %v, want %v", what, err, sentinel)
		return
	}
	for _, n := range names {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("%s = %q, does not name %q", what, err, n)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	srv := lodetest.S3Server(t)
	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return "http://" + l.Addr().String()
	}()
	for _, tc := range []struct {
		name         string
		edit         func(c *s3.Config)
		want         error
		wantRequests map[string]float64
	}{
		{"wrong secret key", func(c *s3.Config) { c.SecretKey = "wrong" }, s3.ErrAccessDenied, map[string]float64{"HEAD 403": 1}},
		// versitygw answers 404 to an unknown key: the listing that follows
		// a 404 tells it from a missing bucket.
		{"unknown access key", func(c *s3.Config) { c.AccessKey = "nobody" }, s3.ErrAccessDenied, map[string]float64{"HEAD 404": 1, "GET 404": 1}},
		{"anonymous", func(c *s3.Config) { c.AccessKey, c.SecretKey = "", "" }, s3.ErrAccessDenied, map[string]float64{"HEAD 403": 1}},
		{"missing bucket", func(c *s3.Config) { c.Bucket = "no-such-bucket" }, s3.ErrNoSuchBucket, map[string]float64{"HEAD 404": 1, "GET 404": 1}},
		// A closed port: every attempt is refused, and there are exactly
		// MaxRetries of them, so the failure comes in bounded time.
		{"closed port", func(c *s3.Config) { c.Endpoint = closed; c.MaxRetries = 3 }, s3.ErrUnreachable, map[string]float64{"HEAD error": 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config(srv)
			tc.edit(&c)
			reg := prometheus.NewRegistry()
			c.Metrics = s3.NewMetrics(reg)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			s, err := s3.New(ctx, c)
			if s != nil {
				t.Errorf("s3.New returned a store with error %v", err)
			}
			wantErr(t, "s3.New", err, tc.want, "s3://"+c.Bucket, c.Endpoint)
			if diff := cmp.Diff(tc.wantRequests, requests(t, reg)); diff != "" {
				t.Errorf("HTTP requests mismatch (-want +got):\n%s", diff)
			}

			// CheckLater: New returns at once, and the first request that
			// fails reports the check's error, with the same sentinel.
			c.CheckLater = true
			c.Metrics = s3.NewMetrics(prometheus.NewRegistry())
			s, err = s3.New(ctx, c)
			if err != nil {
				t.Fatalf("s3.New with CheckLater = %v, want the check deferred", err)
			}
			_, err = s.Get(ctx, "roots/r/manifests/m", nil)
			wantErr(t, "Get after s3.New with CheckLater", err, tc.want, "s3://"+c.Bucket, c.Endpoint, "roots/r/manifests/m")
		})
	}
}

func TestServerKilled(t *testing.T) {
	srv := lodetest.StartS3Server(t)
	c := config(srv)
	c.MaxRetries = 2
	s := open(t, c)
	key := "roots/r/chunks/c"
	if err := s.Put(t.Context(), key, []byte("data")); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errs := map[string]error{}
	_, errs["Get"] = s.Get(ctx, key, nil)
	_, errs["GetRange"] = s.GetRange(ctx, key, 1, 2, nil)
	errs["Put"] = s.Put(ctx, key, []byte("new"))
	errs["PutIfAbsent"] = s.PutIfAbsent(ctx, key+"2", []byte("new"))
	_, errs["Stat"] = s.Stat(ctx, key)
	errs["Delete"] = s.Delete(ctx, key)
	for op, err := range errs {
		wantErr(t, op, err, s3.ErrUnreachable, key, srv.Bucket, srv.Endpoint)
	}
	err := s.List(ctx, "roots/", func(string, int64) error { return nil })
	wantErr(t, "List", err, s3.ErrUnreachable, srv.Bucket, srv.Endpoint)
	err = s.ListDirs(ctx, "roots/", func(string) error { return nil })
	wantErr(t, "ListDirs", err, s3.ErrUnreachable, srv.Bucket, srv.Endpoint)
}

func TestThrottlingIsRetried(t *testing.T) {
	srv := lodetest.S3Server(t)
	p := newProxy(t, srv, func(w http.ResponseWriter, r *http.Request, n int) bool {
		switch {
		case r.Method == http.MethodPut && n < 2:
			s3Error(w, http.StatusServiceUnavailable, "SlowDown")
		case r.Method == http.MethodGet && n == 0:
			s3Error(w, http.StatusTooManyRequests, "TooManyRequests")
		case r.Method == http.MethodGet && n == 1:
			s3Error(w, http.StatusInternalServerError, "InternalError")
		default:
			return false
		}
		return true
	})
	c := config(srv)
	c.Endpoint = p.URL
	s := open(t, c)
	data := storetest.Data(1, storetest.ChunkSize)
	if err := s.Put(t.Context(), "k", data); err != nil {
		t.Fatalf("Put through 2 SlowDowns: %v", err)
	}
	got, err := s.Get(t.Context(), "k", nil)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get through 429 and 500 = %d bytes, %v, want the object", len(got), err)
	}
	if n := p.count(http.MethodPut); n != 3 {
		t.Errorf("PUT attempts = %d, want 3 (2 throttled + 1)", n)
	}
	if n := p.count(http.MethodGet); n != 3 {
		t.Errorf("GET attempts = %d, want 3 (429, 500, then 200)", n)
	}
}

func TestRetriesAreBounded(t *testing.T) {
	srv := lodetest.S3Server(t)
	p := newProxy(t, srv, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.Method != http.MethodPut {
			return false
		}
		s3Error(w, http.StatusServiceUnavailable, "SlowDown")
		return true
	})
	c := config(srv)
	c.Endpoint = p.URL
	c.MaxRetries = 3
	s := open(t, c)
	err := s.Put(t.Context(), "throttled", []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "throttled") || !strings.Contains(err.Error(), "SlowDown") {
		t.Errorf("Put against a server that always throttles = %v, want an error naming the key and SlowDown", err)
	}
	if n := p.count(http.MethodPut); n != 3 {
		t.Errorf("PUT attempts = %d, want MaxRetries = 3", n)
	}
}

func TestConditionalPutFallback(t *testing.T) {
	srv := lodetest.S3Server(t)
	p := newProxy(t, srv, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.Method == http.MethodPut && r.Header.Get("If-None-Match") != "" {
			s3Error(w, http.StatusNotImplemented, "NotImplemented")
			return true
		}
		return false
	})
	c := config(srv)
	c.Endpoint = p.URL
	s := open(t, c)
	if err := s.PutIfAbsent(t.Context(), "c", []byte("first")); err != nil {
		t.Fatalf("PutIfAbsent on a server without If-None-Match: %v", err)
	}
	if err := s.PutIfAbsent(t.Context(), "c", []byte("second")); !errors.Is(err, store.ErrExists) {
		t.Errorf("second PutIfAbsent = %v, want ErrExists", err)
	}
	got, err := s.Get(t.Context(), "c", nil)
	if err != nil || string(got) != "first" {
		t.Errorf("Get(c) = %q, %v, want \"first\"", got, err)
	}
	// The 501 is remembered: one conditional PUT was tried, then plain PUTs.
	if n := p.count(http.MethodPut); n != 2 {
		t.Errorf("PUT requests = %d, want 2 (one refused conditional, one plain)", n)
	}
}

// truncate cuts the body of the first times GETs of objects short, with
// the full Content-Length announced: what a client sees when the server
// dies or the object vanishes mid-read.
func truncate(t *testing.T, srv lodetest.S3, times int) *proxy {
	p := newProxy(t, srv, nil)
	p.cut = func(r *http.Request, n int) bool {
		return r.Method == http.MethodGet && n < times && !r.URL.Query().Has("list-type") && !r.URL.Query().Has("location")
	}
	return p
}

func TestShortBodyNeverReturned(t *testing.T) {
	srv := lodetest.S3Server(t)
	data := storetest.Data(2, storetest.ChunkSize)
	for _, tc := range []struct {
		name  string
		times int // truncated GETs before a good one
		ok    bool
	}{
		{"once, then retried", 1, true},
		{"always", 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := truncate(t, srv, tc.times)
			c := config(srv)
			c.Endpoint = p.URL
			c.Prefix = fmt.Sprintf("short%d/", prefixSeq.Add(1))
			s := open(t, c)
			if err := s.Put(t.Context(), "k", data); err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(t.Context(), "k", nil)
			if tc.ok {
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("Get after one cut-short body = %d bytes, %v, want the object", len(got), err)
				}
				return
			}
			if err == nil || got != nil {
				t.Fatalf("Get with the body always cut short = %d bytes, %v, want an error and no data", len(got), err)
			}
			if !strings.Contains(err.Error(), "k in s3://"+srv.Bucket) {
				t.Errorf("Get error %q does not name key and bucket", err)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	srv := lodetest.S3Server(t)
	reg := prometheus.NewRegistry()
	c := config(srv)
	c.Metrics = s3.NewMetrics(reg)
	s := open(t, c)
	s.Put(t.Context(), "k", []byte("x"))
	s.Get(t.Context(), "k", nil)
	s.Stat(t.Context(), "missing")
	s.PutIfAbsent(t.Context(), "k", []byte("x"))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "lode_store_s3_operations_total":
				got[m.GetLabel()[0].GetValue()+" "+m.GetLabel()[1].GetValue()] = m.GetCounter().GetValue()
			case "lode_store_s3_operation_seconds":
				got["histogram "+m.GetLabel()[0].GetValue()] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"put ok": 1, "get ok": 1, "stat not_found": 1, "put_if_absent exists": 1,
		"histogram put": 1, "histogram get": 1, "histogram stat": 1, "histogram put_if_absent": 1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics mismatch (-want +got):\n%s", diff)
	}
	if r := requests(t, reg); r["PUT 200"] != 1 || r["PUT 412"] != 1 || r["HEAD 404"] != 1 {
		t.Errorf("HTTP requests = %v, want PUT 200, PUT 412 and HEAD 404 once each", r)
	}
}

// TestCheckLaterGoodStore: with CheckLater a good store serves its first
// requests without waiting for the check, and the check still runs (one
// HEAD of the bucket).
func TestCheckLaterGoodStore(t *testing.T) {
	srv := lodetest.S3Server(t)
	c := config(srv)
	c.CheckLater = true
	reg := prometheus.NewRegistry()
	c.Metrics = s3.NewMetrics(reg)
	s, err := s3.New(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	key := "roots/r/chunks/later"
	if err := s.Put(t.Context(), key, []byte("data")); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(t.Context(), key, nil)
	if err != nil || string(got) != "data" {
		t.Fatalf("Get = %q, %v; want data", got, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for requests(t, reg)["HEAD 200"] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("HTTP requests = %v, want one HEAD 200 (the bucket check)", requests(t, reg))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
