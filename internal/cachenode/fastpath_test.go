package cachenode

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
)

const testHex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

func TestParseFastRequest(t *testing.T) {
	name, err := chunk.ParseName(testHex)
	if err != nil {
		t.Fatal(err)
	}
	get := "GET /v1/shards/" + testHex
	tests := []struct {
		desc  string
		in    string
		res   parseResult
		idx   int
		close bool
		n     int // 0: len(in)
		put   bool
		len   int64
	}{
		{desc: "one shard", in: get + "/3 HTTP/1.1\r\nHost: 127.0.0.1:7431\r\n\r\n", res: parseOK, idx: 3},
		{desc: "all shards", in: get + " HTTP/1.1\r\nHost: a\r\n\r\n", res: parseOK, idx: -1},
		{desc: "shard 0", in: get + "/0 HTTP/1.1\r\nHost: a\r\n\r\n", res: parseOK, idx: 0},
		{desc: "shard 31", in: get + "/31 HTTP/1.1\r\nHost: a\r\n\r\n", res: parseOK, idx: 31},
		{desc: "Go client headers", in: get + " HTTP/1.1\r\nHost: node-1:7431\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n", res: parseOK, idx: -1},
		{desc: "connection close", in: get + "/1 HTTP/1.1\r\nhost: a\r\nCONNECTION:  Close \r\n\r\n", res: parseOK, idx: 1, close: true},
		{desc: "connection keep-alive", in: get + "/1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", res: parseOK, idx: 1},
		{desc: "pipelined", in: get + "/2 HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\n", res: parseOK, idx: 2, n: len(get + "/2 HTTP/1.1\r\nHost: a\r\n\r\n")},

		{desc: "PUT", in: "PUT /v1/shards/" + testHex + "/4 HTTP/1.1\r\nHost: a\r\nContent-Length: 1294\r\nContent-Type: application/octet-stream\r\n\r\n", res: parseOK, idx: 4, put: true, len: 1294},
		{desc: "PUT with body", in: "PUT /v1/shards/" + testHex + "/0 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", res: parseOK, idx: 0, put: true, len: 3, n: len("PUT /v1/shards/" + testHex + "/0 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")},
		{desc: "PUT largest", in: "PUT /v1/shards/" + testHex + "/0 HTTP/1.1\r\nHost: a\r\nContent-Length: " + fmt.Sprint(fleetproto.MaxShardSize) + "\r\n\r\n", res: parseOK, idx: 0, put: true, len: fleetproto.MaxShardSize},

		{desc: "empty", in: "", res: parseMore},
		{desc: "PUT prefix", in: "PUT /v1/sh", res: parseMore},
		{desc: "method prefix", in: "GE", res: parseMore},
		{desc: "path prefix", in: get[:20], res: parseMore},
		{desc: "no blank line yet", in: get + "/1 HTTP/1.1\r\nHost: a\r\n", res: parseMore},

		{desc: "PUT without length", in: "PUT /v1/shards/" + testHex + "/1 HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "PUT of all shards", in: "PUT /v1/shards/" + testHex + " HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", res: parseDecline},
		{desc: "PUT two lengths", in: "PUT /v1/shards/" + testHex + "/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", res: parseDecline},
		{desc: "PUT too long", in: "PUT /v1/shards/" + testHex + "/1 HTTP/1.1\r\nHost: a\r\nContent-Length: " + fmt.Sprint(fleetproto.MaxShardSize+1) + "\r\n\r\n", res: parseDecline},
		{desc: "PUT signed length", in: "PUT /v1/shards/" + testHex + "/1 HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", res: parseDecline},
		{desc: "PUT chunked", in: "PUT /v1/shards/" + testHex + "/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", res: parseDecline},
		{desc: "PUT expect", in: "PUT /v1/shards/" + testHex + "/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", res: parseDecline},
		{desc: "POST", in: "POST /v1/shards/" + testHex + "/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", res: parseDecline},
		{desc: "HEAD", in: "HEAD /v1/shards/" + testHex + "/1 HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "healthz", in: "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "lower-case method", in: "get /v1/shards/" + testHex + " HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "upper-case hex", in: "GET /v1/shards/" + strings.ToUpper(testHex) + " HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "short name", in: "GET /v1/shards/" + testHex[2:] + " HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "leading zero", in: get + "/03 HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "index 00", in: get + "/00 HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "index too big", in: get + "/32 HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "trailing slash", in: get + "/ HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "query", in: get + "/1?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "escaped", in: get + "%2F1 HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "HTTP/1.0", in: get + "/1 HTTP/1.0\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "two spaces", in: get + "/1  HTTP/1.1\r\nHost: a\r\n\r\n", res: parseDecline},
		{desc: "no Host", in: get + "/1 HTTP/1.1\r\nUser-Agent: x\r\n\r\n", res: parseDecline},
		{desc: "two Hosts", in: get + "/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", res: parseDecline},
		{desc: "odd Host", in: get + "/1 HTTP/1.1\r\nHost: a/b\r\n\r\n", res: parseDecline},
		{desc: "body length", in: get + "/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", res: parseDecline},
		{desc: "chunked", in: get + "/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", res: parseDecline},
		{desc: "expect", in: get + "/1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", res: parseDecline},
		{desc: "upgrade", in: get + "/1 HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n", res: parseDecline},
		{desc: "connection upgrade", in: get + "/1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n", res: parseDecline},
		{desc: "bare LF", in: get + "/1 HTTP/1.1\nHost: a\n\r\n\r\n", res: parseDecline},
		{desc: "bare-LF head", in: get + "/1 HTTP/1.1\nHost: a\n\n", res: parseDecline},
		{desc: "bare-LF request line only", in: get + "/1 HTTP/1.1\n", res: parseDecline},
		{desc: "bare LF after the headers", in: get + "/1 HTTP/1.1\r\nHost: a\r\n\n", res: parseDecline},
		{desc: "bad line before the end", in: get + "/1 HTTP/1.1\r\nHost: a\r\nBroken\r\n", res: parseDecline},
		{desc: "bad request line before the end", in: get + "/1 HTTP/1.0\r\n", res: parseDecline},
		{desc: "bare LF in headers", in: get + "/1 HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", res: parseDecline},
		{desc: "no colon", in: get + "/1 HTTP/1.1\r\nHost: a\r\nBroken\r\n\r\n", res: parseDecline},
		{desc: "folded line", in: get + "/1 HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", res: parseDecline},
		{desc: "space before colon", in: get + "/1 HTTP/1.1\r\nHost : a\r\n\r\n", res: parseDecline},
		{desc: "control byte", in: get + "/1 HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", res: parseDecline},
		{desc: "head too long", in: get + "/1 HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("y", maxFastHead) + "\r\n\r\n", res: parseDecline},
		{desc: "unterminated, too long", in: get + "/1 HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("y", maxFastHead), res: parseDecline},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			req, n, res := parseFastRequest([]byte(tt.in))
			if res != tt.res {
				t.Fatalf("parseFastRequest(%q) result = %d, want %d", tt.in, res, tt.res)
			}
			if res != parseOK {
				return
			}
			wantN := tt.n
			if wantN == 0 {
				wantN = len(tt.in)
			}
			if n != wantN || req.name != name || req.idx != tt.idx || req.close != tt.close || req.put != tt.put || req.length != tt.len {
				t.Errorf("parseFastRequest(%q) = put %v %x %d length %d close %v, n %d; want put %v %x %d length %d close %v, n %d",
					tt.in, req.put, req.name, req.idx, req.length, req.close, n, tt.put, name, tt.idx, tt.len, tt.close, wantN)
			}
		})
	}
}

// FuzzParseFastRequest: whatever the fast path accepts, net/http reads as
// the same request (method, path, index, Connection: close, body length)
// with a head of the same length; a prefix is asked to wait only below the
// head bound.
func FuzzParseFastRequest(f *testing.F) {
	get := "GET /v1/shards/" + testHex
	for _, s := range []string{
		get + "/3 HTTP/1.1\r\nHost: a:1\r\n\r\n",
		get + " HTTP/1.1\r\nHost: a\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
		get + "/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
		get + "/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
		"PUT /v1/shards/" + testHex + "/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
		get + "/1 HTTP/1.1\r\nHost: a\r\n X: y\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, n, res := parseFastRequest(b)
		switch res {
		case parseMore:
			if len(b) >= maxFastHead {
				t.Fatalf("parseMore for %d bytes, at or over the %d-byte bound", len(b), maxFastHead)
			}
			// net/http, given the same complete lines, must still be
			// reading the head too: not have a request, nor have refused.
			k := bytes.LastIndexByte(b, '\n') + 1
			hr, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:k])))
			if err == nil || !(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				t.Fatalf("fast path waits for more after %q; net/http already has %v, %v", b[:k], hr, err)
			}
			return
		case parseDecline:
			return // net/http answers: the same outcome by construction
		}
		if n <= 0 || n > len(b) || n > maxFastHead {
			t.Fatalf("head length %d of %d bytes", n, len(b))
		}
		src := bytes.NewReader(b)
		br := bufio.NewReader(src)
		hr, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("fast path accepts %q, net/http refuses it: %v", b[:n], err)
		}
		if used := len(b) - br.Buffered() - src.Len(); used != n {
			t.Errorf("fast path reads a %d-byte head, net/http %d bytes of %q", n, used, b)
		}
		pn, pi, err := fleetproto.ParseShardPath(hr.URL.Path)
		if err != nil || pn != req.name || pi != req.idx {
			t.Errorf("fast path: chunk %x index %d; net/http: path %q → %x %d, %v", req.name, req.idx, hr.URL.Path, pn, pi, err)
		}
		method := http.MethodGet
		if req.put {
			method = http.MethodPut
		}
		if hr.Method != method || hr.URL.RawQuery != "" || hr.URL.RawPath != "" || hr.ContentLength != req.length ||
			len(hr.TransferEncoding) != 0 || hr.Close != req.close || hr.Host == "" || len(hr.Header["Host"]) > 0 {
			t.Errorf("net/http reads %q as %s %q query %q, length %d, TE %v, close %v (fast path %v), host %q",
				b[:n], hr.Method, hr.URL, hr.URL.RawQuery, hr.ContentLength, hr.TransferEncoding, hr.Close, req.close, hr.Host)
		}
	})
}

// serveNode runs s.Serve on a loopback port until the test ends.
func serveNode(t *testing.T, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	return l.Addr().String()
}

type answer struct {
	code    int
	header  http.Header
	body    []byte
	readErr error
	close   bool
}

// exchange writes raw to a new connection at once (pipelined) and reads
// n answers; the connection is returned for further checks.
func exchange(t *testing.T, addr, raw string, n int) ([]answer, net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []answer
	for i := range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading answer %d of %d: %v", i+1, n, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, answer{resp.StatusCode, resp.Header, b, err, resp.Close})
	}
	return out, c, br
}

// TestFastPathMatchesNetHTTP: over a real connection, every shard GET the
// fast path answers (memory and disk shards, one or all, hits and misses)
// and every PUT (stored, refused) has net/http's status, headers and body;
// no connection was handed off.
func TestFastPathMatchesNetHTTP(t *testing.T) {
	s, _, n, shards := diskServer(t)
	fast := "http://" + serveNode(t, s)
	slow := httptest.NewServer(s)
	defer slow.Close()
	missing := chunk.Name{1}
	paths := []string{fleetproto.ShardPath(missing, -1), fleetproto.ShardPath(missing, 0), fleetproto.ShardPath(n, -1)}
	for i := range shards {
		paths = append(paths, fleetproto.ShardPath(n, i))
	}
	get := func(url string) answer {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return answer{resp.StatusCode, resp.Header, b, err, resp.Close}
	}
	for round := range 2 { // the second round promotes disk shards
		for _, p := range paths {
			f, h := get(fast+p), get(slow.URL+p)
			if f.readErr != nil || f.code != h.code || !bytes.Equal(f.body, h.body) || f.close != h.close {
				t.Errorf("round %d GET %s: fast path %d, %d bytes, %v; net/http %d, %d bytes", round, p, f.code, len(f.body), f.readErr, h.code, len(h.body))
			}
			for _, k := range []string{"Content-Length", "Content-Type", "X-Content-Type-Options"} {
				if f.header.Get(k) != h.header.Get(k) {
					t.Errorf("round %d GET %s: %s %q from the fast path, %q from net/http", round, p, k, f.header.Get(k), h.header.Get(k))
				}
			}
			if _, err := http.ParseTime(f.header.Get("Date")); err != nil {
				t.Errorf("GET %s: Date %q: %v", p, f.header.Get("Date"), err)
			}
		}
	}
	if want := bytes.Join(shards, nil); !bytes.Equal(get(fast+fleetproto.ShardPath(n, -1)).body, want) {
		t.Errorf("GET all from the fast path: not the 5 shards")
	}

	put := func(url string, body []byte) answer {
		t.Helper()
		req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("PUT %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return answer{resp.StatusCode, resp.Header, b, err, resp.Close}
	}
	k, b := testShard(t, rand.New(rand.NewPCG(3, 3)), 6000, 1)
	for _, tc := range []struct {
		desc string
		path string
		body []byte
		code int
	}{
		{"valid", fleetproto.ShardPath(k.name, 1), b, http.StatusNoContent},
		{"wrong index", fleetproto.ShardPath(k.name, 2), b, http.StatusBadRequest},
		{"not a shard", fleetproto.ShardPath(k.name, 1), bytes.Repeat([]byte("x"), 100), http.StatusBadRequest},
		{"empty", fleetproto.ShardPath(k.name, 1), []byte{}, http.StatusBadRequest},
	} {
		f, h := put(fast+tc.path, tc.body), put(slow.URL+tc.path, tc.body)
		if f.readErr != nil || f.code != tc.code || f.code != h.code || !bytes.Equal(f.body, h.body) {
			t.Errorf("PUT %s: fast path %d %q, %v; net/http %d %q; want %d", tc.desc, f.code, f.body, f.readErr, h.code, h.body, tc.code)
		}
		for _, hk := range []string{"Content-Length", "Content-Type", "X-Content-Type-Options"} {
			if f.header.Get(hk) != h.header.Get(hk) {
				t.Errorf("PUT %s: %s %q from the fast path, %q from net/http", tc.desc, hk, f.header.Get(hk), h.header.Get(hk))
			}
		}
	}
	if got := get(fast + fleetproto.ShardPath(k.name, 1)); !bytes.Equal(got.body, b) {
		t.Errorf("GET after a fast-path PUT: %d bytes, want the %d put", len(got.body), len(b))
	}
	if h := counterValue(s.handoffs); h != 0 {
		t.Errorf("%v connections handed to net/http, want 0", h)
	}
}

// TestFastPathPipelined: pipelined GETs are answered in order on one
// connection, and "Connection: close" closes it after its answer.
func TestFastPathPipelined(t *testing.T) {
	s := newTestServer(t)
	k, b := testShard(t, rand.New(rand.NewPCG(7, 7)), 3000, 1)
	s.store.put(k, b)
	addr := serveNode(t, s)
	p := fleetproto.ShardPath(k.name, 1)
	raw := "GET " + p + " HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET " + fleetproto.ShardPath(k.name, 2) + " HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET " + fleetproto.ShardPath(k.name, -1) + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" +
		"GET " + p + " HTTP/1.1\r\nHost: x\r\n\r\n"
	got, _, br := exchange(t, addr, raw, 3)
	want := []struct {
		code int
		body []byte
	}{{200, b}, {404, []byte("shard not found\n")}, {200, b}}
	for i, w := range want {
		if got[i].code != w.code || !bytes.Equal(got[i].body, w.body) {
			t.Errorf("answer %d = %d, %q…; want %d, %d bytes", i+1, got[i].code, got[i].body[:min(20, len(got[i].body))], w.code, len(w.body))
		}
	}
	if !got[2].close {
		t.Errorf("answer to Connection: close does not say Connection: close")
	}
	if extra, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after Connection: close: read %q, %v; want EOF", extra, err)
	}
	if h := counterValue(s.handoffs); h != 0 {
		t.Errorf("%v connections handed to net/http, want 0", h)
	}
}

// TestFastPathHandsOff: on one connection, a GET and a PUT answered by the
// fast path, then a chunked PUT, a GET, /healthz and a GET with a head too
// long for the fast path: net/http gets the connection at the chunked PUT
// with the bytes already read, and answers it and what follows.
func TestFastPathHandsOff(t *testing.T) {
	s := newTestServer(t)
	r := rand.New(rand.NewPCG(8, 8))
	k1, b1 := testShard(t, r, 3000, 1)
	k2, b2 := testShard(t, r, 2000, 0)
	s.store.put(k1, b1)
	addr := serveNode(t, s)
	long := "X-Long: " + strings.Repeat("z", 2*maxFastHead) + "\r\n"
	k3, b3 := testShard(t, r, 1000, 2)
	raw := "GET " + fleetproto.ShardPath(k1.name, 1) + " HTTP/1.1\r\nHost: x\r\n\r\n" +
		"PUT " + fleetproto.ShardPath(k2.name, 0) + " HTTP/1.1\r\nHost: x\r\nContent-Length: " + fmt.Sprint(len(b2)) + "\r\n\r\n" + string(b2) +
		"PUT " + fleetproto.ShardPath(k3.name, 2) + " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n", len(b3)) + string(b3) + "\r\n0\r\n\r\n" +
		"GET " + fleetproto.ShardPath(k2.name, -1) + " HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET " + fleetproto.ShardPath(k1.name, 1) + " HTTP/1.1\r\nHost: x\r\n" + long + "\r\n"
	got, _, _ := exchange(t, addr, raw, 6)
	want := []struct {
		code int
		body []byte
	}{{200, b1}, {204, nil}, {204, nil}, {200, b2}, {200, []byte("ok\n")}, {200, b1}}
	for i, w := range want {
		if got[i].code != w.code || !bytes.Equal(got[i].body, w.body) {
			t.Errorf("answer %d = %d, %d bytes; want %d, %d bytes", i+1, got[i].code, len(got[i].body), w.code, len(w.body))
		}
	}
	if h := counterValue(s.handoffs); h != 1 {
		t.Errorf("%v connections handed to net/http, want 1", h)
	}
	if _, ok := s.store.has(k3); !ok {
		t.Errorf("the chunked PUT (answered by net/http) stored nothing")
	}
	// A connection whose first request is too long goes to net/http at once.
	got, _, _ = exchange(t, addr, "GET "+fleetproto.ShardPath(k1.name, 1)+" HTTP/1.1\r\nHost: x\r\n"+long+"\r\n", 1)
	if got[0].code != 200 || !bytes.Equal(got[0].body, b1) {
		t.Errorf("GET with a long head = %d, %d bytes; want 200 and the shard", got[0].code, len(got[0].body))
	}
}

// TestFastPathBareLF: requests whose lines end in a bare LF, which net/http
// accepts, are answered on a fast-path connection exactly as net/http
// answers them (they used to wait for a CRLF blank line until the header
// timeout closed the connection).
func TestFastPathBareLF(t *testing.T) {
	s := newTestServer(t)
	k, b := testShard(t, rand.New(rand.NewPCG(10, 10)), 2000, 1)
	s.store.put(k, b)
	fast := serveNode(t, s)
	slow := httptest.NewServer(s)
	defer slow.Close()
	p := fleetproto.ShardPath(k.name, 1)
	for _, raw := range []string{
		"GET " + p + " HTTP/1.1\nHost: x\n\n",
		"GET " + p + " HTTP/1.1\r\nHost: x\n\n",
		"GET " + p + " HTTP/1.1\r\nHost: x\r\n\n",
		"GET " + fleetproto.ShardPath(chunk.Name{7}, 0) + " HTTP/1.1\nHost: x\n\n",
		"GET " + p + " HTTP/1.1\nX: y\n\n", // no Host: refused
	} {
		f, _, _ := exchange(t, fast, raw, 1)
		h, _, _ := exchange(t, slow.Listener.Addr().String(), raw, 1)
		if f[0].code != h[0].code || !bytes.Equal(f[0].body, h[0].body) {
			t.Errorf("%q: fast-path node answers %d, %d bytes; net/http %d, %d bytes", raw, f[0].code, len(f[0].body), h[0].code, len(h[0].body))
		}
	}
}

// TestFastPathTimeouts: an idle connection and one that stalls within a
// request head are closed after their timeouts.
func TestFastPathTimeouts(t *testing.T) {
	s := newTestServer(t)
	s.idleTimeout, s.headerTimeout = 300*time.Millisecond, 200*time.Millisecond
	addr := serveNode(t, s)
	for _, tc := range []struct{ desc, raw string }{
		{"idle", ""},
		{"stalled head", "GET /v1/shards/" + testHex[:10]},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tc.raw)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			start := time.Now()
			n, err := c.Read(make([]byte, 1))
			if n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("read = %d, %v; want EOF", n, err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("closed after %v", d)
			}
		})
	}
}

// TestFastPathShutdown: cancelling Serve closes idle fast-path connections
// and returns promptly.
func TestFastPathShutdown(t *testing.T) {
	s := newTestServer(t)
	k, b := testShard(t, rand.New(rand.NewPCG(9, 9)), 1000, 0)
	s.store.put(k, b)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	_, c, br := exchange(t, l.Addr().String(), "GET "+fleetproto.ShardPath(k.name, 0)+" HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("Serve did not return within 4 s of cancel with one idle connection")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Serve returned %v after cancel, want well under 1 s", d)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection after shutdown: %v, want EOF", err)
	}
}

// TestFastPathOpenFileCache: disk shards are sent from cached descriptors
// (at most maxOpen, shared by concurrent responses at explicit offsets),
// byte for byte under churn; replacing a shard drops its descriptor, and
// stopping Serve closes them all.
func TestFastPathOpenFileCache(t *testing.T) {
	s, _, n, shards := diskServer(t)
	var ticks time.Duration // every hit outside the promotion window
	s.store.now = func() time.Time { ticks += 2 * diskPromoteWindow; return time.Unix(0, 0).Add(ticks) }
	s.store.maxOpen = 2
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	base := "http://" + l.Addr().String()
	cl := &http.Client{Transport: cachefleet.NewTransport()}
	defer cl.CloseIdleConnections()
	get := func(path string) ([]byte, error) {
		resp, err := cl.Get(base + path)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return io.ReadAll(resp.Body)
	}
	errc := make(chan error, 8)
	for w := range 8 {
		go func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 40 {
				i := r.IntN(len(shards))
				p, want := fleetproto.ShardPath(n, i), shards[i]
				if r.IntN(4) == 0 {
					p, want = fleetproto.ShardPath(n, -1), bytes.Join(shards, nil)
				}
				b, err := get(p)
				if err == nil && !bytes.Equal(b, want) {
					err = fmt.Errorf("GET %s: %d bytes, not the %d stored", p, len(b), len(want))
				}
				if err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	s.store.mu.Lock()
	open := len(s.store.openFiles)
	s.store.mu.Unlock()
	if open == 0 || open > 2 {
		t.Errorf("%d files kept open, want 1..2", open)
	}
	if h := counterValue(s.handoffs); h != 0 {
		t.Errorf("%v connections handed to net/http, want 0", h)
	}

	// Replace a cached disk shard: its descriptor goes, the new bytes come.
	s.store.mu.Lock()
	k := s.store.openFiles[0].key
	s.store.mu.Unlock()
	nb := bytes.Clone(shards[k.idx])
	nb[len(nb)-1] ^= 0xff // same header, other payload: the node cannot tell
	s.store.put(k, nb)
	if b, err := get(fleetproto.ShardPath(k.name, int(k.idx))); err != nil || !bytes.Equal(b, nb) {
		t.Errorf("GET after replacing the shard: %d bytes, %v; want the new %d bytes", len(b), err, len(nb))
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve = %v", err)
	}
	s.store.mu.Lock()
	open = len(s.store.openFiles)
	s.store.mu.Unlock()
	if open != 0 {
		t.Errorf("%d files still open after Serve returned", open)
	}
}

// TestFastPathShardSizes: memory shards on both sides of the first write's
// 4 KiB, alone and concatenated, arrive byte for byte.
func TestFastPathShardSizes(t *testing.T) {
	s := newTestServer(t)
	addr := "http://" + serveNode(t, s)
	cd, _ := newCodec(4, 5)
	r := rand.New(rand.NewPCG(11, 11))
	for _, size := range []int{1, 4 * (firstWrite - 200), 4 * (firstWrite - fleetproto.HeaderSize), 4 * firstWrite, 70000, 600000} {
		data, n := randomChunk(r, size)
		shards, err := cd.encode(n, data)
		if err != nil {
			t.Fatal(err)
		}
		for i, sh := range shards {
			s.store.put(shardKey{n, uint8(i)}, sh)
		}
		for i := -1; i < len(shards); i++ {
			want := bytes.Join(shards, nil)
			if i >= 0 {
				want = shards[i]
			}
			resp, err := http.Get(addr + fleetproto.ShardPath(n, i))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
				t.Errorf("chunk of %d bytes, GET shard %d = %d, %d bytes, %v; want the %d bytes", size, i, resp.StatusCode, len(got), err, len(want))
			}
		}
	}
}
