// Command s3 measures put and get throughput of 512 KiB objects through
// lode's S3 backend (internal/store/s3) against a running server, at a
// given concurrency. bench/s3bench.sh runs it next to s3cmd.
//
//	AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… go run ./bench/s3 \
//	    -url 's3://bucket/prefix?endpoint=http://127.0.0.1:7070&path_style=true' -n 200 -c 16
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lode-dev/lode/internal/store/s3"
)

func main() {
	url := flag.String("url", "", "s3:// URL of the store (credentials from AWS_* variables)")
	n := flag.Int("n", 200, "number of objects")
	size := flag.Int("size", 512<<10, "object size in bytes")
	conc := flag.Int("c", 1, "concurrent requests")
	flag.Parse()
	if err := run(context.Background(), *url, *n, *size, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "s3bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, url string, n, size, conc int) error {
	c, err := s3.ParseURL(url, os.Getenv)
	if err != nil {
		return err
	}
	st, err := s3.New(ctx, c)
	if err != nil {
		return err
	}
	objs := make([][]byte, n)
	for i := range objs {
		objs[i] = make([]byte, size)
		for j := range objs[i] {
			objs[i][j] = byte(i*31 + j*7 + j>>9)
		}
	}
	key := func(i int) string { return fmt.Sprintf("obj%06d", i) }
	report := func(op string, d time.Duration) {
		mb := float64(n*size) / 1e6
		fmt.Printf("lode %-3s c=%-2d n=%d size=%d: %.3f s, %.1f MB/s, %.0f objects/s\n",
			op, conc, n, size, d.Seconds(), mb/d.Seconds(), float64(n)/d.Seconds())
	}
	each := func(fn func(i int) error) (time.Duration, error) {
		start := time.Now()
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(conc)
		for i := range n {
			g.Go(func() error {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				return fn(i)
			})
		}
		err := g.Wait()
		return time.Since(start), err
	}
	d, err := each(func(i int) error { return st.Put(ctx, key(i), objs[i]) })
	if err != nil {
		return err
	}
	report("put", d)
	d, err = each(func(i int) error {
		b, err := st.Get(ctx, key(i), nil)
		if err == nil && len(b) != size {
			err = fmt.Errorf("get %s: %d bytes, want %d", key(i), len(b), size)
		}
		return err
	})
	if err != nil {
		return err
	}
	report("get", d)
	return nil
}
