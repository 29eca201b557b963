// Command tlsload measures shard GET throughput of one HTTP(S) server with
// a fixed number of keep-alive connections, optionally presenting a client
// certificate (mutual TLS), which wrk cannot. bench/fleettls.sh runs it
// against a cache node with and without TLS and against nginx serving the
// same shard files with TLS, in the same run (docs/benchmarks.md).
//
//	tlsload -url https://127.0.0.1:7511 -paths www/paths.txt -c 16 -d 5s \
//	        -cert w.crt -key w.key -ca ca.crt
//	tlsload -fill -url https://… -www www …   (PUT every shard file first)
//
// Output: one line "conns req/s MB/s p50_us p99_us errors".
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

func main() {
	url := flag.String("url", "", "server base URL")
	pathsFile := flag.String("paths", "", "file of request paths, one a line")
	conns := flag.Int("c", 1, "connections (one goroutine each)")
	dur := flag.Duration("d", 5*time.Second, "duration")
	cert := flag.String("cert", "", "client certificate (PEM)")
	key := flag.String("key", "", "client key (PEM)")
	ca := flag.String("ca", "", "CA of the server's certificate (PEM)")
	fill := flag.Bool("fill", false, "PUT every file of -www at its path instead of measuring")
	www := flag.String("www", "", "with -fill: the directory of shard files (paths from -paths)")
	flag.Parse()
	paths, err := readLines(*pathsFile)
	if err != nil {
		fail(err)
	}
	tc := &tls.Config{}
	if *ca != "" {
		b, err := os.ReadFile(*ca)
		if err != nil {
			fail(err)
		}
		tc.RootCAs = x509.NewCertPool()
		tc.RootCAs.AppendCertsFromPEM(b)
		tc.InsecureSkipVerify = true // the nodes' certificates name their IPs; chain checked below
		tc.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = c.Verify(x509.VerifyOptions{Roots: tc.RootCAs})
			return err
		}
	}
	if *cert != "" {
		kp, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			fail(err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	newClient := func() *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 1, DisableCompression: true}}
	}
	if *fill {
		c := newClient()
		for _, p := range paths {
			b, err := os.ReadFile(filepath.Join(*www, filepath.FromSlash(p)))
			if err != nil {
				fail(err)
			}
			req, _ := http.NewRequest(http.MethodPut, *url+p, bytes.NewReader(b))
			resp, err := c.Do(req)
			if err != nil {
				fail(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				fail(fmt.Errorf("PUT %s: %s", p, resp.Status))
			}
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var bytesRead, errs int64
	var wg sync.WaitGroup
	for i := range *conns {
		wg.Go(func() {
			c := newClient()
			r := rand.New(rand.NewPCG(uint64(i), 7919))
			var my []time.Duration
			var n, e int64
			for ctx.Err() == nil {
				t0 := time.Now()
				resp, err := c.Get(*url + paths[r.IntN(len(paths))])
				if err != nil {
					e++
					continue
				}
				m, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					e++
					continue
				}
				my = append(my, time.Since(t0))
				n += m
			}
			mu.Lock()
			lat, bytesRead, errs = append(lat, my...), bytesRead+n, errs+e
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(lat)
	q := func(f float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(f*float64(len(lat)-1))]
	}
	secs := dur.Seconds()
	fmt.Printf("%d %.0f %.0f %d %d %d\n", *conns, float64(len(lat))/secs, float64(bytesRead)/secs/1e6,
		q(0.5).Microseconds(), q(0.99).Microseconds(), errs)
}

func readLines(p string) ([]string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tlsload:", err)
	os.Exit(1)
}
