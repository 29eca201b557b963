package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sync/errgroup"

	"github.com/lode-dev/lode/internal/store"
)

// ChunkSize is the object size the suite and the benchmarks use for
// chunk-sized objects (DESIGN.md: 512 KiB chunks).
const ChunkSize = 512 << 10

// ManyKeys is how many objects the listing test writes: more than two of
// S3's 1,000-key pages.
const ManyKeys = 2500

// Run runs the conformance suite. newStore must return an empty store, new
// for each call (a new directory, a new bucket prefix), cleaned up by t.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"GetPutReplace", testGetPutReplace},
		{"DstReuse", testDstReuse},
		{"Ranges", testRanges},
		{"Stat", testStat},
		{"NotFound", testNotFound},
		{"PutIfAbsent", testPutIfAbsent},
		{"ConcurrentPutIfAbsent", testConcurrentPutIfAbsent},
		{"ReadWhileReplace", testReadWhileReplace},
		{"ListMany", testListMany},
		{"ListPrefix", testListPrefix},
		{"ListStop", testListStop},
		{"ListDirs", testListDirs},
		{"Delete", testDelete},
		{"InvalidKeys", testInvalidKeys},
		{"Cancelled", testCancelled},
		{"CompareAndSwap", testCompareAndSwap},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

// Data returns n deterministic pseudo-random bytes derived from seed.
func Data(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func mustPut(t *testing.T, s store.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(t.Context(), key, data); err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
}

func mustGet(t *testing.T, s store.Store, key string) []byte {
	t.Helper()
	b, err := s.Get(t.Context(), key, nil)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return b
}

func wantBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s = %d bytes (%.16x…), want %d bytes (%.16x…)", what, len(got), got, len(want), want)
	}
}

func listAll(t *testing.T, s store.Store, prefix string) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	var order []string
	err := s.List(t.Context(), prefix, func(key string, size int64) error {
		got[key] = size
		order = append(order, key)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	if !slices.IsSorted(order) {
		t.Errorf("List(%q) order = %q, not lexical", prefix, order)
	}
	return got
}

func listDirs(t *testing.T, s store.Store, prefix string) []string {
	t.Helper()
	var got []string
	if err := s.ListDirs(t.Context(), prefix, func(name string) error {
		got = append(got, name)
		return nil
	}); err != nil {
		t.Fatalf("ListDirs(%q): %v", prefix, err)
	}
	return got
}

func testGetPutReplace(t *testing.T, s store.Store) {
	for _, tc := range []struct {
		name string
		key  string
		data []byte
	}{
		{"empty", "roots/r1/STATE", []byte{}},
		{"small", "roots/r1/manifests/m1", []byte("hello, lode")},
		{"chunk", "roots/r1/chunks/" + strings.Repeat("ab", 32), Data(1, ChunkSize)},
		{"chunk+1", "roots/r1/chunks/" + strings.Repeat("cd", 32), Data(2, ChunkSize+1)},
		{"top-level", "top", []byte("x")},
		{"odd chars", "images/t:1/a.b-c_d@e+f", []byte("pointer")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustPut(t, s, tc.key, tc.data)
			wantBytes(t, "Get("+tc.key+")", mustGet(t, s, tc.key), tc.data)
			repl := append([]byte("replaced:"), tc.data...)
			mustPut(t, s, tc.key, repl)
			wantBytes(t, "Get("+tc.key+") after replace", mustGet(t, s, tc.key), repl)
		})
	}
	// The store keeps its own copy: changing the caller's slice after Put
	// must not change the object.
	data := []byte("immutable")
	mustPut(t, s, "copy", data)
	data[0] = 'X'
	wantBytes(t, "Get(copy)", mustGet(t, s, "copy"), []byte("immutable"))
}

func testDstReuse(t *testing.T, s store.Store) {
	data := Data(3, 4096)
	mustPut(t, s, "k", data)
	dst := make([]byte, 10, 8192)
	got, err := s.Get(t.Context(), "k", dst)
	if err != nil {
		t.Fatalf("Get(k): %v", err)
	}
	wantBytes(t, "Get(k, dst)", got, data)
	if &got[0] != &dst[:1][0] {
		t.Errorf("Get(k, dst with room) did not reuse dst")
	}
	got, err = s.GetRange(t.Context(), "k", 100, 200, dst)
	if err != nil {
		t.Fatalf("GetRange(k): %v", err)
	}
	wantBytes(t, "GetRange(k, 100, 200, dst)", got, data[100:300])
	if &got[0] != &dst[:1][0] {
		t.Errorf("GetRange(k, dst with room) did not reuse dst")
	}
	small := make([]byte, 0, 10)
	got, err = s.Get(t.Context(), "k", small)
	if err != nil {
		t.Fatalf("Get(k): %v", err)
	}
	wantBytes(t, "Get(k, small dst)", got, data)
}

func testRanges(t *testing.T, s store.Store) {
	data := Data(4, ChunkSize+100)
	size := int64(len(data))
	mustPut(t, s, "r", data)
	mustPut(t, s, "empty", nil)
	for _, tc := range []struct {
		name   string
		key    string
		off, n int64
		want   []byte
	}{
		{"start", "r", 0, 100, data[:100]},
		{"middle", "r", 4096, 8192, data[4096 : 4096+8192]},
		{"end", "r", size - 50, 50, data[size-50:]},
		{"whole", "r", 0, size, data},
		{"past end", "r", size - 50, 100, data[size-50:]},
		{"at end", "r", size, 10, []byte{}},
		{"beyond end", "r", size + 1000, 10, []byte{}},
		{"zero length", "r", 10, 0, []byte{}},
		{"zero length at 0", "r", 0, 0, []byte{}},
		{"empty object", "empty", 0, 10, []byte{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.GetRange(t.Context(), tc.key, tc.off, tc.n, nil)
			if err != nil {
				t.Fatalf("GetRange(%s, %d, %d): %v", tc.key, tc.off, tc.n, err)
			}
			wantBytes(t, fmt.Sprintf("GetRange(%s, %d, %d)", tc.key, tc.off, tc.n), got, tc.want)
		})
	}
	// Random ranges against the reference bytes.
	r := rand.New(rand.NewPCG(5, 5))
	for range 20 {
		off := r.Int64N(size + 10)
		n := r.Int64N(ChunkSize / 4)
		got, err := s.GetRange(t.Context(), "r", off, n, nil)
		if err != nil {
			t.Fatalf("GetRange(r, %d, %d): %v", off, n, err)
		}
		want := data[min(off, size):min(off+n, size)]
		wantBytes(t, fmt.Sprintf("GetRange(r, %d, %d)", off, n), got, want)
	}
}

func testStat(t *testing.T, s store.Store) {
	for i, n := range []int{0, 1, 1000, ChunkSize} {
		key := fmt.Sprintf("stat/%d", i)
		mustPut(t, s, key, Data(uint64(i), n))
		got, err := s.Stat(t.Context(), key)
		if err != nil {
			t.Fatalf("Stat(%s): %v", key, err)
		}
		if got != int64(n) {
			t.Errorf("Stat(%s) = %d, want %d", key, got, n)
		}
	}
}

func testNotFound(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, "dir/file", []byte("x"))
	for _, key := range []string{"missing", "dir/missing", "missing/deeper/key", "dir", "dir/file/below"} {
		errs := map[string]error{}
		_, errs["Get"] = s.Get(ctx, key, nil)
		_, errs["GetRange"] = s.GetRange(ctx, key, 0, 10, nil)
		_, errs["GetRange0"] = s.GetRange(ctx, key, 0, 0, nil)
		_, errs["Stat"] = s.Stat(ctx, key)
		for op, err := range errs {
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s(%s) = %v, want ErrNotFound", op, key, err)
				continue
			}
			if !strings.Contains(err.Error(), key) {
				t.Errorf("%s(%s) = %q, does not name the key", op, key, err)
			}
		}
	}
}

func testPutIfAbsent(t *testing.T, s store.Store) {
	ctx := t.Context()
	key := "roots/r/chunks/pia"
	first, second := Data(6, 1000), Data(7, 1000)
	if err := s.PutIfAbsent(ctx, key, first); err != nil {
		t.Fatalf("PutIfAbsent(%s) on missing key: %v", key, err)
	}
	err := s.PutIfAbsent(ctx, key, second)
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("PutIfAbsent(%s) on present key = %v, want ErrExists", key, err)
	}
	if !strings.Contains(err.Error(), key) {
		t.Errorf("PutIfAbsent(%s) error %q does not name the key", key, err)
	}
	wantBytes(t, "Get after refused PutIfAbsent", mustGet(t, s, key), first)
	if err := s.Delete(ctx, key); err != nil {
		t.Fatalf("Delete(%s): %v", key, err)
	}
	if err := s.PutIfAbsent(ctx, key, second); err != nil {
		t.Fatalf("PutIfAbsent(%s) after Delete: %v", key, err)
	}
	wantBytes(t, "Get after PutIfAbsent", mustGet(t, s, key), second)
	if got := listAll(t, s, "roots/"); !cmp.Equal(got, map[string]int64{key: 1000}) {
		t.Errorf("List after PutIfAbsent = %v, want only %s (no temporary objects)", got, key)
	}
}

func testConcurrentPutIfAbsent(t *testing.T, s store.Store) {
	const writers = 16
	data := Data(8, ChunkSize)
	for round := range 3 {
		key := fmt.Sprintf("roots/r/chunks/same%d", round)
		errs := make([]error, writers)
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() { errs[i] = s.PutIfAbsent(t.Context(), key, data) })
		}
		wg.Wait()
		ok := 0
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, store.ErrExists):
			default:
				t.Errorf("writer %d: PutIfAbsent(%s) = %v, want nil or ErrExists", i, key, err)
			}
		}
		if ok == 0 {
			t.Errorf("round %d: no writer of %s succeeded", round, key)
		}
		wantBytes(t, "Get("+key+")", mustGet(t, s, key), data)
	}
	if got := listAll(t, s, ""); len(got) != 3 {
		t.Errorf("List after concurrent PutIfAbsent = %v, want 3 keys", got)
	}
}

func testReadWhileReplace(t *testing.T, s store.Store) {
	key := "images/t/img"
	versions := [][]byte{Data(9, ChunkSize), Data(10, ChunkSize), Data(11, 1000), Data(12, ChunkSize+7)}
	mustPut(t, s, key, versions[0])
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer cancel()
		for i := range 40 {
			if err := s.Put(gctx, key, versions[i%len(versions)]); err != nil {
				return fmt.Errorf("writer: Put(%s): %w", key, err)
			}
		}
		return nil
	})
	var reads [4]int
	for r := range reads {
		g.Go(func() error {
			buf := make([]byte, 0, ChunkSize+100)
			for gctx.Err() == nil || reads[r] == 0 {
				b, err := s.Get(context.WithoutCancel(gctx), key, buf)
				if err != nil {
					return fmt.Errorf("reader %d: Get(%s): %w", r, key, err)
				}
				if !slices.ContainsFunc(versions, func(v []byte) bool { return bytes.Equal(v, b) }) {
					return fmt.Errorf("reader %d: Get(%s) = %d bytes, a torn object (no version matches)", r, key, len(b))
				}
				reads[r]++
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for r, n := range reads {
		if n == 0 {
			t.Errorf("reader %d read nothing", r)
		}
	}
}

func testListMany(t *testing.T, s store.Store) {
	want := map[string]int64{}
	var keys []string
	for i := range ManyKeys {
		k := fmt.Sprintf("roots/r/chunks/%064x", uint64(i)*0x9e3779b97f4a7c15)
		keys = append(keys, k)
		want[k] = int64(i % 7)
	}
	g, ctx := errgroup.WithContext(t.Context())
	g.SetLimit(16)
	for i, k := range keys {
		g.Go(func() error { return s.Put(ctx, k, make([]byte, i%7)) })
	}
	mustPut(t, s, "roots/r/STATE", []byte("active"))
	if err := g.Wait(); err != nil {
		t.Fatalf("putting %d keys: %v", len(keys), err)
	}
	got := listAll(t, s, "roots/r/chunks/")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List(roots/r/chunks/) mismatch (-want +got):\n%s", diff)
	}
	if n := len(listAll(t, s, "")); n != ManyKeys+1 {
		t.Errorf("List(\"\") = %d keys, want %d", n, ManyKeys+1)
	}
}

func testListPrefix(t *testing.T, s store.Store) {
	keys := []string{"a/b", "a/c/d", "a.b", "a-z/q", "ab/c", "b", "x/y/z", "x/y-1", "x/y0"}
	for i, k := range keys {
		mustPut(t, s, k, make([]byte, i))
	}
	sorted := slices.Sorted(slices.Values(keys))
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", sorted},
		{"a", []string{"a-z/q", "a.b", "a/b", "a/c/d", "ab/c"}},
		{"a/", []string{"a/b", "a/c/d"}},
		{"a/c", []string{"a/c/d"}},
		{"x/y", []string{"x/y-1", "x/y/z", "x/y0"}},
		{"x/y/", []string{"x/y/z"}},
		{"nothing", nil},
		{"nothing/", nil},
		{"b", []string{"b"}},
	} {
		var got []string
		err := s.List(t.Context(), tc.prefix, func(key string, size int64) error {
			got = append(got, key)
			if want := int64(slices.Index(keys, key)); size != want {
				t.Errorf("List(%q): %s has size %d, want %d", tc.prefix, key, size, want)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("List(%q): %v", tc.prefix, err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("List(%q) mismatch (-want +got):\n%s", tc.prefix, diff)
		}
	}
}

func testListStop(t *testing.T, s store.Store) {
	for i := range 20 {
		mustPut(t, s, fmt.Sprintf("k/%02d", i), []byte{byte(i)})
	}
	stop := errors.New("stop here")
	var seen []string
	err := s.List(t.Context(), "k/", func(key string, size int64) error {
		seen = append(seen, key)
		if len(seen) == 5 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Errorf("List with fn failing = %v, want %v", err, stop)
	}
	if diff := cmp.Diff([]string{"k/00", "k/01", "k/02", "k/03", "k/04"}, seen); diff != "" {
		t.Errorf("List stopped after (-want +got):\n%s", diff)
	}

	// Cancelling the context from fn stops the listing too.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	n := 0
	err = s.List(ctx, "k/", func(key string, size int64) error {
		n++
		if n == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || n == 20 {
		t.Errorf("List with ctx cancelled by fn = %v after %d keys, want context.Canceled before the end", err, n)
	}
}

func testListDirs(t *testing.T, s store.Store) {
	for _, k := range []string{
		"roots/r1/STATE", "roots/r1/chunks/c1", "roots/r2/STATE", "roots/r1-old/STATE",
		"roots/r10/manifests/m", "images/t1/img", "images/t2/a/b", "top",
	} {
		mustPut(t, s, k, []byte("x"))
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		// Order is that of the keys below each directory (name + "/"),
		// as S3 orders common prefixes: "r1-old/" < "r1/" < "r10/".
		{"", []string{"images", "roots"}},
		{"roots/", []string{"r1-old", "r1", "r10", "r2"}},
		{"roots/r1/", []string{"chunks"}},
		{"images/", []string{"t1", "t2"}},
		{"images/t2/", []string{"a"}},
		{"images/t1/", nil},
		{"missing/", nil},
	} {
		if diff := cmp.Diff(tc.want, listDirs(t, s, tc.prefix)); diff != "" {
			t.Errorf("ListDirs(%q) mismatch (-want +got):\n%s", tc.prefix, diff)
		}
	}
	err := s.ListDirs(t.Context(), "roots", func(string) error { return nil })
	if !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("ListDirs(\"roots\") = %v, want ErrInvalidKey (prefix must end in /)", err)
	}
	stop := errors.New("stop")
	n := 0
	err = s.ListDirs(t.Context(), "roots/", func(string) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("ListDirs with fn failing = %v after %d calls, want %v after 1", err, n, stop)
	}
}

func testDelete(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, "d/e/f", []byte("1"))
	mustPut(t, s, "d/g", []byte("2"))
	if err := s.Delete(ctx, "d/e/f"); err != nil {
		t.Fatalf("Delete(d/e/f): %v", err)
	}
	if _, err := s.Get(ctx, "d/e/f", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(d/e/f) after Delete = %v, want ErrNotFound", err)
	}
	if diff := cmp.Diff(map[string]int64{"d/g": 1}, listAll(t, s, "")); diff != "" {
		t.Errorf("List after Delete mismatch (-want +got):\n%s", diff)
	}
	if got := listDirs(t, s, "d/"); len(got) != 0 {
		t.Errorf("ListDirs(d/) after deleting d/e/f = %q, want none", got)
	}
	for _, key := range []string{"d/e/f", "never", "d/g/below", "d"} {
		if err := s.Delete(ctx, key); err != nil {
			t.Errorf("Delete(%s) of a missing key = %v, want nil", key, err)
		}
	}
	wantBytes(t, "Get(d/g) after unrelated deletes", mustGet(t, s, "d/g"), []byte("2"))
	// A deleted key can be written again.
	mustPut(t, s, "d/e/f", []byte("3"))
	wantBytes(t, "Get(d/e/f) after re-Put", mustGet(t, s, "d/e/f"), []byte("3"))
}

// InvalidKeys are keys every backend must refuse.
var InvalidKeys = []string{"", "/abs", "trailing/", "a//b", "..", "../up", "a/../../up", ".", "a/./b", strings.Repeat("k", 1025)}

func testInvalidKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, key := range InvalidKeys {
		errs := map[string]error{}
		_, errs["Get"] = s.Get(ctx, key, nil)
		_, errs["GetRange"] = s.GetRange(ctx, key, 0, 1, nil)
		errs["Put"] = s.Put(ctx, key, []byte("x"))
		errs["PutIfAbsent"] = s.PutIfAbsent(ctx, key, []byte("x"))
		_, errs["Stat"] = s.Stat(ctx, key)
		errs["Delete"] = s.Delete(ctx, key)
		for op, err := range errs {
			if !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("%s(%.40q) = %v, want ErrInvalidKey", op, key, err)
			}
		}
	}
	for _, prefix := range []string{"/abs", "../", "a//", "a/../"} {
		err := s.List(ctx, prefix, func(string, int64) error { return nil })
		if !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("List(%q) = %v, want ErrInvalidKey", prefix, err)
		}
		err = s.ListDirs(ctx, prefix, func(string) error { return nil })
		if !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("ListDirs(%q) = %v, want ErrInvalidKey", prefix, err)
		}
	}
	if got := listAll(t, s, ""); len(got) != 0 {
		t.Errorf("List after refused writes = %v, want nothing", got)
	}
}

func testCancelled(t *testing.T, s store.Store) {
	mustPut(t, s, "present", []byte("x"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	errs := map[string]error{}
	_, errs["Get"] = s.Get(ctx, "present", nil)
	_, errs["GetRange"] = s.GetRange(ctx, "present", 0, 1, nil)
	errs["Put"] = s.Put(ctx, "new", []byte("x"))
	errs["PutIfAbsent"] = s.PutIfAbsent(ctx, "new2", []byte("x"))
	_, errs["Stat"] = s.Stat(ctx, "present")
	errs["List"] = s.List(ctx, "", func(string, int64) error { return nil })
	errs["ListDirs"] = s.ListDirs(ctx, "", func(string) error { return nil })
	errs["Delete"] = s.Delete(ctx, "present")
	for op, err := range errs {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v, want context.Canceled", op, err)
		}
	}
	if diff := cmp.Diff(map[string]int64{"present": 1}, listAll(t, s, "")); diff != "" {
		t.Errorf("List after cancelled calls mismatch (-want +got):\n%s", diff)
	}
}
