// Command latproxy is an HTTP reverse proxy that adds a fixed latency to
// every request before forwarding it: put it in front of an S3 server or a
// registry on 127.0.0.1 to make it behave like a distant origin
// (bench/profile.sh, bench/coldstart.sh). The Host header passes through
// unchanged, so S3 signatures made for the proxy's address verify at the
// server.
//
// With -log, it appends one line per request to a file (reqlog.go): when it
// arrived and when its response ended, method, path and response bytes.
// "latproxy summary" reads that log and prints, for a window of time, the
// requests, their bytes and the serial-request count: the longest chain of
// requests each of which started after the previous one ended (the round
// trips a client waited for one after another). Counting at the proxy keeps
// the count independent of the client: lode and the stargz snapshotter are
// measured the same way.
//
//	latproxy -listen 127.0.0.1:9100 -target http://127.0.0.1:9000 -delay 5ms -log /tmp/req.log
//	latproxy summary -log /tmp/req.log -from 1700000000000000000 -until 1700000001000000000
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "summary" {
		summary(os.Args[2:])
		return
	}
	listen := flag.String("listen", "127.0.0.1:9100", "address to serve on")
	target := flag.String("target", "", "URL of the server to forward to")
	delay := flag.Duration("delay", 5*time.Millisecond, "latency added to each request")
	logPath := flag.String("log", "", "append a line per request (start, end, method, path, bytes) to this file")
	flag.Parse()
	u, err := url.Parse(*target)
	if err != nil || u.Host == "" {
		log.Fatalf("latproxy: -target %q: want http://HOST:PORT", *target)
	}
	var rl *reqLog
	if *logPath != "" {
		if rl, err = openReqLog(*logPath); err != nil {
			log.Fatalf("latproxy: -log: %v", err)
		}
	}
	h := handler(u, *delay, rl)
	log.Printf("latproxy: %s -> %s, +%v per request", *listen, u, *delay)
	srv := &http.Server{Addr: *listen, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// handler forwards to target after delay and logs each request to rl (if
// not nil) once its response has ended.
func handler(target *url.URL, delay time.Duration, rl *reqLog) http.Handler {
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		time.Sleep(delay)
		cw := &countingWriter{ResponseWriter: w}
		rp.ServeHTTP(cw, r)
		if rl != nil {
			rl.add(request{Start: start, End: time.Now(), Method: r.Method, Path: r.URL.RequestURI(), Bytes: cw.n, Status: cw.status})
		}
	})
}

// countingWriter counts the response body bytes and keeps the status.
type countingWriter struct {
	http.ResponseWriter
	n      int64
	status int
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// Flush lets streamed responses (registry blobs) through as they come.
func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func summary(args []string) {
	fs := flag.NewFlagSet("summary", flag.ExitOnError)
	logPath := fs.String("log", "", "request log written by latproxy -log")
	from := fs.Int64("from", 0, "count requests that started at or after this time (Unix ns)")
	until := fs.Int64("until", 0, "and before this time (Unix ns; 0: no end)")
	fs.Parse(args)
	f, err := os.Open(*logPath)
	if err != nil {
		log.Fatalf("latproxy summary: %v", err)
	}
	defer f.Close()
	reqs, err := parseReqLog(f)
	if err != nil {
		log.Fatalf("latproxy summary: %s: %v", *logPath, err)
	}
	var win []request
	for _, r := range reqs {
		ns := r.Start.UnixNano()
		if ns >= *from && (*until == 0 || ns < *until) {
			win = append(win, r)
		}
	}
	var bytes int64
	for _, r := range win {
		bytes += r.Bytes
	}
	fmt.Printf("requests %d bytes %d serial %d\n", len(win), bytes, serialCount(win))
}
