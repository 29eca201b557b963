// Command latproxy is an HTTP reverse proxy that adds a fixed latency to
// every request before forwarding it: put it in front of an S3 server on
// 127.0.0.1 to make it behave like a distant origin (bench/profile.sh).
// The Host header passes through unchanged, so S3 signatures made for the
// proxy's address verify at the server.
//
//	latproxy -listen 127.0.0.1:9100 -target http://127.0.0.1:9000 -delay 5ms
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9100", "address to serve on")
	target := flag.String("target", "", "URL of the server to forward to")
	delay := flag.Duration("delay", 5*time.Millisecond, "latency added to each request")
	flag.Parse()
	u, err := url.Parse(*target)
	if err != nil || u.Host == "" {
		log.Fatalf("latproxy: -target %q: want http://HOST:PORT", *target)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(*delay)
		rp.ServeHTTP(w, r)
	})
	log.Printf("latproxy: %s -> %s, +%v per request", *listen, u, *delay)
	srv := &http.Server{Addr: *listen, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
