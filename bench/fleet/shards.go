package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/fleetproto"
)

// runShards fills chunks into one node (all K shards land on it: fewer nodes
// than K wrap around) and copies every shard to www at its API path, so a
// static server serves the same bytes at the same URLs. It writes
// www/paths.txt, one path a line.
func runShards(ctx context.Context, nodes []string, count int, www string, seed uint64) error {
	if len(nodes) != 1 || www == "" {
		return errors.New("shards: need exactly one -nodes entry and -www")
	}
	cl, err := cachefleet.NewClient(cachefleet.ClientConfig{Nodes: nodes})
	if err != nil {
		return err
	}
	defer cl.Close()
	t0 := time.Now()
	data, names := randomChunks(seed, count, chunkSize)
	if err := fillAll(ctx, cl, data, names, 4); err != nil {
		return err
	}
	base := strings.TrimSuffix(cl.Nodes()[0], "/")
	var paths []string
	var bytes int64
	for _, n := range names {
		for i := range 5 {
			p := fleetproto.ShardPath(n, i)
			b, err := get(ctx, base+p)
			if err != nil {
				return err
			}
			dst := filepath.Join(www, filepath.FromSlash(p))
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				return err
			}
			paths = append(paths, p)
			bytes += int64(len(b))
		}
	}
	if err := os.WriteFile(filepath.Join(www, "paths.txt"), []byte(strings.Join(paths, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("filled %d chunks into %s and copied %d shards (%d bytes, %d each) to %s in %.1f s\n",
		count, base, len(paths), bytes, bytes/int64(len(paths)), www, time.Since(t0).Seconds())
	return nil
}

func get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("getting %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("getting %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("getting %s: %s", url, resp.Status)
	}
	return b, nil
}
