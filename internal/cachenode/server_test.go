package cachenode

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
)

// testCodec frames chunks as shards for node tests. A node checks shard
// headers and lengths, never parity, so parity payloads are left zero; the
// real coding is internal/cachefleet's.
type testCodec struct{ m, k int }

func newCodec(m, k int) (testCodec, error) { return testCodec{m, k}, nil }

func (c testCodec) encode(n chunk.Name, data []byte) ([][]byte, error) {
	h := fleetproto.ShardHeader{M: c.m, K: c.k, Length: len(data), Name: n}
	shards := make([][]byte, c.k)
	for i := range shards {
		shards[i] = make([]byte, fleetproto.HeaderSize+h.PayloadSize())
		h.Index = i
		h.Put(shards[i])
		if i < c.m {
			data = data[copy(shards[i][fleetproto.HeaderSize:], data):]
		}
	}
	return shards, nil
}

func randomChunk(r *rand.Rand, size int) ([]byte, chunk.Name) {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b, chunk.NameOf(b)
}

func newTestServer(t testing.TB) *Server {
	t.Helper()
	s, err := NewServer(ServerConfig{MemBytes: 64 << 20})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	return s
}

func do(h http.Handler, method, target string, body []byte) *httptest.ResponseRecorder {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req := httptest.NewRequest(method, target, r)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestServerRoundTrip(t *testing.T) {
	s := newTestServer(t)
	r := rand.New(rand.NewPCG(1, 1))
	k, b := testShard(t, r, 5000, 2)
	path := fleetproto.ShardPath(k.name, 2)
	if w := do(s, "GET", path, nil); w.Code != http.StatusNotFound {
		t.Fatalf("GET before PUT = %d, want 404", w.Code)
	}
	if w := do(s, "PUT", path, b); w.Code != http.StatusNoContent {
		t.Fatalf("PUT = %d %s, want 204", w.Code, w.Body)
	}
	if w := do(s, "GET", path, nil); w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), b) {
		t.Fatalf("GET = %d (%d bytes), want 200 with the shard", w.Code, w.Body.Len())
	}
	if w := do(s, "HEAD", path, nil); w.Code != http.StatusOK || w.Header().Get("Content-Length") != "1294" {
		t.Fatalf("HEAD = %d length %q, want 200 length 1294", w.Code, w.Header().Get("Content-Length"))
	}
	if w := do(s, "GET", fleetproto.ShardPath(k.name, -1), nil); w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), b) {
		t.Fatalf("GET all = %d (%d bytes), want 200 with the one shard", w.Code, w.Body.Len())
	}
	if w := do(s, "GET", "/healthz", nil); w.Code != http.StatusOK || w.Body.String() != "ok\n" {
		t.Errorf("GET /healthz = %d %q, want 200 ok", w.Code, w.Body)
	}
	if w := do(s, "GET", "/metrics", nil); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `lode_cachenode_hits_total{tier="memory"} 2`) {
		t.Errorf("GET /metrics = %d, want 200 counting 2 memory hits:\n%s", w.Code, w.Body)
	}
}

// TestServerRejects: bad paths, methods and bodies get 4xx and store nothing.
func TestServerRejects(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	k, b := testShard(t, r, 5000, 2)
	hexName := k.name.String()
	other := chunk.NameOf([]byte("other")).String()
	tests := []struct {
		name, method, path string
		body               []byte
		want               int
	}{
		{"unknown path", "GET", "/v2/shards/" + hexName + "/2", nil, 404},
		{"short name", "GET", "/v1/shards/abcd/2", nil, 400},
		{"upper-case name", "GET", "/v1/shards/" + strings.ToUpper(hexName) + "/2", nil, 400},
		{"non-hex name", "GET", "/v1/shards/" + strings.Repeat("g", 64) + "/2", nil, 400},
		{"index out of range", "GET", "/v1/shards/" + hexName + "/32", nil, 400},
		{"negative index", "GET", "/v1/shards/" + hexName + "/-1", nil, 400},
		{"leading zero", "GET", "/v1/shards/" + hexName + "/02", nil, 400},
		{"extra segment", "GET", "/v1/shards/" + hexName + "/2/x", nil, 400},
		{"escaped", "GET", "/v1/shards/" + hexName + "%2F2", nil, 400},
		{"query", "GET", "/v1/shards/" + hexName + "/2?x=1", nil, 400},
		{"bad method", "DELETE", "/v1/shards/" + hexName + "/2", nil, 405},
		{"PUT to all", "PUT", "/v1/shards/" + hexName, b, 405},
		{"garbage body", "PUT", "/v1/shards/" + hexName + "/2", []byte("not a shard"), 400},
		{"empty body", "PUT", "/v1/shards/" + hexName + "/2", []byte{}, 400},
		{"wrong index", "PUT", "/v1/shards/" + hexName + "/3", b, 400},
		{"wrong chunk", "PUT", "/v1/shards/" + other + "/2", b, 400},
		{"truncated shard", "PUT", "/v1/shards/" + hexName + "/2", b[:len(b)-1], 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestServer(t)
			if w := do(s, tt.method, tt.path, tt.body); w.Code != tt.want {
				t.Errorf("%s %s = %d %s, want %d", tt.method, tt.path, w.Code, w.Body, tt.want)
			}
			if st := s.store.stats(); st.MemShards != 0 {
				t.Errorf("%s stored %d shards, want 0", tt.name, st.MemShards)
			}
		})
	}
}

func TestServerRejectsOversizedBody(t *testing.T) {
	s := newTestServer(t)
	path := fleetproto.ShardPath(chunk.NameOf([]byte("x")), 0)
	req := httptest.NewRequest("PUT", path, io.LimitReader(zeros{}, fleetproto.MaxShardSize+1))
	req.ContentLength = fleetproto.MaxShardSize + 1
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req)
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("PUT with Content-Length %d = %d, want 413", req.ContentLength, w.Code)
	}
	// Without a declared length, the body limit stops the read.
	req = httptest.NewRequest("PUT", path, io.LimitReader(zeros{}, fleetproto.MaxShardSize+1))
	req.ContentLength = -1
	w = httptest.NewRecorder()
	s.ServeHTTP(w, req)
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked PUT of %d bytes = %d, want 413", fleetproto.MaxShardSize+1, w.Code)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// FuzzShardAPI: any method, path and body gets an answer below 500 and the
// handler never panics; what a PUT stores always parses as a shard.
func FuzzShardAPI(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 3))
	k, b := testShard(f, r, 3000, 1)
	f.Add("PUT", fleetproto.ShardPath(k.name, 1), b)
	f.Add("GET", fleetproto.ShardPath(k.name, 1), []byte(nil))
	f.Add("GET", fleetproto.ShardPath(k.name, -1), []byte(nil))
	f.Add("HEAD", "/v1/shards/00/1", []byte(nil))
	f.Add("PUT", "/v1/shards/"+k.name.String()+"/99", []byte("LDSH"))
	f.Add("GET", "/healthz", []byte(nil))
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		s := newTestServer(t)
		req, err := http.NewRequest(method, "http://node"+path, bytes.NewReader(body))
		if err != nil || req.URL.Path == "/metrics" {
			return
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%s %q = %d, want < 500", method, path, w.Code)
		}
		s.store.mu.Lock()
		defer s.store.mu.Unlock()
		for key, el := range s.store.mem {
			h, _, err := fleetproto.ParseShard(el.Value.(*memEntry).data)
			if err != nil || h.Name != key.name || h.Index != int(key.idx) {
				t.Fatalf("%s %q stored an invalid shard under %v: %v", method, path, key, err)
			}
		}
	})
}

func BenchmarkServeShard(b *testing.B) {
	s := newTestServer(b)
	r := rand.New(rand.NewPCG(4, 4))
	k, sh := testShard(b, r, chunk.DefaultSize, 0)
	s.store.put(k, sh)
	req := httptest.NewRequest("GET", fleetproto.ShardPath(k.name, -1), nil)
	w := &discardWriter{h: http.Header{}}
	b.SetBytes(int64(len(sh)))
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		s.ServeHTTP(w, req)
		if w.code != http.StatusOK {
			b.Fatalf("GET = %d", w.code)
		}
	}
}

type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// diskServer returns a server whose memory holds at most one shard of
// 128 KiB, and the 5 shards of one 512 KiB chunk PUT into it: shards 0..3
// demoted to disk, shard 4 in memory.
func diskServer(t testing.TB) (*Server, string, chunk.Name, [][]byte) {
	t.Helper()
	dir := t.TempDir()
	s, err := NewServer(ServerConfig{MemBytes: 200 << 10, DiskDir: dir, DiskBytes: 64 << 20})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	cd, _ := newCodec(4, 5)
	data, n := randomChunk(rand.New(rand.NewPCG(31, 32)), chunk.DefaultSize)
	shards, err := cd.encode(n, data)
	if err != nil {
		t.Fatal(err)
	}
	for i, sh := range shards {
		if w := do(s, "PUT", fleetproto.ShardPath(n, i), sh); w.Code != http.StatusNoContent {
			t.Fatalf("PUT shard %d = %d %s", i, w.Code, w.Body)
		}
	}
	if st := s.store.stats(); st.MemShards != 1 || st.DiskShards != 4 {
		t.Fatalf("store after 5 PUTs: %+v, want 1 shard in memory, 4 on disk", st)
	}
	return s, dir, n, shards
}

// TestServerDiskShardsOverHTTP: shards held only on disk are served over a
// real connection (the sendfile path) byte for byte, alone and within the
// all-shards answer, with the right Content-Length.
func TestServerDiskShardsOverHTTP(t *testing.T) {
	s, _, n, shards := diskServer(t)
	hs := httptest.NewServer(s)
	defer hs.Close()
	get := func(path string) (int, string, []byte) {
		t.Helper()
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("reading GET %s: %v", path, err)
		}
		return resp.StatusCode, resp.Header.Get("Content-Length"), b
	}
	for round := 0; round < 2; round++ { // the second round promotes
		for i, sh := range shards {
			code, cl, b := get(fleetproto.ShardPath(n, i))
			if code != http.StatusOK || cl != strconv.Itoa(len(sh)) || !bytes.Equal(b, sh) {
				t.Errorf("round %d: GET shard %d = %d, length %s, %d bytes (equal %v); want 200 and the %d shard bytes", round, i, code, cl, len(b), bytes.Equal(b, sh), len(sh))
			}
		}
		code, cl, b := get(fleetproto.ShardPath(n, -1))
		if want := bytes.Join(shards, nil); code != http.StatusOK || cl != strconv.Itoa(len(want)) || !bytes.Equal(b, want) {
			t.Errorf("round %d: GET all = %d, length %s, %d bytes; want 200 and the %d bytes of all 5 shards", round, code, cl, len(b), len(want))
		}
	}
	if got := counterValue(s.m.hits.WithLabelValues("disk")); got == 0 {
		t.Errorf("disk hits = 0, want > 0")
	}
}

// TestServerNeverServesBadShardFile: a shard file that is truncated or has
// a bad header is left out of the all-shards answer and is a 404 alone.
func TestServerNeverServesBadShardFile(t *testing.T) {
	for _, bad := range []string{"truncated", "bad header"} {
		t.Run(bad, func(t *testing.T) {
			s, dir, n, shards := diskServer(t)
			p := filepath.Join(dir, shardKey{n, 1}.fileName())
			b := bytes.Clone(shards[1])
			if bad == "truncated" {
				b = b[:len(b)/2]
			} else {
				b[4] = 9 // version
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			w := do(s, "GET", fleetproto.ShardPath(n, -1), nil)
			want := bytes.Join([][]byte{shards[0], shards[2], shards[3], shards[4]}, nil)
			if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), want) || w.Header().Get("Content-Length") != strconv.Itoa(len(want)) {
				t.Errorf("GET all with shard 1 %s = %d, %d bytes; want 200 with the other 4 shards (%d bytes)", bad, w.Code, w.Body.Len(), len(want))
			}
			if w := do(s, "GET", fleetproto.ShardPath(n, 1), nil); w.Code != http.StatusNotFound {
				t.Errorf("GET shard 1 (%s file) = %d, want 404", bad, w.Code)
			}
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("bad shard file still there: %v", err)
			}
		})
	}
}

// TestServerSendsFilesThroughReadFrom: a disk shard reaches the response
// writer's ReadFrom as an io.LimitedReader of the *os.File, the form
// net/http's TCP connection hands to sendfile(2).
func TestServerSendsFilesThroughReadFrom(t *testing.T) {
	s, _, n, shards := diskServer(t)
	for _, path := range []string{fleetproto.ShardPath(n, 0), fleetproto.ShardPath(n, -1)} {
		w := &readFromRecorder{ResponseRecorder: httptest.NewRecorder()}
		s.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s = %d", path, w.Code)
		}
		if w.files == 0 {
			t.Errorf("GET %s: ReadFrom saw no file (sources %v), want every disk shard as a limited *os.File", path, w.others)
		}
		if len(w.others) > 0 {
			t.Errorf("GET %s: ReadFrom saw %v, want only limited *os.File readers", path, w.others)
		}
	}
	if w := do(s, "GET", fleetproto.ShardPath(n, -1), nil); !bytes.Equal(w.Body.Bytes(), bytes.Join(shards, nil)) {
		t.Errorf("GET all after the sendfile check: wrong bytes")
	}
}

type readFromRecorder struct {
	*httptest.ResponseRecorder
	files  int
	others []string
}

func (w *readFromRecorder) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok {
		if _, ok := lr.R.(*os.File); ok {
			w.files++
			return io.Copy(w.ResponseRecorder, r)
		}
	}
	w.others = append(w.others, fmt.Sprintf("%T", r))
	return io.Copy(w.ResponseRecorder, r)
}

// BenchmarkServeShardDisk: GET of a 128 KiB shard held only on disk, over a
// real loopback connection (sendfile), promotion disabled by a clock that
// puts every hit outside the window.
func BenchmarkServeShardDisk(b *testing.B) {
	s, _, n, shards := diskServer(b)
	var ticks time.Duration
	s.store.now = func() time.Time { ticks += 2 * diskPromoteWindow; return time.Unix(0, 0).Add(ticks) }
	hs := httptest.NewServer(s)
	defer hs.Close()
	url := hs.URL + fleetproto.ShardPath(n, 0)
	buf := make([]byte, len(shards[0]))
	b.SetBytes(int64(len(shards[0])))
	b.ReportAllocs()
	for b.Loop() {
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.ReadFull(resp.Body, buf)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET = %d, %v", resp.StatusCode, err)
		}
	}
	if s.store.inMemory(shardKey{n, 0}) {
		b.Fatalf("the shard was promoted")
	}
}
