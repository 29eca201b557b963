// Package fleettest runs real cache nodes for tests: in-process servers on
// loopback listeners (Start), or separate processes that can be killed and
// SIGSTOPped (StartProcesses). Nodes are the real cachenode.Server behind a
// real TCP listener; the only test-only part is the Pause switch, which
// stalls requests to model a slow node.
//
// It owns no production behaviour and is imported only from _test.go files
// (DESIGN.md "Tiers", STYLE.md 3.3 item 10).
package fleettest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/cachenode"
)

// Options configures every node of a fleet.
type Options struct {
	// MemBytes is each node's memory budget (default 64 MiB).
	MemBytes int64
	// DiskBytes, when positive, gives each node a disk tier of that size in
	// a directory under t.TempDir() that survives Restart.
	DiskBytes int64
	// Log receives node logs; nil discards them.
	Log *slog.Logger
	// SamePort puts every node on the same port (each on its own
	// 127.0.0.x), as pods behind a headless service are. Start picks a port
	// free on all n addresses, trying other ports on a collision; a node
	// added later that cannot get the port fails the test.
	SamePort bool
}

func (o *Options) defaults() {
	if o.MemBytes == 0 {
		o.MemBytes = 64 << 20
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Fleet is a set of in-process cache nodes.
type Fleet struct {
	t        testing.TB
	opts     Options
	mu       sync.Mutex
	nodes    []*Node
	reserved []net.Listener // SamePort: listeners Start opened for the next nodes
}

// listen is net.Listen; a test replaces it to simulate port collisions.
var listen = net.Listen

// Node is one in-process cache node.
type Node struct {
	// URL is the node's base URL ("http://127.0.0.x:port"), stable across
	// Stop and Restart.
	URL  string
	addr string
	dir  string

	mu      sync.Mutex
	srv     *cachenode.Server
	hs      *http.Server
	pause   chan struct{} // non-nil while paused; closed on Resume
	running bool

	requests  atomic.Int64 // shard requests received
	stalled   atomic.Int64 // requests that arrived while paused
	abandoned atomic.Int64 // stalled requests the client gave up on
}

// Server returns the node's current server (a new one after Restart).
func (n *Node) Server() *cachenode.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// Requests counts shard requests the node received.
func (n *Node) Requests() int64 { return n.requests.Load() }

// Stalled counts requests that arrived while the node was paused.
func (n *Node) Stalled() int64 { return n.stalled.Load() }

// Abandoned counts stalled requests whose client went away before Resume:
// their reply was never needed.
func (n *Node) Abandoned() int64 { return n.abandoned.Load() }

// Start starts n nodes on 127.0.0.2, 127.0.0.3, … (127.0.0.1 where those
// are unavailable), each on a free port, and stops them at cleanup.
func Start(t testing.TB, n int, o Options) *Fleet {
	t.Helper()
	o.defaults()
	f := &Fleet{t: t, opts: o}
	t.Cleanup(f.close)
	if o.SamePort && n > 0 {
		f.reserved = samePortListeners(t, n)
	}
	for i := 0; i < n; i++ {
		f.Add()
	}
	return f
}

// samePortListeners listens on 127.0.0.2..(n+1) on one port, trying other
// ports when one of them is taken there (another test's node, a leftover
// process): a collision is the machine's state, not a missing capability,
// so it is never a reason to skip.
func samePortListeners(t testing.TB, n int) []net.Listener {
	t.Helper()
	var lastErr error
	for range 100 {
		l0, err := listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatalf("same-port fleet: listening on 127.0.0.2: %v", err)
		}
		_, port, _ := net.SplitHostPort(l0.Addr().String())
		ls := []net.Listener{l0}
		for i := 1; i < n; i++ {
			l, err := listen("tcp", net.JoinHostPort(fmt.Sprintf("127.0.0.%d", 2+i), port))
			if err != nil {
				lastErr = err
				break
			}
			ls = append(ls, l)
		}
		if len(ls) == n {
			return ls
		}
		for _, l := range ls {
			l.Close()
		}
	}
	t.Fatalf("same-port fleet of %d nodes: no port free on 127.0.0.2..%d in 100 tries: %v", n, n+1, lastErr)
	return nil
}

// URLs returns every node's URL, in index order, including stopped nodes
// (a client does not know a node died).
func (f *Fleet) URLs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	urls := make([]string, len(f.nodes))
	for i, n := range f.nodes {
		urls[i] = n.URL
	}
	return urls
}

// Node returns node i.
func (f *Fleet) Node(i int) *Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[i]
}

// Len is the number of nodes ever started.
func (f *Fleet) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.nodes)
}

// Add starts one more node and returns its index.
func (f *Fleet) Add() int {
	f.t.Helper()
	f.mu.Lock()
	i := len(f.nodes)
	f.mu.Unlock()
	var l net.Listener
	f.mu.Lock()
	if len(f.reserved) > 0 {
		l, f.reserved = f.reserved[0], f.reserved[1:]
	}
	f.mu.Unlock()
	switch {
	case l != nil:
	case f.opts.SamePort && i > 0:
		_, port, _ := net.SplitHostPort(f.Node(0).addr)
		var err error
		if l, err = listen("tcp", net.JoinHostPort(fmt.Sprintf("127.0.0.%d", 2+i), port)); err != nil {
			f.t.Fatalf("same-port fleet: node %d needs 127.0.0.%d:%s: %v", i, 2+i, port, err)
		}
	default:
		l = listenLoopback(f.t, i)
	}
	n := &Node{addr: l.Addr().String(), URL: "http://" + l.Addr().String()}
	if f.opts.DiskBytes > 0 {
		n.dir = f.t.TempDir()
	}
	f.serve(n, l)
	f.mu.Lock()
	f.nodes = append(f.nodes, n)
	f.mu.Unlock()
	return i
}

// listenLoopback listens on 127.0.0.(2+i):0, or 127.0.0.1:0 if that fails.
func listenLoopback(t testing.TB, i int) net.Listener {
	t.Helper()
	if i < 250 {
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", 2+i)); err == nil {
			return l
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening on loopback: %v", err)
	}
	return l
}

func (f *Fleet) serve(n *Node, l net.Listener) {
	f.t.Helper()
	srv, err := cachenode.NewServer(cachenode.ServerConfig{
		MemBytes: f.opts.MemBytes, DiskDir: n.dir, DiskBytes: f.opts.DiskBytes,
		Log: f.opts.Log.With(slog.String("node", n.URL)),
	})
	if err != nil {
		l.Close()
		f.t.Fatalf("starting node %s: %v", n.URL, err)
	}
	hs := &http.Server{Handler: n.wrap(srv), ReadHeaderTimeout: 10 * time.Second}
	n.mu.Lock()
	n.srv, n.hs, n.running = srv, hs, true
	n.mu.Unlock()
	go hs.Serve(l)
}

// wrap counts requests and implements Pause.
func (n *Node) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			n.requests.Add(1)
			n.mu.Lock()
			p := n.pause
			n.mu.Unlock()
			if p != nil {
				n.stalled.Add(1)
				select {
				case <-p:
				case <-r.Context().Done():
					n.abandoned.Add(1)
					return
				}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// Stop closes node i's listener and connections: it refuses connections
// until Restart.
func (f *Fleet) Stop(i int) {
	n := f.Node(i)
	n.mu.Lock()
	hs, running := n.hs, n.running
	n.running = false
	if n.pause != nil {
		close(n.pause)
		n.pause = nil
	}
	n.mu.Unlock()
	if running {
		hs.Close()
	}
}

// Restart stops node i and starts an empty node on the same address (its
// disk directory, if any, is kept: a restart with the same disk).
func (f *Fleet) Restart(i int) {
	f.t.Helper()
	f.Stop(i)
	n := f.Node(i)
	var l net.Listener
	var err error
	for try := 0; try < 50; try++ { // the port is free once Close returns; retry defensively
		if l, err = net.Listen("tcp", n.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		f.t.Fatalf("restarting node %s: %v", n.URL, err)
	}
	f.serve(n, l)
}

// Pause makes node i stall every shard request until Resume (or until the
// client gives up): a node answering slowly.
func (f *Fleet) Pause(i int) {
	n := f.Node(i)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pause == nil {
		n.pause = make(chan struct{})
	}
}

// Resume releases a paused node.
func (f *Fleet) Resume(i int) {
	n := f.Node(i)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.pause != nil {
		close(n.pause)
		n.pause = nil
	}
}

func (f *Fleet) close() {
	for i := 0; i < f.Len(); i++ {
		f.Stop(i)
	}
}

// Environment of a node process started by StartProcesses.
const (
	envNode = "LODE_FLEETTEST_NODE"      // listen address
	envMem  = "LODE_FLEETTEST_MEM"       // memory budget
	readyTo = "LODE_FLEETTEST_LISTENING" // first stdout line prefix
)

// Main is a TestMain for packages that use StartProcesses: in a node child
// process it serves a cache node until killed; otherwise it runs the tests.
//
//	func TestMain(m *testing.M) { fleettest.Main(m) }
func Main(m *testing.M) {
	if addr := os.Getenv(envNode); addr != "" {
		os.Exit(runChild(addr))
	}
	os.Exit(m.Run())
}

func runChild(addr string) int {
	mem, _ := strconv.ParseInt(os.Getenv(envMem), 10, 64)
	if mem <= 0 {
		mem = 64 << 20
	}
	srv, err := cachenode.NewServer(cachenode.ServerConfig{MemBytes: mem})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%s http://%s\n", readyTo, l.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := srv.Serve(ctx, l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// ProcFleet is a set of cache nodes, each a separate process (the test
// binary re-executed; the package's TestMain must call Main).
type ProcFleet struct {
	t     testing.TB
	urls  []string
	procs []*exec.Cmd
}

// StartProcesses starts n node processes on 127.0.0.(2+i) (or 127.0.0.1)
// and kills them at cleanup.
func StartProcesses(t testing.TB, n int, o Options) *ProcFleet {
	t.Helper()
	o.defaults()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("finding test binary: %v", err)
	}
	p := &ProcFleet{t: t}
	t.Cleanup(p.close)
	for i := 0; i < n; i++ {
		host := fmt.Sprintf("127.0.0.%d", 2+i)
		if l, err := net.Listen("tcp", host+":0"); err == nil {
			l.Close()
		} else {
			host = "127.0.0.1"
		}
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), envNode+"="+host+":0", envMem+"="+strconv.FormatInt(o.MemBytes, 10))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatalf("starting node process: %v", err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting node process: %v", err)
		}
		p.procs = append(p.procs, cmd)
		line, err := bufio.NewReader(out).ReadString('\n')
		url, ok := strings.CutPrefix(strings.TrimSpace(line), readyTo+" ")
		if err != nil || !ok {
			t.Fatalf("node process %d did not report its address (does TestMain call fleettest.Main?): %q, %v", i, line, err)
		}
		p.urls = append(p.urls, url)
	}
	return p
}

// URLs returns the nodes' URLs in index order.
func (p *ProcFleet) URLs() []string { return append([]string(nil), p.urls...) }

// Kill sends SIGKILL to node i and waits for it to exit.
func (p *ProcFleet) Kill(i int) {
	p.procs[i].Process.Signal(syscall.SIGKILL)
	p.procs[i].Wait()
}

// Freeze sends SIGSTOP to node i: its kernel still accepts connections but
// nothing answers.
func (p *ProcFleet) Freeze(i int) { p.signal(i, syscall.SIGSTOP) }

// Thaw sends SIGCONT to node i.
func (p *ProcFleet) Thaw(i int) { p.signal(i, syscall.SIGCONT) }

func (p *ProcFleet) signal(i int, s syscall.Signal) {
	if err := p.procs[i].Process.Signal(s); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Errorf("signalling node process %d: %v", i, err)
	}
}

func (p *ProcFleet) close() {
	for _, c := range p.procs {
		c.Process.Signal(syscall.SIGCONT)
		c.Process.Signal(syscall.SIGKILL)
		c.Wait()
	}
}
