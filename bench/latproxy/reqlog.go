package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// request is one line of the request log: written by hand as a tab-separated
// line (start and end in Unix ns, method, path, response bytes, status) so
// that shell scripts can read it with awk too.
type request struct {
	Start, End time.Time
	Method     string
	Path       string
	Bytes      int64
	Status     int
}

type reqLog struct {
	mu sync.Mutex
	f  *os.File
}

func openReqLog(path string) (*reqLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open request log %s: %w", path, err)
	}
	return &reqLog{f: f}, nil
}

func (l *reqLog) add(r request) {
	line := fmt.Sprintf("%d\t%d\t%s\t%s\t%d\t%d\n", r.Start.UnixNano(), r.End.UnixNano(), r.Method,
		strings.ReplaceAll(r.Path, "\t", "%09"), r.Bytes, r.Status)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.f.WriteString(line) // one write per line (O_APPEND): lines never interleave
}

func parseReqLog(rd io.Reader) ([]request, error) {
	var out []request
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		f := strings.Split(sc.Text(), "\t")
		if len(f) != 6 {
			return nil, fmt.Errorf("line %d: %d fields, want 6", n, len(f))
		}
		var v [4]int64
		for i, s := range []string{f[0], f[1], f[4], f[5]} {
			x, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			v[i] = x
		}
		out = append(out, request{Start: time.Unix(0, v[0]), End: time.Unix(0, v[1]), Method: f[2], Path: f[3], Bytes: v[2], Status: int(v[3])})
	}
	return out, sc.Err()
}

// serialCount is the length of the longest chain of requests r1, r2, … in
// which each starts at or after the end of the one before: the number of
// round trips the client waited for one after another, whatever it did in
// parallel besides. Requests that overlap in time are never in one chain.
// In order of start, each request's chain is one more than the longest chain
// of a request that ended by its start (O(n²); a start has a few hundred).
func serialCount(reqs []request) int {
	rs := append([]request(nil), reqs...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start.Before(rs[j].Start) })
	chain := make([]int, len(rs))
	longest := 0
	for i, r := range rs {
		chain[i] = 1
		for j := range i {
			if !rs[j].End.After(r.Start) && chain[j]+1 > chain[i] {
				chain[i] = chain[j] + 1
			}
		}
		longest = max(longest, chain[i])
	}
	return longest
}
