package storeurl

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/file"
	"github.com/lode-dev/lode/internal/store/mem"
	"github.com/lode-dev/lode/internal/store/s3"
)

// Open opens the store raw names:
//
//	file:///var/lib/lode   a directory (store/file); a bare path means the same
//	s3://bucket/prefix?…   a bucket (store/s3; see s3.ParseURL and docs/s3.md)
//	mem://name             an in-process store; the same name is the same store
//
// log may be nil. Opening an s3:// store checks the bucket and the
// credentials (one request).
func Open(ctx context.Context, raw string, log *slog.Logger) (store.Store, error) {
	return open(ctx, raw, log, false)
}

// OpenLazy is Open for a command whose first request should not wait: an
// s3:// store checks its bucket and credentials beside the first requests
// (s3.Config.CheckLater), and a request that fails returns the check's
// error when the check failed. The one-shot commands that read an image
// (lode run, mount, inspect) open their store this way.
func OpenLazy(ctx context.Context, raw string, log *slog.Logger) (store.Store, error) {
	return open(ctx, raw, log, true)
}

func open(ctx context.Context, raw string, log *slog.Logger, lazy bool) (store.Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		if raw == "" {
			return nil, fmt.Errorf("opening store: empty URL")
		}
		if strings.Contains(raw, ":") && !strings.HasPrefix(raw, "/") && !strings.HasPrefix(raw, ".") {
			// "s3:bucket" or "C:…": almost certainly not a relative path.
			return nil, fmt.Errorf("opening store %q: not a URL (want file://DIR, s3://BUCKET/PREFIX or mem://NAME) nor a path", raw)
		}
		scheme, rest = "file", raw
	}
	switch scheme {
	case "file":
		dir := rest
		if strings.HasPrefix(raw, "file://") {
			u, err := url.Parse(raw)
			if err != nil {
				return nil, fmt.Errorf("opening store %q: %w", raw, err)
			}
			if u.Host != "" && u.Host != "localhost" {
				return nil, fmt.Errorf("opening store %q: file URLs name a local directory (file:///abs/dir or a bare path), not host %q", raw, u.Host)
			}
			if u.RawQuery != "" {
				return nil, fmt.Errorf("opening store %q: file stores take no parameters", raw)
			}
			dir = u.Path
		}
		if dir == "" {
			return nil, fmt.Errorf("opening store %q: no directory", raw)
		}
		return file.New(dir)
	case "s3":
		c, err := s3.ParseURL(raw, os.Getenv)
		if err != nil {
			return nil, fmt.Errorf("opening store: %w", err)
		}
		c.Log = log.With(slog.String("component", "store"))
		c.CheckLater = lazy
		return s3.New(ctx, c)
	case "mem":
		if rest == "" || strings.ContainsAny(rest, "/?#") {
			return nil, fmt.Errorf("opening store %q: want mem://NAME (a name without / ? #)", raw)
		}
		return mem.Open(rest), nil
	default:
		return nil, fmt.Errorf("opening store %q: unknown scheme %q (want file, s3 or mem)", raw, scheme)
	}
}
