package cachenode

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/certs"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/lode-dev/lode/internal/lodetest"
)

// Issue #19, fleet authentication: the attacks of docs/reliability.md's
// table, each against a node that requires mutual TLS.

// pki is a fleet CA with a node, a worker, and identities an attacker might
// hold: a node's certificate used as a client, and a worker certificate
// with the same name from a CA of its own (a forged certificate).
type pki struct {
	node, worker, nodeAsClient, forged certs.Files
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir, other := t.TempDir(), t.TempDir()
	var p pki
	var err error
	if p.node, err = certs.Issue(dir, "node1", certs.RoleNode, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if p.worker, err = certs.Issue(dir, "worker1", certs.RoleWorker, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	if p.nodeAsClient, err = certs.Issue(dir, "node2", certs.RoleNode, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if p.forged, err = certs.Issue(other, "worker1", certs.RoleWorker, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	p.forged.CA = p.node.CA // it trusts the real fleet, the fleet does not trust it
	return p
}

func tlsNode(t *testing.T, files certs.Files) (*Server, string) {
	t.Helper()
	r, err := certs.NewReloader(files)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(ServerConfig{MemBytes: 64 << 20, TLS: r.ServerConfig(certs.RoleWorker)})
	if err != nil {
		t.Fatal(err)
	}
	return s, serveNode(t, s)
}

// client returns an HTTP client with identity f (zero: no certificate),
// or plain HTTP when plain; its transport records the bytes it wrote.
func client(t *testing.T, f certs.Files, ca string, rec io.Writer) *http.Client {
	t.Helper()
	var cfg *tls.Config
	if f.Cert != "" {
		r, err := certs.NewReloader(f)
		if err != nil {
			t.Fatal(err)
		}
		cfg = r.ClientConfig(certs.RoleNode, "")
	} else {
		// No client certificate, but the server's chain is checked.
		r, err := certs.NewReloader(certs.Files{Cert: strings.Replace(ca, "ca.crt", "node1.crt", 1), Key: strings.Replace(ca, "ca.crt", "node1.key", 1), CA: ca})
		if err != nil {
			t.Fatal(err)
		}
		cfg = r.ClientConfig(certs.RoleNode, "")
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	if rec != nil {
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			return &recConn{Conn: c, w: rec}, err
		}
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// recConn copies what a client writes to w, which must be safe for
// concurrent writes (the transport closes connections from its own
// goroutines, and a close writes a TLS alert).
type recConn struct {
	net.Conn
	w io.Writer
}

func (c *recConn) Write(p []byte) (int, error) {
	c.w.Write(p)
	return c.Conn.Write(p)
}

func testShardBytes(seed byte) ([]byte, chunk.Name) {
	ct := bytes.Repeat([]byte{seed, seed + 1, seed + 2}, 1000)
	n := chunk.NameOf(ct)
	b := make([]byte, fleetproto.HeaderSize+len(ct))
	fleetproto.ShardHeader{M: 1, K: 1, Index: 0, Length: len(ct), Name: n}.Put(b)
	copy(b[fleetproto.HeaderSize:], ct)
	return b, n
}

type reqs struct {
	get, put, lease func(*http.Client) (int, error)
}

func requests(addr, scheme string, shard []byte, n chunk.Name) reqs {
	u := func(p string) string { return scheme + "://" + addr + p }
	do := func(c *http.Client, method, url string, body []byte) (int, error) {
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	return reqs{
		get:   func(c *http.Client) (int, error) { return do(c, "GET", u(fleetproto.ShardPath(n, 0)), nil) },
		put:   func(c *http.Client) (int, error) { return do(c, "PUT", u(fleetproto.ShardPath(n, 0)), shard) },
		lease: func(c *http.Client) (int, error) { return do(c, "POST", u(fleetproto.LeasePath(n, time.Minute)), nil) },
	}
}

// TestFleetAuthAttacks: without a worker certificate from the fleet CA no
// request gets an answer (refused at the handshake, before any request
// byte is read), so no shard is read, replaced or stored and no lease is
// taken; with one, everything works.
func TestFleetAuthAttacks(t *testing.T) {
	p := newPKI(t)
	s, addr := tlsNode(t, p.node)
	shard, n := testShardBytes(1)
	worker := client(t, p.worker, p.node.CA, nil)
	r := requests(addr, "https", shard, n)
	if code, err := r.put(worker); err != nil || code != http.StatusNoContent {
		t.Fatalf("worker PUT = %d, %v; want 204", code, err)
	}
	evil, _ := testShardBytes(9)
	attackers := []struct {
		name   string
		client *http.Client
		scheme string
	}{
		{"plain HTTP", &http.Client{Timeout: 5 * time.Second}, "http"},
		{"TLS without a client certificate", client(t, certs.Files{}, p.node.CA, nil), "https"},
		{"forged worker certificate (another CA)", client(t, p.forged, p.node.CA, nil), "https"},
		{"node certificate used as a client", client(t, p.nodeAsClient, p.node.CA, nil), "https"},
	}
	for _, a := range attackers {
		t.Run(a.name, func(t *testing.T) {
			before := testutil.ToFloat64(s.tlsRefused)
			ar := requests(addr, a.scheme, evil, n) // a PUT that would replace the stored shard
			for op, f := range map[string]func(*http.Client) (int, error){"GET": ar.get, "PUT": ar.put, "lease": ar.lease} {
				if code, err := f(a.client); err == nil {
					t.Errorf("%s by %s = %d; want the connection refused", op, a.name, code)
				}
			}
			// The server counts a refused handshake after the client has
			// seen it fail: wait for the count, not for the client.
			deadline := time.Now().Add(5 * time.Second)
			for testutil.ToFloat64(s.tlsRefused) < before+3 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := testutil.ToFloat64(s.tlsRefused); got < before+3 {
				t.Errorf("lode_cachenode_tls_refused_total rose by %v, want 3", got-before)
			}
		})
	}
	// Nothing an attacker sent took effect: the worker's shard is intact
	// and the lease is free.
	req, _ := http.NewRequest("GET", "https://"+addr+fleetproto.ShardPath(n, 0), nil)
	resp, err := worker.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, shard) {
		t.Error("the stored shard changed")
	}
	if code, err := r.lease(worker); err != nil || code != http.StatusCreated {
		t.Errorf("worker lease after the attacks = %d, %v; want 201 (no attacker holds it)", code, err)
	}
}

// TestFleetReplay: the bytes of a worker's PUT, captured on the wire and
// sent again on a new connection, are refused: TLS session keys are fresh
// per connection, so a replay fails the handshake.
func TestFleetReplay(t *testing.T) {
	p := newPKI(t)
	_, addr1 := tlsNode(t, p.node)
	s2, addr2 := tlsNode(t, p.node)
	shard, n := testShardBytes(3)
	var wire lodetest.SyncBuffer
	if code, err := requests(addr1, "https", shard, n).put(client(t, p.worker, p.node.CA, &wire)); err != nil || code != http.StatusNoContent {
		t.Fatalf("worker PUT = %d, %v", code, err)
	}
	for _, addr := range []string{addr1, addr2} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(wire.String()))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		reply, _ := io.ReadAll(c)
		c.Close()
		if bytes.Contains(reply, []byte("HTTP/1.1 204")) {
			t.Errorf("replayed PUT to %s was answered 204", addr)
		}
	}
	if _, ok := s2.store.openShared(shardKey{n, 0}); ok {
		t.Error("the replayed PUT stored a shard on the second node")
	}
}

// TestPutBodyBudget: a PUT that announces the largest shard but sends a
// few bytes holds one read step of the budget, not its announced length.
func TestPutBodyBudget(t *testing.T) {
	b := newBodyBudget(4 * bodyStep)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, release, err := b.read(context.Background(), pr, fleetproto.MaxShardSize)
		release()
		done <- err
	}()
	pw.Write(make([]byte, 1000))
	// The reader now waits for more; 3 of the 4 steps must still be free.
	deadline := time.Now().Add(5 * time.Second)
	for !b.sem.TryAcquire(3 * bodyStep) {
		if time.Now().After(deadline) {
			t.Fatal("a PUT that sent 1000 bytes holds more than one step of the budget")
		}
		time.Sleep(time.Millisecond)
	}
	if b.sem.TryAcquire(bodyStep) {
		t.Error("the PUT holds no budget at all")
	}
	b.sem.Release(3 * bodyStep)
	pw.CloseWithError(fmt.Errorf("client went away"))
	if err := <-done; err == nil {
		t.Error("read of a truncated body succeeded")
	}
}

// TestFleetClientOverTLS: the worker's fleet client (cachefleet) fills and
// fetches a chunk through a node that requires mutual TLS.
func TestFleetClientOverTLS(t *testing.T) {
	p := newPKI(t)
	_, addr := tlsNode(t, p.node)
	r, err := certs.NewReloader(p.worker)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cachefleet.NewClient(cachefleet.ClientConfig{Nodes: []string{addr}, M: 1, K: 2, TLS: r.ClientConfig(certs.RoleNode, "")})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ct := bytes.Repeat([]byte("lode"), 5000)
	n := chunk.NameOf(ct)
	if err := cl.Fill(context.Background(), n, ct); err != nil {
		t.Fatalf("Fill over TLS = %v", err)
	}
	got, err := cl.Fetch(context.Background(), n, nil)
	if err != nil || !bytes.Equal(got, ct) {
		t.Fatalf("Fetch over TLS = %d bytes, %v", len(got), err)
	}
}
