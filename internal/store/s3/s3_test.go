package s3_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/s3"
	"github.com/lode-dev/lode/internal/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	lodetest.StopS3Servers()
	os.Exit(code)
}

var prefixSeq atomic.Int64

func config(srv lodetest.S3) s3.Config {
	return s3.Config{
		Bucket:    srv.Bucket,
		Endpoint:  srv.Endpoint,
		Region:    srv.Region,
		PathStyle: true,
		AccessKey: srv.AccessKey,
		SecretKey: srv.SecretKey,
	}
}

func open(t testing.TB, c s3.Config) *s3.Store {
	t.Helper()
	s, err := s3.New(t.Context(), c)
	if err != nil {
		t.Fatalf("s3.New: %v", err)
	}
	return s
}

// newStore returns a store on a new prefix of one bucket of the shared
// server: cheaper than a bucket per test, and it checks prefixing.
func newStore(t testing.TB, srv lodetest.S3) store.Store {
	c := config(srv)
	c.Prefix = fmt.Sprintf("p%d/", prefixSeq.Add(1))
	return open(t, c)
}

func TestConformance(t *testing.T) {
	srv := lodetest.S3Server(t)
	storetest.Run(t, func(t *testing.T) store.Store { return newStore(t, srv) })
}

func BenchmarkStore(b *testing.B) {
	srv := lodetest.S3Server(b)
	storetest.Bench(b, func(b *testing.B) store.Store { return newStore(b, srv) })
}

func TestPrefixIsolation(t *testing.T) {
	srv := lodetest.S3Server(t)
	a, b := newStore(t, srv), newStore(t, srv)
	if err := a.Put(t.Context(), "k", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(t.Context(), "k", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(k) under another prefix = %v, want ErrNotFound", err)
	}
	whole := open(t, config(srv))
	var keys []string
	whole.List(t.Context(), "", func(k string, _ int64) error { keys = append(keys, k); return nil })
	if len(keys) != 1 || !strings.HasSuffix(keys[0], "/k") || keys[0] == "k" {
		t.Errorf("List of the whole bucket = %q, want one key p…/k", keys)
	}
}
