package cachefleet_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/cachefleet/fleettest"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/lode-dev/lode/internal/store"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestMain(m *testing.M) { fleettest.Main(m) }

type testClient struct {
	*cachefleet.Client
	reg *prometheus.Registry
}

func newClient(t testing.TB, nodes []string, mod func(*cachefleet.ClientConfig)) testClient {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := cachefleet.ClientConfig{Nodes: nodes, Timeout: 10 * time.Second, Metrics: cachefleet.NewClientMetrics(reg)}
	if mod != nil {
		mod(&c)
	}
	cl, err := cachefleet.NewClient(c)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return testClient{cl, reg}
}

// metric sums the samples of a counter or gauge whose labels include want.
func (c testClient) metric(t testing.TB, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := c.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				if !hasLabel(m, k, v) {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func randomChunk(r *rand.Rand, size int) ([]byte, chunk.Name) {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b, chunk.NameOf(b)
}

type stored struct {
	data []byte
	name chunk.Name
}

func fill(t *testing.T, c testClient, r *rand.Rand, count, size int) []stored {
	t.Helper()
	var out []stored
	for i := 0; i < count; i++ {
		d, n := randomChunk(r, size)
		if err := c.Fill(context.Background(), n, d); err != nil {
			t.Fatalf("Fill(chunk %d): %v", i, err)
		}
		out = append(out, stored{d, n})
	}
	return out
}

func mustFetch(t *testing.T, c testClient, s stored) {
	t.Helper()
	got, err := c.Fetch(context.Background(), s.name, nil)
	if err != nil {
		t.Fatalf("Fetch(%s): %v", s.name, err)
	}
	if !bytes.Equal(got, s.data) {
		t.Fatalf("Fetch(%s) returned wrong bytes", s.name)
	}
}

func TestFleetRoundTrip(t *testing.T) {
	f := fleettest.Start(t, 6, fleettest.Options{})
	r := rand.New(rand.NewPCG(1, 1))
	for _, code := range []struct{ m, k int }{{4, 5}, {2, 3}, {1, 1}} {
		c := newClient(t, f.URLs(), func(c *cachefleet.ClientConfig) { c.M, c.K = code.m, code.k })
		for _, size := range []int{1, 3, 4096, 4097, 100003, chunk.DefaultSize} {
			t.Run(fmt.Sprintf("%dof%d/%d", code.m, code.k, size), func(t *testing.T) {
				s := fill(t, c, r, 1, size)[0]
				dst := make([]byte, 0, chunk.DefaultSize)
				got, err := c.Fetch(context.Background(), s.name, dst)
				if err != nil || !bytes.Equal(got, s.data) {
					t.Fatalf("Fetch(%d bytes) = %d bytes, %v; want the chunk", size, len(got), err)
				}
				if &got[0] != &dst[:1][0] {
					t.Errorf("Fetch did not reuse dst of capacity %d", cap(dst))
				}
			})
		}
	}
}

// The client is the agent's "fleet" tier.
var _ agent.Tier = (*cachefleet.Client)(nil)
var _ agent.NameVerifier = (*cachefleet.Client)(nil)

func TestFleetMiss(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	c := newClient(t, f.URLs(), nil)
	_, n := randomChunk(rand.New(rand.NewPCG(2, 2)), 1000)
	_, err := c.Fetch(context.Background(), n, nil)
	if !errors.Is(err, store.ErrNotFound) || !errors.Is(err, cachefleet.ErrTooFewShards) {
		t.Fatalf("Fetch(absent) err = %v, want store.ErrNotFound and ErrTooFewShards", err)
	}
	if !strings.Contains(err.Error(), n.String()) {
		t.Errorf("Fetch(absent) err = %v, want it to name the chunk", err)
	}
	if got := c.metric(t, "lode_fleet_fetches_total", map[string]string{"result": "miss"}); got != 1 {
		t.Errorf("miss counter = %v, want 1", got)
	}
}

func TestFleetFillRejectsWrongName(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	c := newClient(t, f.URLs(), nil)
	if err := c.Fill(context.Background(), chunk.NameOf([]byte("a")), []byte("b")); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("Fill(wrong name) err = %v, want chunk.ErrCorrupt", err)
	}
}

func TestFleetDeadNode(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	c := newClient(t, f.URLs(), nil)
	chunks := fill(t, c, rand.New(rand.NewPCG(3, 3)), 20, 10000)
	f.Stop(2)
	for _, s := range chunks {
		mustFetch(t, c, s)
	}
	if got := c.metric(t, "lode_fleet_reconstructions_total", nil); got == 0 {
		t.Errorf("reconstructions = 0, want > 0 with a node down")
	}
	// A second dead node leaves 3 of 5 shards: a miss, never wrong bytes.
	f.Stop(4)
	_, err := c.Fetch(context.Background(), chunks[0].name, nil)
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Fetch with 2 of 5 nodes dead: err = %v, want store.ErrNotFound", err)
	}
}

// TestFleetPausedNode: a node that never answers does not hold up reads;
// its reply is not needed (the read completes while it is still stalled and
// the client abandons the request once Linger has passed).
func TestFleetPausedNode(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	c := newClient(t, f.URLs(), nil)
	chunks := fill(t, c, rand.New(rand.NewPCG(4, 4)), 10, 50000)
	f.Pause(1)
	defer f.Resume(1)
	for _, s := range chunks {
		mustFetch(t, c, s) // would wait out Timeout (10 s) and miss if it needed node 1
	}
	// Every request to the stalled node ends as "cancelled": not needed, and
	// given up Linger after its Fetch returned (a request may end before it
	// even reaches the node).
	n := f.Node(1)
	cancelled := func() float64 {
		return c.metric(t, "lode_fleet_shard_requests_total", map[string]string{"node": n.URL, "result": "cancelled"})
	}
	waitFor(t, func() bool { return cancelled() == float64(len(chunks)) }, "cancelled requests to the paused node")
	waitFor(t, func() bool { return n.Abandoned() == n.Stalled() }, "the paused node to see its requests abandoned")
	if got := c.metric(t, "lode_fleet_fetches_total", map[string]string{"result": "hit"}); got != float64(len(chunks)) {
		t.Errorf("fetch hits = %v, want %d", got, len(chunks))
	}
}

// waitFor polls cond until it holds or 10 s pass (a liveness bound, not a
// timing assertion).
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("waiting for %s: condition never held", what)
}

func TestFleetRestartedEmpty(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	c := newClient(t, f.URLs(), nil)
	chunks := fill(t, c, rand.New(rand.NewPCG(5, 5)), 20, 10000)
	f.Restart(3)
	for _, s := range chunks {
		mustFetch(t, c, s)
	}
	if got := c.metric(t, "lode_fleet_shard_requests_total", map[string]string{"node": f.Node(3).URL, "result": "miss"}); got == 0 {
		t.Errorf("misses at the restarted node = 0, want > 0")
	}
}

// TestFleetRestartedWithDisk: a node restarted with its disk directory
// serves what it had demoted.
func TestFleetRestartedWithDisk(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{MemBytes: 64 << 10, DiskBytes: 64 << 20})
	c := newClient(t, f.URLs(), nil)
	chunks := fill(t, c, rand.New(rand.NewPCG(6, 6)), 20, 100000)
	for i := 0; i < 5; i++ {
		f.Restart(i)
	}
	// Each node's 64 KiB of memory held the last two chunks' shards; the
	// rest had been demoted to disk.
	for _, s := range chunks[:15] {
		mustFetch(t, c, s)
	}
	if got := c.metric(t, "lode_fleet_shard_requests_total", map[string]string{"result": "miss"}); got != 0 {
		t.Errorf("node misses = %v after restarting every node with its disk, want 0", got)
	}
}

// TestFleetMembershipChange: after a node is added or removed, hit rate is at
// least 1 − the share of (chunk, node) pairs that moved. Readers ask each
// node for whatever shards it holds, so one change costs no hits at all.
func TestFleetMembershipChange(t *testing.T) {
	f := fleettest.Start(t, 8, fleettest.Options{})
	urls := f.URLs()
	r := rand.New(rand.NewPCG(7, 7))
	base := newClient(t, urls, nil)
	chunks := fill(t, base, r, 200, 4000)
	added := append(slices.Clone(urls), f.Node(f.Add()).URL)
	removed := slices.Delete(slices.Clone(urls), 5, 6)
	for _, tt := range []struct {
		name  string
		nodes []string
	}{{"add", added}, {"remove", removed}} {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, tt.nodes, nil)
			moved, hits := 0, 0
			for _, s := range chunks {
				before, after := cachefleet.Place(s.name, urls, 5), cachefleet.Place(s.name, tt.nodes, 5)
				for _, n := range before {
					if !slices.Contains(after, n) {
						moved++
					}
				}
				got, err := c.Fetch(context.Background(), s.name, nil)
				switch {
				case err == nil && bytes.Equal(got, s.data):
					hits++
				case err == nil:
					t.Fatalf("Fetch(%s) returned wrong bytes", s.name)
				case !errors.Is(err, store.ErrNotFound):
					t.Fatalf("Fetch(%s): %v", s.name, err)
				}
			}
			share := float64(moved) / float64(len(chunks)*5)
			rate := float64(hits) / float64(len(chunks))
			t.Logf("%s: %.3f of placements moved, hit rate %.3f", tt.name, share, rate)
			if share == 0 || rate < 1-share {
				t.Errorf("%s: hit rate %.3f, want ≥ 1 − %.3f moved (and something moved)", tt.name, rate, share)
			}
		})
	}
}

// corrupt overwrites a node's copy of shard idx of a chunk with a shard
// whose header is valid but whose payload has a flipped byte.
func corrupt(t *testing.T, node string, n chunk.Name) int {
	t.Helper()
	resp, err := http.Get(node + fleetproto.ShardPath(n, -1))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("reading shards of %s from %s: %v %v", n, node, resp, err)
	}
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	resp.Body.Close()
	shards, err := fleetproto.SplitShards(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	s := bytes.Clone(shards[0])
	h, _, _ := fleetproto.ParseShard(s)
	s[len(s)-1] ^= 0xff
	req, _ := http.NewRequest("PUT", node+fleetproto.ShardPath(n, h.Index), bytes.NewReader(s))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("overwriting shard %d of %s on %s: %v %v", h.Index, n, node, resp, err)
	}
	return h.Index
}

func TestFleetCorruptShard(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	c := newClient(t, f.URLs(), nil)
	chunks := fill(t, c, rand.New(rand.NewPCG(8, 8)), 10, 30000) // the corrupt shard arriving last every time (no proof, no count) has odds 5^-10
	for i, s := range chunks {
		node := cachefleet.Place(s.name, f.URLs(), 5)[i%5] // a data or a parity shard
		corrupt(t, node, s.name)
		mustFetch(t, c, s)
	}
	if got := c.metric(t, "lode_fleet_corrupt_shards_total", nil); got == 0 {
		t.Errorf("corrupt shards counted = 0, want > 0")
	}
	// The counter only counts shards proven bad: a fetch that happened not to
	// use the corrupt shard (it arrived last) has no proof.
	if got := c.metric(t, "lode_fleet_corrupt_shards_total", nil); got > float64(len(chunks)) {
		t.Errorf("corrupt shards counted = %v, want ≤ %d", got, len(chunks))
	}
}

func TestFleetTwoCorruptShardsMiss(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	c := newClient(t, f.URLs(), nil)
	s := fill(t, c, rand.New(rand.NewPCG(9, 9)), 1, 30000)[0]
	placed := cachefleet.Place(s.name, f.URLs(), 5)
	corrupt(t, placed[0], s.name)
	corrupt(t, placed[3], s.name)
	got, err := c.Fetch(context.Background(), s.name, nil)
	if err == nil {
		t.Fatalf("Fetch with 2 of 5 shards corrupt returned %d bytes (equal: %v), want an error", len(got), bytes.Equal(got, s.data))
	}
	if !errors.Is(err, store.ErrNotFound) || !errors.Is(err, chunk.ErrCorrupt) {
		t.Errorf("Fetch with 2 corrupt shards: err = %v, want store.ErrNotFound and chunk.ErrCorrupt", err)
	}
	// The agent's write-back after an origin fetch repairs the fleet.
	if err := c.Fill(context.Background(), s.name, s.data); err != nil {
		t.Fatal(err)
	}
	mustFetch(t, c, s)
}

// fakeResolver maps names to addresses; tests change it to model a
// headless service gaining or losing pods.
type fakeResolver struct {
	mu    sync.Mutex
	hosts map[string][]string
}

func (r *fakeResolver) LookupHost(ctx context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a, ok := r.hosts[host]; ok {
		return slices.Clone(a), nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (r *fakeResolver) set(host string, addrs []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if addrs == nil {
		delete(r.hosts, host)
		return
	}
	r.hosts[host] = addrs
}

// TestFleetDNSMembership: one DNS name resolving to every node's address
// (a Kubernetes headless service: one port, many pod IPs) is the whole
// fleet; re-resolution follows it; a failing lookup keeps the last good
// membership.
func TestFleetDNSMembership(t *testing.T) {
	f := fleettest.Start(t, 6, fleettest.Options{SamePort: true})
	var ips []string
	port := ""
	for _, u := range f.URLs() {
		h, p, _ := net.SplitHostPort(strings.TrimPrefix(u, "http://"))
		ips, port = append(ips, h), p
	}
	res := &fakeResolver{hosts: map[string][]string{}}
	res.set("cache.lode.svc", ips[:5])
	c := newClient(t, []string{"cache.lode.svc:" + port}, func(c *cachefleet.ClientConfig) {
		c.Resolver = res
		c.ResolveInterval = time.Hour // refreshed explicitly below
	})
	chunks := fill(t, c, rand.New(rand.NewPCG(10, 10)), 20, 5000)
	if got, want := c.Nodes(), f.URLs()[:5]; !slices.Equal(got, want) {
		t.Fatalf("Nodes() = %v, want %v", got, want)
	}
	res.set("cache.lode.svc", ips) // a pod joins
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if got, want := c.Nodes(), f.URLs(); !slices.Equal(got, want) {
		t.Fatalf("after a pod joined, Nodes() = %v, want %v", got, want)
	}
	for _, s := range chunks {
		mustFetch(t, c, s)
	}
	res.set("cache.lode.svc", nil) // DNS outage
	if err := c.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "cache.lode.svc") {
		t.Errorf("Refresh during a DNS outage: err = %v, want one naming cache.lode.svc", err)
	}
	if got := c.Nodes(); len(got) != 6 {
		t.Errorf("after a failed lookup, Nodes() = %v, want the 6 last resolved", got)
	}
}

func TestClientConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		c    cachefleet.ClientConfig
		want string
	}{
		{"no nodes", cachefleet.ClientConfig{}, "no fleet nodes"},
		{"M above K", cachefleet.ClientConfig{Nodes: []string{"a:1"}, M: 5, K: 4}, "erasure code 5-of-4"},
		{"bad port", cachefleet.ClientConfig{Nodes: []string{"a:99999"}}, "bad port"},
		{"path", cachefleet.ClientConfig{Nodes: []string{"http://a:1/x"}}, "must not have a path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cachefleet.NewClient(tt.c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewClient(%s) err = %v, want one containing %q", tt.name, err, tt.want)
			}
		})
	}
}

// TestFleetFewerNodesThanK: with 2 nodes and 4-of-5, shards wrap around
// (node 0 holds shards 0, 2, 4) and reads still work.
func TestFleetFewerNodesThanK(t *testing.T) {
	f := fleettest.Start(t, 2, fleettest.Options{})
	c := newClient(t, f.URLs(), nil)
	for _, s := range fill(t, c, rand.New(rand.NewPCG(11, 11)), 5, 20000) {
		mustFetch(t, c, s)
	}
}

// TestFleetProcesses runs nodes as separate processes: a SIGSTOPped node
// (connections accepted, nothing answered) and a SIGKILLed one.
func TestFleetProcesses(t *testing.T) {
	p := fleettest.StartProcesses(t, 5, fleettest.Options{})
	c := newClient(t, p.URLs(), nil)
	chunks := fill(t, c, rand.New(rand.NewPCG(12, 12)), 10, 60000)
	p.Freeze(0)
	for _, s := range chunks {
		mustFetch(t, c, s)
	}
	p.Thaw(0)
	hits := func() float64 {
		return c.metric(t, "lode_fleet_shard_requests_total", map[string]string{"node": p.URLs()[4], "result": "hit"})
	}
	failed := func() float64 {
		return c.metric(t, "lode_fleet_shard_requests_total", map[string]string{"node": p.URLs()[4], "result": "error"}) +
			c.metric(t, "lode_fleet_shard_requests_total", map[string]string{"node": p.URLs()[4], "result": "cancelled"})
	}
	waitFor(t, func() bool { return hits()+failed() == float64(len(chunks)) }, "requests of the first round to finish")
	hitsBefore, failedBefore := hits(), failed()
	p.Kill(4)
	for _, s := range chunks {
		mustFetch(t, c, s)
	}
	// Each request to the killed node failed, or was cancelled first.
	waitFor(t, func() bool { return failed()-failedBefore == float64(len(chunks)) }, "requests to the killed node to fail")
	if got := hits() - hitsBefore; got != 0 {
		t.Errorf("hits from the killed node = %v, want 0", got)
	}
}

func BenchmarkFleetFetch_4of5(b *testing.B) {
	f := fleettest.Start(b, 5, fleettest.Options{})
	c := newClient(b, f.URLs(), nil)
	data, n := randomChunk(rand.New(rand.NewPCG(13, 13)), chunk.DefaultSize)
	if err := c.Fill(context.Background(), n, data); err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, chunk.DefaultSize)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Fetch(context.Background(), n, dst); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFleetFetchParallel_4of5(b *testing.B) {
	f := fleettest.Start(b, 5, fleettest.Options{})
	c := newClient(b, f.URLs(), nil)
	r := rand.New(rand.NewPCG(14, 14))
	var names []chunk.Name
	for i := 0; i < 16; i++ {
		data, n := randomChunk(r, chunk.DefaultSize)
		if err := c.Fill(context.Background(), n, data); err != nil {
			b.Fatal(err)
		}
		names = append(names, n)
	}
	b.SetBytes(chunk.DefaultSize)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		dst := make([]byte, 0, chunk.DefaultSize)
		i := 0
		for pb.Next() {
			if _, err := c.Fetch(context.Background(), names[i%len(names)], dst); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// dialCounter is a transport that counts the connections it dials, per
// address.
type dialCounter struct {
	mu    sync.Mutex
	dials map[string]int
}

func newDialCounter() *dialCounter { return &dialCounter{dials: map[string]int{}} }

func (d *dialCounter) transport() *http.Transport {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d.mu.Lock()
			d.dials[addr]++
			d.mu.Unlock()
			return dialer.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 128,
		DisableCompression:  true,
	}
}

// snapshot returns the dials so far per node URL.
func (d *dialCounter) snapshot() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int{}
	for a, n := range d.dials {
		out["http://"+a] = n
	}
	return out
}

func dialsSince(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for a, n := range after {
		if n > before[a] {
			out[a] = n - before[a]
		}
	}
	return out
}

// getsDone counts shard GETs that finished, whatever their result.
func (c testClient) getsDone(t testing.TB, node string) float64 {
	sum := 0.0
	for _, r := range []string{"hit", "miss", "error", "cancelled"} {
		l := map[string]string{"op": "get", "result": r}
		if node != "" {
			l["node"] = node
		}
		sum += c.metric(t, "lode_fleet_shard_requests_total", l)
	}
	return sum
}

// TestFleetConnectionReuse: a healthy fleet dials no new connections once
// warm. Fetch returns after M of K answers; the request it no longer needs
// is drained in the background, not cancelled, so its connection goes
// back to the pool (before the fix, ~0.4 dials per Fetch).
func TestFleetConnectionReuse(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	dc := newDialCounter()
	c := newClient(t, f.URLs(), func(c *cachefleet.ClientConfig) { c.Transport = dc.transport(); c.Linger = time.Minute })
	chunks := fill(t, c, rand.New(rand.NewPCG(15, 15)), 20, 60000)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ { // warm-up: several connections per node
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, s := range chunks {
				if got, err := c.Fetch(context.Background(), s.name, nil); err != nil || !bytes.Equal(got, s.data) {
					t.Errorf("warm-up Fetch(%s): %v", s.name, err)
				}
			}
		}()
	}
	wg.Wait()
	gets := float64(4 * len(chunks) * 5)
	waitFor(t, func() bool { return c.getsDone(t, "") == gets }, "warm-up requests to finish")
	before := dc.snapshot()
	const fetches = 60
	for i := 0; i < fetches; i++ {
		mustFetch(t, c, chunks[i%len(chunks)])
		// Requests Fetch did not need finish in the background; wait for
		// them so that each Fetch starts with the pool as it would settle.
		gets += 5
		waitFor(t, func() bool { return c.getsDone(t, "") == gets }, "this fetch's requests to finish")
	}
	if d := dialsSince(before, dc.snapshot()); len(d) != 0 {
		t.Errorf("%d fetches from a warm, healthy fleet dialed %v, want no new connections", fetches, d)
	}
}

// TestFleetConnectionReusePausedNode: a node that does not answer gets at
// most MaxWaiting requests (one connection each); after that Fetch skips
// it (counted as busy) and dials nothing. When it resumes, its queued
// answers are drained and its connections reused.
func TestFleetConnectionReusePausedNode(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	dc := newDialCounter()
	const maxWaiting = 4
	c := newClient(t, f.URLs(), func(c *cachefleet.ClientConfig) {
		c.Transport = dc.transport()
		c.Linger = time.Minute // nothing expires during the test
		c.MaxWaiting = maxWaiting
	})
	chunks := fill(t, c, rand.New(rand.NewPCG(16, 16)), 10, 60000)
	gets := 0.0
	settle := func() {
		t.Helper()
		waitFor(t, func() bool { return c.getsDone(t, "") == gets }, "requests to finish")
	}
	for _, s := range chunks {
		mustFetch(t, c, s)
		gets += 5
		settle()
	}
	paused := f.Node(1).URL
	busy := func() float64 {
		return c.metric(t, "lode_fleet_shard_requests_total", map[string]string{"node": paused, "result": "busy"})
	}
	f.Pause(1)
	defer f.Resume(1)
	before := dc.snapshot()
	const fetches = 30
	for i := 0; i < fetches; i++ {
		mustFetch(t, c, chunks[i%len(chunks)]) // needs all 4 other nodes: their requests are done
	}
	d := dialsSince(before, dc.snapshot())
	if d[paused] > maxWaiting {
		t.Errorf("%d fetches with a paused node dialed it %d times, want ≤ MaxWaiting = %d", fetches, d[paused], maxWaiting)
	}
	delete(d, paused)
	if len(d) != 0 {
		t.Errorf("fetches with a paused node dialed healthy nodes: %v, want none", d)
	}
	if got := busy(); got != fetches-maxWaiting {
		t.Errorf("requests skipped at the paused node = %v, want %d", got, fetches-maxWaiting)
	}
	gets += 4 * fetches
	settle()

	cancelled := func() float64 {
		return c.metric(t, "lode_fleet_shard_requests_total", map[string]string{"node": paused, "result": "cancelled"})
	}
	cancelledBefore := cancelled()
	f.Resume(1)
	gets += maxWaiting // the queued requests are answered and drained
	settle()
	if got := cancelled() - cancelledBefore; got != maxWaiting {
		t.Errorf("late answers of the resumed node = %v, want %d, drained as not needed", got, maxWaiting)
	}
	before = dc.snapshot()
	for _, s := range chunks {
		mustFetch(t, c, s)
		gets += 5
		settle()
	}
	if d := dialsSince(before, dc.snapshot()); len(d) != 0 {
		t.Errorf("fetches after the node resumed dialed %v, want its drained connections reused", d)
	}
	if got := busy(); got != fetches-maxWaiting {
		t.Errorf("requests skipped after resume: %v, want none more", got-(fetches-maxWaiting))
	}
}

// TestClientCloseLeavesNoGoroutines: Close cancels requests still
// lingering (here: to a paused node, with a Linger far longer than the
// test) and waits for them; the process's goroutine count settles back to
// where it was before the client.
func TestClientCloseLeavesNoGoroutines(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	baseline := runtime.NumGoroutine()
	cl, err := cachefleet.NewClient(cachefleet.ClientConfig{Nodes: f.URLs(), Timeout: 10 * time.Second, Linger: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c := testClient{Client: cl}
	chunks := fill(t, c, rand.New(rand.NewPCG(17, 17)), 8, 30000)
	f.Pause(2)
	defer f.Resume(2)
	for _, s := range chunks {
		mustFetch(t, c, s)
	}
	done := make(chan error, 1)
	go func() { done <- cl.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second): // a liveness bound
		t.Fatalf("Close did not return with requests lingering at a paused node")
	}
	waitFor(t, func() bool { return runtime.NumGoroutine() <= baseline }, fmt.Sprintf("goroutines to settle to %d", baseline))
	if _, err := cl.Fetch(context.Background(), chunks[0].name, nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Fetch after Close: err = %v, want a miss", err)
	}
}
