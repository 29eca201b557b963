package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/lode-dev/lode/internal/store"
)

// Sentinel errors for failures that retrying cannot fix.
var (
	// ErrAccessDenied: the server refused the credentials or the request
	// (wrong keys, expired token, missing permission).
	ErrAccessDenied = errors.New("access denied")
	// ErrNoSuchBucket: the bucket does not exist.
	ErrNoSuchBucket = errors.New("no such bucket")
	// ErrUnreachable: no HTTP answer came back from the endpoint (refused,
	// reset, timed out) after every retry.
	ErrUnreachable = errors.New("endpoint unreachable")
)

// Store is a store.Store over an S3 bucket.
type Store struct {
	c        *minio.Core
	putc     *minio.Client // for PUTs: no retries inside minio-go (see New)
	retries  int           // attempts per PUT
	bucket   string
	prefix   string // "" or ends in "/"
	endpoint string // for errors
	name     string // s3://bucket/prefix
	log      *slog.Logger
	m        *Metrics
	// noConditionalPut is set once the server answered If-None-Match with
	// 501 NotImplemented.
	noConditionalPut atomic.Bool
	// checked is closed when the open check (Config.CheckLater) has
	// ended, with its error in checkErr; nil when New checked.
	checked  chan struct{}
	checkErr error
}

var _ store.Store = (*Store)(nil)

// New connects to the bucket c describes and checks that it exists and the
// credentials are accepted, so a misconfiguration fails here, by name:
// ErrNoSuchBucket, ErrAccessDenied or ErrUnreachable.
func New(ctx context.Context, c Config) (*Store, error) {
	prefix := c.Prefix
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	s := &Store{
		bucket: c.Bucket,
		prefix: prefix,
		name:   "s3://" + c.Bucket + "/" + prefix,
		log:    c.Log,
		m:      c.Metrics,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if prefix != "" {
		if err := store.ValidKey(strings.TrimSuffix(prefix, "/")); err != nil {
			return nil, fmt.Errorf("opening %s: prefix: %w", s.name, err)
		}
	}
	host, secure, err := c.endpoint()
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", s.name, err)
	}
	s.endpoint = map[bool]string{true: "https://", false: "http://"}[secure] + host
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", s.name, err)
	}
	dialTimeout := c.DialTimeout
	if dialTimeout == 0 {
		dialTimeout = 5 * time.Second
	}
	tr.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.MaxIdleConnsPerHost = 64 // one per concurrent chunk fetch, reused
	if c.Insecure && tr.TLSClientConfig != nil {
		tr.TLSClientConfig.InsecureSkipVerify = true
	}
	var rt http.RoundTripper = tr
	if c.Metrics != nil {
		rt = transport{next: tr, m: c.Metrics}
	}
	region := c.Region
	if region == "" {
		region = "us-east-1"
	}
	lookup := minio.BucketLookupAuto
	if c.PathStyle {
		lookup = minio.BucketLookupPath
	}
	retries := c.MaxRetries
	if retries <= 0 {
		retries = DefaultMaxRetries
	}
	opts := &minio.Options{
		Creds:        c.credentials(), // credentials.go
		Secure:       secure,
		Transport:    rt,
		Region:       region,
		BucketLookup: lookup,
		MaxRetries:   retries,
	}
	s.c, err = minio.NewCore(host, opts)
	if err != nil {
		return nil, fmt.Errorf("opening %s at %s: %w", s.name, s.endpoint, err)
	}
	// PUTs are retried here, not by minio-go: it seeks the body back for the
	// next attempt while net/http may still be sending it from the failed
	// one (a data race, seen when a server answers 503 before reading the
	// body). A new reader per attempt avoids sharing.
	s.retries = retries
	opts.MaxRetries = 1
	s.putc, err = minio.New(host, opts)
	if err != nil {
		return nil, fmt.Errorf("opening %s at %s: %w", s.name, s.endpoint, err)
	}
	if c.CheckLater {
		s.checked = make(chan struct{})
		go func() {
			defer close(s.checked)
			s.checkErr = s.checkBucket(context.WithoutCancel(ctx))
		}()
		return s, nil
	}
	if err := s.checkBucket(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// checkBucket is New's check: the bucket exists and the credentials are
// accepted.
func (s *Store) checkBucket(ctx context.Context) error {
	ok, err := s.c.BucketExists(ctx, s.bucket)
	if err == nil && !ok {
		// A HEAD answer has no body, so a 404 may hide another cause
		// (versitygw answers 404 to an unknown access key); a one-key
		// listing says which.
		err = ErrNoSuchBucket
		for obj := range s.c.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{MaxKeys: 1, Prefix: s.prefix}) {
			if obj.Err != nil {
				err = obj.Err
			}
			break
		}
	}
	if err != nil {
		return fmt.Errorf("opening %s at %s: %w", s.name, s.endpoint, classify(err))
	}
	return nil
}

// openErr is the open check's error when it ran in the background
// (Config.CheckLater) and failed; it waits for the check, which started
// before any request that could fail.
func (s *Store) openErr(ctx context.Context) error {
	if s.checked == nil {
		return nil
	}
	select {
	case <-s.checked:
		return s.checkErr
	case <-ctx.Done():
		return nil
	}
}

func (s *Store) String() string { return s.name }

// classify puts a sentinel in front of err where one applies.
func classify(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrNoSuchBucket) {
		return err
	}
	resp := minio.ToErrorResponse(err)
	if resp.Code != "" {
		// minio-go's message alone ("Please reduce your request rate.")
		// hides the code operators search for.
		err = fmt.Errorf("%s (HTTP %d): %w", resp.Code, resp.StatusCode, err)
	}
	switch resp.Code {
	case minio.NoSuchKey:
		return fmt.Errorf("%w: %w", store.ErrNotFound, err)
	case minio.NoSuchBucket:
		return fmt.Errorf("%w: %w", ErrNoSuchBucket, err)
	case minio.AccessDenied, "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity",
		"XAdminUserNotFound": // versitygw's answer (404) to an unknown access key
		return fmt.Errorf("%w: %w", ErrAccessDenied, err)
	}
	if resp.StatusCode == http.StatusForbidden {
		return fmt.Errorf("%w: %w", ErrAccessDenied, err)
	}
	var ue *url.Error
	var ne net.Error
	if errors.As(err, &ue) || errors.As(err, &ne) {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return err
}

// result names the outcome of an operation for the metrics.
func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, store.ErrNotFound):
		return "not_found"
	case errors.Is(err, store.ErrExists):
		return "exists"
	default:
		return "error"
	}
}

// check refuses a cancelled context and an invalid key before any request.
func (s *Store) check(ctx context.Context, verb, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s in %s: %w", verb, key, s.name, err)
	}
	if err := store.ValidKey(key); err != nil {
		return fmt.Errorf("%s in %s: %w", verb, s.name, err)
	}
	return nil
}

// fail wraps err from an operation on key with everything needed to find
// the object: key, bucket and prefix, endpoint.
func (s *Store) fail(verb, key string, err error) error {
	if oe := s.openErr(context.Background()); oe != nil {
		return fmt.Errorf("%s %s: %w", verb, key, oe)
	}
	return fmt.Errorf("%s %s in %s at %s: %w", verb, key, s.name, s.endpoint, classify(err))
}

// failList is fail for a listing of prefix.
func (s *Store) failList(verb, prefix string, err error) error {
	if oe := s.openErr(context.Background()); oe != nil {
		return fmt.Errorf("%s %q: %w", verb, prefix, oe)
	}
	return fmt.Errorf("%s %q in %s at %s: %w", verb, prefix, s.name, s.endpoint, classify(err))
}

// Get reads the whole of key in one GET.
func (s *Store) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	return s.get(ctx, key, -1, 0, dst)
}

// GetRange reads up to n bytes of key from off in one ranged GET.
func (s *Store) GetRange(ctx context.Context, key string, off, n int64, dst []byte) ([]byte, error) {
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("getting %s [%d, +%d) in %s: negative offset or length", key, off, n, s.name)
	}
	if n == 0 {
		// An empty range cannot be asked for; only existence matters.
		if _, err := s.Stat(ctx, key); err != nil {
			return nil, err
		}
		return dst[:0], nil
	}
	return s.get(ctx, key, off, n, dst)
}

// get reads the whole object (off < 0) or [off, off+n). A body that ends
// before its Content-Length (the connection dropped, the object vanished
// mid-read) is retried once and then reported, never returned short.
func (s *Store) get(ctx context.Context, key string, off, n int64, dst []byte) (b []byte, err error) {
	op := "get"
	if off >= 0 {
		op = "get_range"
	}
	start := time.Now()
	defer func() { s.m.observe(op, start, result(err)) }()
	if err := s.check(ctx, "getting", key); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		b, err, retry := s.getOnce(ctx, key, off, n, dst)
		if !retry || attempt == 2 || ctx.Err() != nil {
			return b, err
		}
		s.log.Warn("retrying a GET whose body was cut short", "key", key, "store", s.name, "err", err)
	}
}

func (s *Store) getOnce(ctx context.Context, key string, off, n int64, dst []byte) (b []byte, err error, retry bool) {
	var opts minio.GetObjectOptions
	if off >= 0 {
		if err := opts.SetRange(off, off+n-1); err != nil {
			return nil, fmt.Errorf("getting %s [%d, +%d) in %s: %w", key, off, n, s.name, err), false
		}
	}
	body, info, hdr, err := s.c.GetObject(ctx, s.bucket, s.prefix+key, opts)
	if err != nil {
		if r := minio.ToErrorResponse(err); off >= 0 && (r.StatusCode == http.StatusRequestedRangeNotSatisfiable || r.Code == "InvalidRange") {
			return dst[:0], nil, false // off is at or beyond the end
		}
		return nil, s.fail("getting", key, err), false
	}
	defer body.Close()
	// skip is how many leading bytes of the body precede off: a server
	// that ignores Range answers 200 with the whole object.
	var skip int64
	if off >= 0 && hdr.Get("Content-Range") == "" {
		skip = off
	}
	if info.Size < 0 {
		return nil, fmt.Errorf("getting %s in %s at %s: no Content-Length in the answer", key, s.name, s.endpoint), false
	}
	want := info.Size - skip
	if off >= 0 {
		want = max(0, min(want, n))
	}
	if skip > 0 {
		if _, err := io.CopyN(io.Discard, body, min(skip, info.Size)); err != nil {
			return nil, fmt.Errorf("getting %s in %s at %s: %w", key, s.name, s.endpoint, err), true
		}
	}
	buf := grow(dst, int(want))
	if got, err := io.ReadFull(body, buf); err != nil {
		return nil, fmt.Errorf("getting %s in %s at %s: read %d of %d bytes: %w", key, s.name, s.endpoint, got, want, classify(err)), ctx.Err() == nil
	}
	return buf, nil, false
}

func grow(dst []byte, n int) []byte {
	if cap(dst) >= n {
		return dst[:n]
	}
	return make([]byte, n)
}

func (s *Store) putOptions() minio.PutObjectOptions {
	return minio.PutObjectOptions{
		ContentType:      "application/octet-stream",
		DisableMultipart: true,
	}
}

// Put writes key with one PutObject.
func (s *Store) Put(ctx context.Context, key string, data []byte) (err error) {
	defer func(start time.Time) { s.m.observe("put", start, result(err)) }(time.Now())
	if err := s.check(ctx, "putting", key); err != nil {
		return err
	}
	return s.put(ctx, key, data, s.putOptions())
}

func (s *Store) put(ctx context.Context, key string, data []byte, opts minio.PutObjectOptions) error {
	if err := s.putObject(ctx, key, data, opts); err != nil {
		return s.fail("putting", key, err)
	}
	return nil
}

// putObject sends one PutObject, retried like minio-go retries other
// requests (see retryable), with a fresh body reader per attempt.
func (s *Store) putObject(ctx context.Context, key string, data []byte, opts minio.PutObjectOptions) error {
	for attempt := 0; ; attempt++ {
		_, err := s.putc.PutObject(ctx, s.bucket, s.prefix+key, bytes.NewReader(data), int64(len(data)), opts)
		if err == nil || attempt+1 >= s.retries || !retryable(ctx, err) {
			return err
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return err
		}
	}
}

// retryable reports whether a request that failed with err may succeed if
// sent again: throttling, 5xx, timeouts and network errors, as minio-go
// decides for the requests it retries itself.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	r := minio.ToErrorResponse(err)
	switch r.Code {
	case "RequestError", "RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded",
		"RequestThrottled", "InternalError", "SlowDown", "SlowDownWrite", "SlowDownRead", "ServiceUnavailable":
		return true
	}
	switch r.StatusCode {
	case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	var ue *url.Error
	var ne net.Error
	return r.StatusCode == 0 && (errors.As(err, &ue) || errors.As(err, &ne))
}

// backoff is minio-go's schedule: 200 ms doubling, capped at 1 s, with
// full jitter.
func backoff(attempt int) time.Duration {
	d := min(time.Second, 200*time.Millisecond<<attempt)
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PutIfAbsent writes key with If-None-Match: *, which the server evaluates
// atomically; see the package documentation for servers without it.
func (s *Store) PutIfAbsent(ctx context.Context, key string, data []byte) (err error) {
	defer func(start time.Time) { s.m.observe("put_if_absent", start, result(err)) }(time.Now())
	if err := s.check(ctx, "putting", key); err != nil {
		return err
	}
	for attempt := 0; !s.noConditionalPut.Load(); attempt++ {
		opts := s.putOptions()
		opts.SetMatchETagExcept("*")
		err := s.putObject(ctx, key, data, opts)
		if err == nil {
			return nil
		}
		r := minio.ToErrorResponse(err)
		switch {
		case r.StatusCode == http.StatusPreconditionFailed || r.Code == minio.PreconditionFailed:
			return fmt.Errorf("putting %s in %s: %w", key, s.name, store.ErrExists)
		case (r.StatusCode == http.StatusConflict || r.Code == "ConditionalRequestConflict") && attempt < 5:
			// AWS: a concurrent conditional write to the same key is in
			// flight; the next attempt sees its outcome.
			if err := sleep(ctx, time.Duration(10<<attempt)*time.Millisecond); err != nil {
				return s.fail("putting", key, err)
			}
		case r.StatusCode == http.StatusNotImplemented || r.Code == "NotImplemented":
			if s.noConditionalPut.CompareAndSwap(false, true) {
				s.log.Warn("S3 server does not support If-None-Match on PUT; PutIfAbsent falls back to HEAD then PUT, which races (harmless for content-addressed chunks)",
					"store", s.name, "endpoint", s.endpoint)
			}
		case r.StatusCode == 0 && s.exists(ctx, key):
			// Some servers (versitygw) answer a conditional PUT on an
			// existing key with 412 before reading the body and close the
			// connection; the client then sees a reset, not the 412. The
			// key being there now is the answer either way.
			return fmt.Errorf("putting %s in %s: %w", key, s.name, store.ErrExists)
		default:
			return s.fail("putting", key, err)
		}
	}
	if _, err := s.stat(ctx, key); err == nil {
		return fmt.Errorf("putting %s in %s: %w", key, s.name, store.ErrExists)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return s.put(ctx, key, data, s.putOptions())
}

// Stat returns the size of key from a HEAD request.
func (s *Store) Stat(ctx context.Context, key string) (size int64, err error) {
	defer func(start time.Time) { s.m.observe("stat", start, result(err)) }(time.Now())
	if err := s.check(ctx, "statting", key); err != nil {
		return 0, err
	}
	return s.stat(ctx, key)
}

func (s *Store) stat(ctx context.Context, key string) (int64, error) {
	info, err := s.c.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return 0, s.fail("statting", key, err)
	}
	return info.Size, nil
}

// Delete removes key; S3 answers 204 whether or not it existed.
func (s *Store) Delete(ctx context.Context, key string) (err error) {
	defer func(start time.Time) { s.m.observe("delete", start, result(err)) }(time.Now())
	if err := s.check(ctx, "deleting", key); err != nil {
		return err
	}
	err = s.c.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).Code != minio.NoSuchKey {
		return s.fail("deleting", key, err)
	}
	return nil
}

// List pages through ListObjectsV2 (1,000 keys a page), which S3 returns
// in lexical order.
func (s *Store) List(ctx context.Context, prefix string, fn func(key string, size int64) error) (err error) {
	defer func(start time.Time) { s.m.observe("list", start, result(err)) }(time.Now())
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("listing %q in %s: %w", prefix, s.name, err)
	}
	if err := store.ValidPrefix(prefix); err != nil {
		return fmt.Errorf("listing in %s: %w", s.name, err)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the lister if fn fails
	for obj := range s.c.ListObjectsIter(lctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("listing %q in %s: %w", prefix, s.name, err)
		}
		if obj.Err != nil {
			return s.failList("listing", prefix, obj.Err)
		}
		if err := fn(strings.TrimPrefix(obj.Key, s.prefix), obj.Size); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("listing %q in %s: %w", prefix, s.name, err)
	}
	return nil
}

// ListDirs lists with delimiter "/"; the common prefixes are the
// directories, in lexical order.
func (s *Store) ListDirs(ctx context.Context, prefix string, fn func(name string) error) (err error) {
	defer func(start time.Time) { s.m.observe("list_dirs", start, result(err)) }(time.Now())
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("listing directories %q in %s: %w", prefix, s.name, err)
	}
	if err := store.ValidDirPrefix(prefix); err != nil {
		return fmt.Errorf("listing directories in %s: %w", s.name, err)
	}
	full := s.prefix + prefix
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range s.c.ListObjectsIter(lctx, s.bucket, minio.ListObjectsOptions{Prefix: full}) {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("listing directories %q in %s: %w", prefix, s.name, err)
		}
		if obj.Err != nil {
			return s.failList("listing directories", prefix, obj.Err)
		}
		name, ok := strings.CutSuffix(strings.TrimPrefix(obj.Key, full), "/")
		if !ok || name == "" {
			continue // an object, not a common prefix
		}
		if err := fn(name); err != nil {
			return err
		}
	}
	return nil
}

// exists reports whether key is present now (errors count as absent).
func (s *Store) exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}
