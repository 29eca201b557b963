package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSerialCount(t *testing.T) {
	at := func(start, end int) request {
		return request{Start: time.Unix(0, int64(start)), End: time.Unix(0, int64(end))}
	}
	for _, tc := range []struct {
		name string
		reqs []request
		want int
	}{
		{"none", nil, 0},
		{"one", []request{at(0, 10)}, 1},
		{"in series", []request{at(0, 10), at(10, 20), at(25, 30)}, 3},
		{"in parallel", []request{at(0, 10), at(1, 11), at(2, 12), at(3, 13)}, 1},
		{"overlap breaks the chain", []request{at(0, 10), at(5, 15), at(15, 20)}, 2},
		// Two metadata round trips, then a burst of four in flight, then
		// one more: 4 in series, whatever order the log has them in.
		{"metadata then burst", []request{at(40, 50), at(0, 10), at(20, 30), at(21, 31), at(22, 32), at(23, 33), at(11, 19)}, 4},
		{"long one beside a chain", []request{at(0, 100), at(0, 10), at(10, 20), at(20, 30), at(100, 110)}, 4},
	} {
		if got := serialCount(tc.reqs); got != tc.want {
			t.Errorf("%s: serialCount = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestReqLogRoundTrip(t *testing.T) {
	want := request{Start: time.Unix(0, 1700000000123456789), End: time.Unix(0, 1700000000223456789), Method: "GET", Path: "/b/k?x=1", Bytes: 524288, Status: 206}
	path := filepath.Join(t.TempDir(), "req.log")
	l, err := openReqLog(path)
	if err != nil {
		t.Fatal(err)
	}
	l.add(want)
	l.f.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseReqLog(bytes.NewReader(data))
	if err != nil || len(got) != 1 || !got[0].Start.Equal(want.Start) || !got[0].End.Equal(want.End) ||
		got[0].Method != want.Method || got[0].Path != want.Path || got[0].Bytes != want.Bytes || got[0].Status != want.Status {
		t.Fatalf("parseReqLog = %+v, %v; want %+v", got, err, want)
	}
	if _, err := parseReqLog(bytes.NewBufferString("1\t2\tGET\n")); err == nil {
		t.Error("parseReqLog accepted a line of 3 fields")
	}
}

// TestHandlerLogs: requests through the proxy reach the server and are logged
// with their response bytes and status, each ending after it started; three
// requests one after another make a serial chain of 3.
func TestHandlerLogs(t *testing.T) {
	body := strings.Repeat("x", 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, body)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	path := filepath.Join(t.TempDir(), "req.log")
	rl, err := openReqLog(path)
	if err != nil {
		t.Fatal(err)
	}
	px := httptest.NewServer(handler(u, time.Millisecond, rl))
	defer px.Close()
	for _, p := range []string{"/a", "/b?x=1", "/missing"} {
		resp, err := http.Get(px.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	rl.f.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	reqs, err := parseReqLog(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 3 {
		t.Fatalf("logged %d requests, want 3:\n%s", len(reqs), data)
	}
	want := []struct {
		path   string
		bytes  int64
		status int
	}{{"/a", 1000, 200}, {"/b?x=1", 1000, 200}, {"/missing", int64(len("404 page not found\n")), 404}}
	for i, w := range want {
		r := reqs[i]
		if r.Method != "GET" || r.Path != w.path || r.Bytes != w.bytes || r.Status != w.status || r.End.Before(r.Start.Add(time.Millisecond)) {
			t.Errorf("request %d logged as %+v, want GET %s, %d bytes, status %d, at least 1ms long", i, r, w.path, w.bytes, w.status)
		}
	}
	if got := serialCount(reqs); got != 3 {
		t.Errorf("serialCount of three requests one after another = %d, want 3", got)
	}
}
