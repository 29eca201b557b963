package cachefleet

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/lode-dev/lode/internal/store"
)

// Resolver resolves a host name to all its addresses; *net.Resolver is one.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// ClientConfig configures a fleet client. Zero fields take the defaults
// documented on each.
type ClientConfig struct {
	// Nodes lists the fleet: "host:port", "http://host:port", or a DNS name
	// (with or without port) that resolves to several addresses, as a
	// Kubernetes headless service does; every address is one node. Names
	// are re-resolved every ResolveInterval.
	Nodes []string
	// M data shards and K total shards per chunk (default 4 of 5). Fewer
	// than K nodes is allowed: shards then wrap around the nodes placed
	// (node j holds shards j, j+N, …), so reads still work but losing one
	// node costs more than one shard.
	M, K int
	// Timeout bounds one Fetch (default 500 ms: ~100× the paper's fleet
	// p99.9, and a fleet that slow is worse than the origin).
	Timeout time.Duration
	// FillTimeout bounds one Fill (default 10 s).
	FillTimeout time.Duration
	// FillConcurrency bounds shard PUTs in flight across all Fills (default
	// 16), so a burst of origin misses cannot flood the fleet.
	FillConcurrency int
	// Linger is how long a shard request that Fetch no longer needs (it
	// rebuilt the chunk from other nodes, or gave up) may go on (default
	// 1 s): its answer is then read to the end and discarded in the
	// background, so its keep-alive connection is reused instead of closed.
	Linger time.Duration
	// MaxWaiting caps, per node, the shard requests still waiting for
	// response headers (default DefaultMaxWaiting). While a node is at the
	// cap, Fetch skips it and counts it as failed: a stalled node (SIGSTOP,
	// a hung disk) then costs a counter check per Fetch, not a new
	// connection. Every Fetch asks each placed node once, so a healthy node
	// has one request waiting per Fetch in flight: the cap must be at least
	// the caller's concurrent Fetch calls, or a burst of them (a start's
	// prefetch) finds healthy nodes "busy", misses, and reads the origin.
	MaxWaiting int
	// ResolveInterval is how often DNS names are re-resolved (default 30 s).
	ResolveInterval time.Duration
	// Resolver defaults to net.DefaultResolver.
	Resolver Resolver
	// Transport defaults to a transport tuned for many small parallel
	// requests to few hosts (NewTransport).
	Transport http.RoundTripper
	// TLS, if set, makes the client speak HTTPS to every node (nodes
	// without a scheme are https://) with this configuration: the worker's
	// certificate and the fleet CA (certs.Reloader.ClientConfig). It is set
	// on the default or a given *http.Transport.
	TLS *tls.Config
	// Log defaults to discarding.
	Log *slog.Logger
	// Metrics defaults to unregistered collectors.
	Metrics *ClientMetrics
}

// DefaultMaxWaiting is ClientConfig.MaxWaiting's default.
const DefaultMaxWaiting = 16

// Validate reports every problem with c at once (after defaults).
func (c ClientConfig) Validate() error {
	var errs []error
	if len(c.Nodes) == 0 {
		errs = append(errs, errors.New("no fleet nodes configured"))
	}
	if c.M < 1 || c.K < c.M || c.K > fleetproto.MaxShards {
		errs = append(errs, fmt.Errorf("erasure code %d-of-%d: need 1 ≤ M ≤ K ≤ %d", c.M, c.K, fleetproto.MaxShards))
	}
	for _, n := range c.Nodes {
		if _, err := parseNode(n); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Timeout < 0 || c.FillTimeout < 0 || c.FillConcurrency < 0 || c.ResolveInterval < 0 || c.Linger < 0 || c.MaxWaiting < 0 {
		errs = append(errs, errors.New("timeouts, intervals and concurrency must not be negative"))
	}
	return errors.Join(errs...)
}

func (c *ClientConfig) applyDefaults() {
	if c.M == 0 && c.K == 0 {
		c.M, c.K = 4, 5
	}
	if c.Timeout == 0 {
		c.Timeout = 500 * time.Millisecond
	}
	if c.Linger == 0 {
		c.Linger = time.Second
	}
	if c.MaxWaiting == 0 {
		c.MaxWaiting = DefaultMaxWaiting
	}
	if c.FillTimeout == 0 {
		c.FillTimeout = 10 * time.Second
	}
	if c.FillConcurrency == 0 {
		c.FillConcurrency = 16
	}
	if c.ResolveInterval == 0 {
		c.ResolveInterval = 30 * time.Second
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.Transport == nil {
		c.Transport = NewTransport()
	}
	if ht, ok := c.Transport.(*http.Transport); ok && c.TLS != nil {
		ht = ht.Clone()
		ht.TLSClientConfig = c.TLS
		ht.ForceAttemptHTTP2 = false // nodes speak HTTP/1.1
		c.Transport = ht
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = NewClientMetrics(nil)
	}
}

// NewTransport returns a new transport as a client uses by default (callers
// may adjust it, e.g. wrap DialContext to count connections). It keeps
// connections alive to every node: a read opens K requests at once, so
// MaxIdleConnsPerHost must exceed the client's concurrency per node or
// connections churn.
func NewTransport() *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second, // Fetch and Fill contexts bound calls tighter
		DisableCompression:    true,             // ciphertext does not compress
		ReadBufferSize:        64 << 10,
		WriteBufferSize:       64 << 10,
	}
}

// nodeEntry is one configured node: an address or a name to resolve.
type nodeEntry struct {
	scheme, host, port string
	literal            bool // host is an IP address: no resolution
}

func parseNode(s string) (nodeEntry, error) {
	raw := s
	e := nodeEntry{scheme: "http"}
	if u, err := url.Parse(s); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		if u.Path != "" && u.Path != "/" {
			return e, fmt.Errorf("fleet node %q: must not have a path", raw)
		}
		e.scheme, s = u.Scheme, u.Host
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = s, strconv.Itoa(fleetproto.DefaultPort)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return e, fmt.Errorf("fleet node %q: bad port %q", raw, port)
	}
	if host == "" {
		return e, fmt.Errorf("fleet node %q: no host", raw)
	}
	e.host, e.port = host, port
	e.literal = net.ParseIP(host) != nil
	return e, nil
}

func (e nodeEntry) url(addr string) string { return e.scheme + "://" + net.JoinHostPort(addr, e.port) }

// Client reads and writes chunks in the fleet. It satisfies the agent's Tier
// interface. Methods are safe for concurrent use.
type Client struct {
	cfg   ClientConfig
	log   *slog.Logger
	m     *ClientMetrics
	codec *codec
	http  *http.Client
	// leaseHTTP sends lease requests on connections of their own: the
	// node's fast path hands a connection that carries anything but shard
	// GETs and PUTs to net/http for good (fastpath.go).
	leaseHTTP *http.Client
	entries   []nodeEntry
	fillSem   chan struct{}

	mu       sync.Mutex // serialises resolution
	nodes    atomic.Pointer[[]string]
	resolved map[int][]string // last good addresses per entry, under mu
	lastRes  atomic.Int64     // unix nanos of the last resolution
	bgBusy   atomic.Bool      // a background re-resolution is running
	bg       sync.WaitGroup
	closed   atomic.Bool

	// Shard GETs: each runs in its own goroutine, tracked by reqs, until
	// answered or cancelled (Linger after its Fetch is done, or by Close).
	reqMu   sync.Mutex
	waiting map[string]int // per node: GETs without response headers yet
	reqs    sync.WaitGroup // Add under reqMu, only while not closed
	life    context.Context
	stop    context.CancelFunc
}

// NewClient validates c and returns a client. Node entries that are IP
// addresses are usable at once; DNS names are resolved on first use (with
// that call's context) and then every ResolveInterval in the background.
func NewClient(c ClientConfig) (*Client, error) {
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("configuring fleet client: %w", err)
	}
	cd, err := newCodec(c.M, c.K)
	if err != nil {
		return nil, err
	}
	cl := &Client{
		cfg:       c,
		log:       c.Log.With(slog.String("component", "fleet")),
		m:         c.Metrics,
		codec:     cd,
		http:      &http.Client{Transport: c.Transport},
		leaseHTTP: &http.Client{Transport: leaseTransport(c.Transport)},
		fillSem:   make(chan struct{}, c.FillConcurrency),
		resolved:  make(map[int][]string),
		waiting:   make(map[string]int),
	}
	cl.life, cl.stop = context.WithCancel(context.Background())
	names := false
	for _, s := range c.Nodes {
		e, _ := parseNode(s)
		if c.TLS != nil && !strings.Contains(s, "://") {
			e.scheme = "https"
		}
		cl.entries = append(cl.entries, e)
		names = names || !e.literal
	}
	if !names {
		cl.resolve(context.Background()) // no I/O: literals only
	}
	return cl, nil
}

// Name identifies the tier in logs and metrics.
func (c *Client) Name() string { return "fleet" }

// Nodes returns the current membership (node URLs, sorted).
func (c *Client) Nodes() []string {
	if p := c.nodes.Load(); p != nil {
		return slices.Clone(*p)
	}
	return nil
}

// Refresh re-resolves the node list now. A name that fails to resolve keeps
// its previous addresses (a DNS hiccup must not empty the fleet); the error
// names every entry that failed.
func (c *Client) Refresh(ctx context.Context) error { return c.resolve(ctx) }

func (c *Client) resolve(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	var all []string
	for i, e := range c.entries {
		if e.literal {
			all = append(all, e.url(e.host))
			continue
		}
		addrs, err := c.cfg.Resolver.LookupHost(ctx, e.host)
		if err != nil || len(addrs) == 0 {
			if err == nil {
				err = errors.New("no addresses")
			}
			errs = append(errs, fmt.Errorf("resolving fleet node %s: %w", e.host, err))
		} else {
			urls := make([]string, len(addrs))
			for j, a := range addrs {
				urls[j] = e.url(a)
			}
			c.resolved[i] = urls
		}
		all = append(all, c.resolved[i]...)
	}
	slices.Sort(all)
	all = slices.Compact(all)
	if old := c.nodes.Load(); old == nil || !slices.Equal(*old, all) {
		c.log.Info("fleet membership", slog.Int("nodes", len(all)), slog.Any("node", all))
	}
	c.nodes.Store(&all)
	c.lastRes.Store(time.Now().UnixNano())
	return errors.Join(errs...)
}

// members returns the membership, resolving synchronously the first time
// and in the background when stale.
func (c *Client) members(ctx context.Context) []string {
	if p := c.nodes.Load(); p != nil {
		if time.Since(time.Unix(0, c.lastRes.Load())) > c.cfg.ResolveInterval && !c.closed.Load() && c.bgBusy.CompareAndSwap(false, true) {
			c.bg.Add(1)
			go func() {
				defer c.bg.Done()
				defer c.bgBusy.Store(false)
				rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := c.resolve(rctx); err != nil {
					c.log.Warn("re-resolving fleet nodes", slog.Any("err", err))
				}
			}()
		}
		return *p
	}
	if err := c.resolve(ctx); err != nil {
		c.log.Warn("resolving fleet nodes", slog.Any("err", err))
	}
	if p := c.nodes.Load(); p != nil {
		return *p
	}
	return nil
}

// CloseIdleConnections closes the client's idle connections to the nodes
// (shard and lease requests alike).
func (c *Client) CloseIdleConnections() {
	c.http.CloseIdleConnections()
	c.leaseHTTP.CloseIdleConnections()
}

// Close cancels shard requests still running (lingering or in flight),
// waits for them and for background resolution, and closes idle
// connections. Fetch after Close misses.
func (c *Client) Close() error {
	c.reqMu.Lock()
	c.closed.Store(true)
	c.reqMu.Unlock()
	c.stop()
	c.reqs.Wait()
	c.bg.Wait()
	c.http.CloseIdleConnections()
	c.leaseHTTP.CloseIdleConnections()
	return nil
}

// Errors of shard requests that were not sent.
var (
	// ErrNodeBusy means a node already had MaxWaiting requests without an
	// answer, so Fetch did not ask it.
	ErrNodeBusy = errors.New("node has too many requests waiting for an answer")
	errClosed   = errors.New("fleet client closed")
)

// admit reserves a waiting slot at node for one shard GET.
func (c *Client) admit(node string) error {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	if c.closed.Load() {
		return errClosed
	}
	if c.waiting[node] >= c.cfg.MaxWaiting {
		return ErrNodeBusy
	}
	c.waiting[node]++
	c.reqs.Add(1)
	return nil
}

// answered releases node's waiting slot: the GET has its response headers,
// or failed.
func (c *Client) answered(node string) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	if c.waiting[node]--; c.waiting[node] <= 0 {
		delete(c.waiting, node)
	}
}

// detach returns the context a shard GET runs under: fctx's values but not
// its cancellation, so that Fetch returning does not tear down the
// connection; the GET is cancelled Linger after fctx is done, or when the
// client closes. release frees the context's resources.
func (c *Client) detach(fctx context.Context) (ctx context.Context, release func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(fctx))
	var timer atomic.Pointer[time.Timer]
	stopLinger := context.AfterFunc(fctx, func() { timer.Store(time.AfterFunc(c.cfg.Linger, cancel)) })
	stopLife := context.AfterFunc(c.life, cancel)
	return ctx, func() {
		stopLinger()
		stopLife()
		cancel()
		if t := timer.Load(); t != nil {
			t.Stop()
		}
	}
}

// leaseTransport is a transport like t with a pool of its own (the same
// one when t is not an *http.Transport).
func leaseTransport(t http.RoundTripper) http.RoundTripper {
	if ht, ok := t.(*http.Transport); ok {
		lt := ht.Clone()
		lt.MaxIdleConnsPerHost = 4
		return lt
	}
	return t
}

// Lease asks the first node placed for chunk n for its origin lease, for
// ttl (the node clamps it to 10 ms..10 s). It returns true when this caller
// got it and should read the origin and fill the fleet, false when another
// caller holds it (its fill should appear in the fleet within ttl). A node
// that cannot be reached or answers anything else returns true with the
// error: a lease never stands between a reader and the origin.
func (c *Client) Lease(ctx context.Context, n chunk.Name, ttl time.Duration) (bool, error) {
	nodes := c.members(ctx)
	if len(nodes) == 0 {
		return true, fmt.Errorf("leasing chunk %s: %w", n, ErrNoNodes)
	}
	node := c.placement(nodes, n)[0]
	start := time.Now()
	granted, err := c.lease(ctx, node, n, ttl)
	result := "granted"
	switch {
	case err != nil:
		result = "error"
	case !granted:
		result = "held"
	}
	c.m.requests.WithLabelValues(node, "lease", result).Inc()
	c.m.latency.WithLabelValues(node, "lease").Observe(time.Since(start).Seconds())
	return granted || err != nil, err
}

func (c *Client) lease(ctx context.Context, node string, n chunk.Name, ttl time.Duration) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, node+fleetproto.LeasePath(n, ttl), nil)
	if err != nil {
		return false, fmt.Errorf("leasing chunk %s on node %s: %w", n, node, err)
	}
	resp, err := c.leaseHTTP.Do(req)
	if err != nil {
		return false, fmt.Errorf("leasing chunk %s on node %s: %w", n, node, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 512))
	switch resp.StatusCode {
	case fleetproto.StatusLeaseGranted:
		return true, nil
	case fleetproto.StatusLeaseHeld:
		return false, nil
	}
	return false, fmt.Errorf("leasing chunk %s on node %s: %s", n, node, resp.Status)
}

// placement returns the node of each of the K shards of n: shard i goes to
// the i-th placed node, wrapping around when there are fewer than K nodes.
func (c *Client) placement(nodes []string, n chunk.Name) []string {
	placed := Place(n, nodes, c.cfg.K)
	out := make([]string, c.cfg.K)
	for i := range out {
		out[i] = placed[i%len(placed)]
	}
	return out
}

type reply struct {
	node   string
	shards [][]byte // as received; nil on a miss
	body   *[]byte  // the pooled buffer shards point into; nil if none
	err    error
}

// bodies recycles response buffers: every fleet hit reads K of them (one
// per node, ~130 KiB each for a 512 KiB chunk at 4+1), and allocating them
// was the largest allocation hot spot of a steady stream of starts.
var bodies sync.Pool

func getBody(n int) *[]byte {
	if bp, ok := bodies.Get().(*[]byte); ok && cap(*bp) >= n {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n)
	return &b
}

func putBody(bp *[]byte) {
	if bp != nil {
		bodies.Put(bp)
	}
}

// MissError reports a chunk the fleet could not serve. It wraps
// store.ErrNotFound, so the agent falls through to the origin (and its
// write-back then repairs the fleet), and ErrTooFewShards or, when enough
// shards came back but no M of them rebuild the chunk, chunk.ErrCorrupt.
type MissError struct {
	Name chunk.Name
	// Shards is how many distinct valid shards arrived; Misses and
	// Failures count nodes that had none or did not answer properly.
	Shards, Misses, Failures int
	Corrupt                  bool
	Err                      error // first node error, for the log
}

func (e *MissError) Error() string {
	what := "too few shards"
	if e.Corrupt {
		what = "no subset of shards rebuilds a chunk matching its name"
	}
	s := fmt.Sprintf("fetching chunk %s from fleet: %s (%d shards, %d nodes missing, %d failed)", e.Name, what, e.Shards, e.Misses, e.Failures)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *MissError) Unwrap() []error {
	errs := []error{store.ErrNotFound, ErrTooFewShards}
	if e.Corrupt {
		errs[1] = chunk.ErrCorrupt
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// maxRebuilds bounds the subsets tried per fetch: C(K, M) is small for the
// codes we use (5 for 4-of-5), but not for wide ones with much parity.
const maxRebuilds = 64

// Fetch reads chunk n. It asks each of the chunk's placed nodes at once for
// every shard of n it holds (not for "shard i": after membership changes a
// node may hold a different index than its current position), and rebuilds
// from the first M distinct shards that parse and, together, rebuild a chunk
// whose SHA-256 is n. The remaining requests are not cancelled but left to
// finish in the background (at most Linger), so their connections stay
// pooled; a node with MaxWaiting requests unanswered is not asked at all
// and counts as failed. When a set fails
// to verify, Fetch waits for more shards and tries other M-subsets: a
// corrupt shard is dropped (and counted), never served.
//
// The result is written into dst when it has the capacity, else a new
// slice. Misses, including too many dead or slow nodes within Timeout, wrap
// store.ErrNotFound (see MissError); a cancelled ctx returns its error.
// VerifiesNames reports true: Fetch returns only a chunk whose SHA-256 it
// has matched to n (agent.NameVerifier), so the agent does not hash it again.
func (c *Client) VerifiesNames() bool { return true }

// IsFleet declares the client's role to the agent (agent.FleetRole): its
// unreachability degrades lazy loading.
func (c *Client) IsFleet() bool { return true }

func (c *Client) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	nodes := c.members(ctx)
	if len(nodes) == 0 {
		c.m.fetches.WithLabelValues("miss").Inc()
		return nil, fmt.Errorf("fetching chunk %s from fleet: %w (%w)", n, ErrNoNodes, store.ErrNotFound)
	}
	placed := Place(n, nodes, c.cfg.K)
	fctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	replies := make(chan reply, len(placed)) // each request sends once: no leak
	for _, node := range placed {
		if err := c.admit(node); err != nil {
			c.m.requests.WithLabelValues(node, "get", "busy").Inc()
			replies <- reply{node: node, err: fmt.Errorf("fetching shards of chunk %s from node %s: %w", n, node, err)}
			continue
		}
		go c.getShards(fctx, node, n, replies)
	}

	k, m := c.cfg.K, c.cfg.M
	hdrs := make([]fleetproto.ShardHeader, k)
	payloads := make([][]byte, k)
	from := make([]string, k)  // node each shard came from
	suspect := make([]bool, k) // in a subset that failed to verify
	var valid []int            // indices of parsed shards, arrival order
	// The replies' buffers go back to the pool when Fetch returns: by then
	// the chunk has been copied into dst, and nothing else holds them.
	// Replies that arrive later are left to the garbage collector.
	var held []*[]byte
	defer func() {
		for _, bp := range held {
			putBody(bp)
		}
	}()
	miss := &MissError{Name: n}
	attempts := 0
wait:
	for got := 0; got < len(placed); got++ {
		var r reply
		select {
		case r = <-replies:
		case <-fctx.Done(): // Timeout, or ctx cancelled
			miss.Failures += len(placed) - got
			if miss.Err == nil && ctx.Err() == nil {
				miss.Err = fmt.Errorf("waiting for %d of %d nodes: %w", len(placed)-got, len(placed), fctx.Err())
			}
			break wait
		}
		if r.body != nil {
			held = append(held, r.body)
		}
		switch {
		case r.err != nil:
			miss.Failures++
			if miss.Err == nil && ctx.Err() == nil {
				miss.Err = r.err
			}
			continue
		case r.shards == nil:
			miss.Misses++
			continue
		}
		for _, raw := range r.shards {
			h, p, err := fleetproto.ParseShard(raw)
			if err == nil && (h.Name != n || h.M != m || h.K != k) {
				err = fmt.Errorf("shard header says chunk %s (%d-of-%d), want %s (%d-of-%d): %w", h.Name, h.M, h.K, n, m, k, fleetproto.ErrBadShard)
			}
			if err != nil {
				c.m.corrupt.Inc()
				c.log.Warn("dropping bad shard", slog.String("chunk", n.String()), slog.String("node", r.node), slog.Any("err", err))
				continue
			}
			if payloads[h.Index] != nil {
				continue // a second copy (churn or wrap-around); keep the first
			}
			hdrs[h.Index], payloads[h.Index], from[h.Index] = h, p, r.node
			valid = append(valid, h.Index)
			miss.Shards++
			out, used, tried, ok := c.tryRebuild(hdrs, payloads, valid, h.Index, suspect, dst, maxRebuilds-attempts)
			attempts += tried
			if !ok {
				continue
			}
			c.m.fetches.WithLabelValues("hit").Inc()
			for i := 0; i < m; i++ {
				if !used[i] {
					c.m.reconstructions.Inc()
					break
				}
			}
			for _, i := range valid {
				if suspect[i] && !used[i] {
					c.m.corrupt.Inc()
					c.log.Warn("dropping corrupt shard", slog.String("chunk", n.String()), slog.Int("shard", i), slog.String("node", from[i]))
				}
			}
			return out, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fetching chunk %s from fleet: %w", n, err)
	}
	miss.Corrupt = attempts > 0
	if miss.Corrupt {
		c.m.fetches.WithLabelValues("corrupt").Inc()
	} else {
		c.m.fetches.WithLabelValues("miss").Inc()
	}
	return nil, miss
}

// tryRebuild tries the M-subsets of valid shards (same chunk length) that
// contain newest, at most budget of them. On success it returns the chunk
// and which indices were used; subsets that fail mark their members suspect.
func (c *Client) tryRebuild(hdrs []fleetproto.ShardHeader, payloads [][]byte, valid []int, newest int, suspect []bool, dst []byte, budget int) (out []byte, used []bool, tried int, ok bool) {
	m := c.cfg.M
	var peers []int
	for _, i := range valid {
		if i != newest && hdrs[i].Length == hdrs[newest].Length {
			peers = append(peers, i)
		}
	}
	if len(peers) < m-1 {
		return nil, nil, 0, false
	}
	set := make([][]byte, c.cfg.K)
	pick := make([]int, m-1) // indices into peers, increasing
	for i := range pick {
		pick[i] = i
	}
	for tried < budget {
		clear(set)
		set[newest] = payloads[newest]
		for _, p := range pick {
			set[peers[p]] = payloads[peers[p]]
		}
		tried++
		if data, err := c.codec.rebuild(hdrs[newest], set, dst); err == nil {
			used = make([]bool, c.cfg.K)
			for i, s := range set {
				used[i] = s != nil
			}
			return data, used, tried, true
		}
		for i, s := range set {
			if s != nil {
				suspect[i] = true
			}
		}
		if !nextCombination(pick, len(peers)) {
			break
		}
	}
	return nil, nil, tried, false
}

// nextCombination advances pick (increasing indices < n) to the next
// combination in lexicographic order; false when exhausted.
func nextCombination(pick []int, n int) bool {
	r := len(pick)
	for i := r - 1; i >= 0; i-- {
		if pick[i] < n-r+i {
			pick[i]++
			for j := i + 1; j < r; j++ {
				pick[j] = pick[j-1] + 1
			}
			return true
		}
	}
	return false
}

// getShards fetches every shard of n that node holds and always sends
// exactly one reply. It holds one of node's waiting slots (see admit) and is
// counted in c.reqs. The GET runs detached from fctx (see detach): once fctx
// is done its answer is drained, not used, and its result is "cancelled".
func (c *Client) getShards(fctx context.Context, node string, n chunk.Name, out chan<- reply) {
	defer c.reqs.Done()
	start := time.Now()
	rctx, release := c.detach(fctx)
	defer release()
	shards, body, err := c.doGet(rctx, fctx, node, n)
	result := "hit"
	switch {
	case fctx.Err() != nil:
		result = "cancelled"
	case err != nil:
		result = "error"
	case shards == nil:
		result = "miss"
	}
	c.m.requests.WithLabelValues(node, "get", result).Inc()
	if result != "cancelled" {
		c.m.latency.WithLabelValues(node, "get").Observe(time.Since(start).Seconds())
	}
	out <- reply{node: node, shards: shards, body: body, err: err}
}

// maxResponse bounds one node's answer: all K shards of a chunk of
// chunk.MaxSize (a node holds several only under wrap-around or churn).
func (c *Client) maxResponse() int64 {
	return int64(c.cfg.K) * int64(fleetproto.HeaderSize+(chunk.MaxSize+c.cfg.M-1)/c.cfg.M)
}

// doGet runs the GET under rctx and releases node's waiting slot when the
// response headers arrive (or the request fails). If fctx is done by then,
// the body is read to the end and discarded, keeping the connection.
func (c *Client) doGet(rctx, fctx context.Context, node string, n chunk.Name) ([][]byte, *[]byte, error) {
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, node+fleetproto.ShardPath(n, -1), nil)
	if err != nil {
		c.answered(node)
		return nil, nil, fmt.Errorf("fetching shards of chunk %s from node %s: %w", n, node, err)
	}
	resp, err := c.http.Do(req)
	c.answered(node)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching shards of chunk %s from node %s: %w", n, node, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10)) // keep the connection reusable
		return nil, nil, nil
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, nil, fmt.Errorf("fetching shards of chunk %s from node %s: %s: %s", n, node, resp.Status, bytes.TrimSpace(msg))
	}
	if resp.ContentLength < fleetproto.HeaderSize || resp.ContentLength > c.maxResponse() {
		return nil, nil, fmt.Errorf("fetching shards of chunk %s from node %s: content length %d out of range: %w", n, node, resp.ContentLength, fleetproto.ErrBadShard)
	}
	if err := fctx.Err(); err != nil {
		// Not needed any more: drain (bounded by rctx) so that Close
		// returns the connection to the pool instead of closing it.
		io.Copy(io.Discard, resp.Body)
		return nil, nil, fmt.Errorf("fetching shards of chunk %s from node %s: %w", n, node, err)
	}
	bp := getBody(int(resp.ContentLength))
	if _, err := io.ReadFull(resp.Body, *bp); err != nil {
		putBody(bp)
		return nil, nil, fmt.Errorf("reading shards of chunk %s from node %s: %w", n, node, err)
	}
	shards, err := fleetproto.SplitShards(*bp)
	if err != nil {
		putBody(bp)
		return nil, nil, fmt.Errorf("reading shards of chunk %s from node %s: %w", n, node, err)
	}
	return shards, bp, nil
}

// Fill writes chunk n back to the fleet: it verifies that ciphertext hashes
// to n (a bad write-back would poison every later read), splits it into K
// shards and PUTs each to its node concurrently, bounded by
// FillConcurrency across the client. It returns every failed PUT, each naming
// node and shard; a partial fill still helps as long as M shards landed.
// ciphertext is not retained.
func (c *Client) Fill(ctx context.Context, n chunk.Name, ciphertext []byte) error {
	err := c.fill(ctx, n, ciphertext)
	if err != nil {
		c.m.fills.WithLabelValues("error").Inc()
	} else {
		c.m.fills.WithLabelValues("ok").Inc()
	}
	return err
}

func (c *Client) fill(ctx context.Context, n chunk.Name, ciphertext []byte) error {
	if err := chunk.Verify(n, ciphertext); err != nil {
		return fmt.Errorf("filling fleet: %w", err)
	}
	nodes := c.members(ctx)
	if len(nodes) == 0 {
		return fmt.Errorf("filling chunk %s into fleet: %w", n, ErrNoNodes)
	}
	shards, err := c.codec.encode(n, ciphertext)
	if err != nil {
		return err
	}
	placed := c.placement(nodes, n)
	ctx, cancel := context.WithTimeout(ctx, c.cfg.FillTimeout)
	defer cancel()
	errs := make([]error, len(shards))
	var wg sync.WaitGroup
	for i, s := range shards {
		select {
		case c.fillSem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = fmt.Errorf("filling shard %d of chunk %s to node %s: %w", i, n, placed[i], ctx.Err())
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-c.fillSem }()
			errs[i] = c.putShard(ctx, placed[i], n, i, s)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Client) putShard(ctx context.Context, node string, n chunk.Name, i int, shard []byte) error {
	start := time.Now()
	err := c.doPut(ctx, node, n, i, shard)
	result := "ok"
	if err != nil {
		result = "error"
	}
	c.m.requests.WithLabelValues(node, "put", result).Inc()
	c.m.latency.WithLabelValues(node, "put").Observe(time.Since(start).Seconds())
	return err
}

func (c *Client) doPut(ctx context.Context, node string, n chunk.Name, i int, shard []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, node+fleetproto.ShardPath(n, i), bytes.NewReader(shard))
	if err != nil {
		return fmt.Errorf("filling shard %d of chunk %s to node %s: %w", i, n, node, err)
	}
	req.Header.Set("Content-Type", fleetproto.ContentType)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("filling shard %d of chunk %s to node %s: %w", i, n, node, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("filling shard %d of chunk %s to node %s: %s: %s", i, n, node, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
