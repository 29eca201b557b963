package file

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/storetest"
)

func newStore(t testing.TB) *Store {
	s, err := New(filepath.Join(t.TempDir(), "not", "yet", "created"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return newStore(t) })
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) store.Store { return newStore(b) })
}

// files lists every file and directory below the store's root.
func files(t *testing.T, s *Store) []string {
	t.Helper()
	var got []string
	err := filepath.WalkDir(s.Dir(), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.Dir(), p)
		if d.IsDir() {
			rel += "/"
		}
		got = append(got, rel)
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	sort.Strings(got)
	return got
}

func TestLayoutOnDisk(t *testing.T) {
	s := newStore(t)
	if _, err := s.Get(t.Context(), "a/b", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get before the root exists = %v, want ErrNotFound", err)
	}
	if err := s.Put(t.Context(), "roots/r/chunks/c", []byte("data")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(s.Dir(), "roots", "r", "chunks", "c"))
	if err != nil || string(b) != "data" {
		t.Errorf("file for roots/r/chunks/c = %q, %v, want \"data\"", b, err)
	}
	want := []string{"./", "roots/", "roots/r/", "roots/r/chunks/", "roots/r/chunks/c"}
	if diff := cmp.Diff(want, files(t, s)); diff != "" {
		t.Errorf("files mismatch (-want +got):\n%s", diff)
	}
	if err := s.Delete(t.Context(), "roots/r/chunks/c"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"./"}, files(t, s)); diff != "" {
		t.Errorf("files after Delete mismatch (-want +got); empty directories should be pruned:\n%s", diff)
	}
}

func TestFailedPutLeavesNoObject(t *testing.T) {
	for _, ifAbsent := range []bool{false, true} {
		s := newStore(t)
		key := "roots/r/chunks/c"
		if !ifAbsent {
			if err := s.Put(t.Context(), key, []byte("old")); err != nil {
				t.Fatal(err)
			}
		}
		s.write = func(f *os.File, data []byte) error {
			f.Write(data[:len(data)/2])
			return syscall.ENOSPC
		}
		put := s.Put
		if ifAbsent {
			put = s.PutIfAbsent
		}
		err := put(t.Context(), key, []byte("new contents"))
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), key) {
			t.Errorf("put (ifAbsent=%v) with a full disk = %v, want ENOSPC naming %s", ifAbsent, err, key)
		}
		got, err := s.Get(t.Context(), key, nil)
		switch {
		case ifAbsent && !errors.Is(err, store.ErrNotFound):
			t.Errorf("Get after failed PutIfAbsent = %q, %v, want ErrNotFound", got, err)
		case !ifAbsent && (err != nil || string(got) != "old"):
			t.Errorf("Get after failed Put = %q, %v, want the old object", got, err)
		}
		for _, f := range files(t, s) {
			if strings.Contains(f, tmpPrefix) {
				t.Errorf("temporary file %s left behind", f)
			}
		}
	}
}

func TestTempFilesNeverListed(t *testing.T) {
	s := newStore(t)
	if err := s.Put(t.Context(), "a/b", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// A crash mid-put leaves a temporary file, maybe in a directory of its own.
	for _, p := range []string{"a/" + tmpPrefix + "123", "c/" + tmpPrefix + "456"} {
		full := filepath.Join(s.Dir(), p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	s.List(t.Context(), "", func(k string, _ int64) error { keys = append(keys, k); return nil })
	if diff := cmp.Diff([]string{"a/b"}, keys); diff != "" {
		t.Errorf("List mismatch (-want +got):\n%s", diff)
	}
	var dirs []string
	s.ListDirs(t.Context(), "", func(d string) error { dirs = append(dirs, d); return nil })
	if diff := cmp.Diff([]string{"a"}, dirs); diff != "" {
		t.Errorf("ListDirs mismatch (-want +got):\n%s", diff)
	}
	for _, key := range []string{tmpPrefix + "1", "a/" + tmpPrefix + "123"} {
		if _, err := s.Get(t.Context(), key, nil); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("Get(%s) = %v, want ErrInvalidKey (reserved name)", key, err)
		}
	}
}

func TestKeyTakenByDirectory(t *testing.T) {
	s := newStore(t)
	if err := s.Put(t.Context(), "a/b", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, put := range []func() error{
		func() error { return s.Put(t.Context(), "a", []byte("y")) },
		func() error { return s.PutIfAbsent(t.Context(), "a", []byte("y")) },
		func() error { return s.Put(t.Context(), "a/b/c", []byte("y")) },
	} {
		if err := put(); err == nil {
			t.Errorf("put over a directory or below a file succeeded, want an error")
		}
	}
	got, err := s.Get(t.Context(), "a/b", nil)
	if err != nil || string(got) != "x" {
		t.Errorf("Get(a/b) = %q, %v, want \"x\"", got, err)
	}
}
