package manifest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFileKeyringCreateLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring.json")
	k, err := CreateFileKeyring(path)
	if err != nil {
		t.Fatalf("CreateFileKeyring() = %v", err)
	}
	if got := k.Tenants(); len(got) != 0 {
		t.Errorf("new keyring Tenants() = %v, want none", got)
	}
	if s := k.StoreSecret(); len(s) != StoreSecretSize || bytes.Equal(s, make([]byte, StoreSecretSize)) {
		t.Errorf("StoreSecret() = %x, want %d random bytes", s, StoreSecretSize)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("created keyring mode = %04o, want 0600", fi.Mode().Perm())
	}

	for _, tn := range []string{"globex", "acme", "initech"} {
		if err := k.AddTenant(tn); err != nil {
			t.Fatalf("AddTenant(%q) = %v", tn, err)
		}
	}
	if err := k.Save(); err != nil {
		t.Fatalf("Save() = %v", err)
	}
	l, err := LoadFileKeyring(path)
	if err != nil {
		t.Fatalf("LoadFileKeyring() = %v", err)
	}
	if got, want := l.Tenants(), []string{"acme", "globex", "initech"}; !cmp.Equal(got, want) {
		t.Errorf("Tenants() after load = %v, want %v", got, want)
	}
	if !bytes.Equal(l.StoreSecret(), k.StoreSecret()) {
		t.Errorf("StoreSecret() after load = %x, want %x", l.StoreSecret(), k.StoreSecret())
	}
	if !l.HasTenant("acme") || l.HasTenant("umbrella") {
		t.Errorf("HasTenant(acme, umbrella) = %v, %v; want true, false", l.HasTenant("acme"), l.HasTenant("umbrella"))
	}
	// A key wrapped before saving unwraps after loading.
	ctx := context.Background()
	dk := bytes.Repeat([]byte{7}, 32)
	w, err := k.Wrap(ctx, "acme", dk)
	if err != nil {
		t.Fatal(err)
	}
	got, err := l.Unwrap(ctx, "acme", w)
	if err != nil || !bytes.Equal(got, dk) {
		t.Errorf("Unwrap(after load) = %x, %v; want %x", got, err, dk)
	}
	// StoreSecret returns a copy.
	l.StoreSecret()[0] ^= 0xff
	if !bytes.Equal(l.StoreSecret(), k.StoreSecret()) {
		t.Errorf("modifying StoreSecret()'s result changed the keyring")
	}
	// Nothing but the keyring is left in the directory.
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "keyring.json" {
		t.Errorf("directory holds %v, want only keyring.json", entries)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("saved keyring mode = %v, %v; want 0600", fi.Mode(), err)
	}
}

func TestFileKeyringErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring.json")

	_, err := LoadFileKeyring(path)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "lode keys create") {
		t.Errorf("LoadFileKeyring(missing) = %v; want fs.ErrNotExist naming the path and `lode keys create`", err)
	}

	k, err := CreateFileKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if _, err := CreateFileKeyring(path); !errors.Is(err, ErrExists) || !errors.Is(err, fs.ErrExist) {
		t.Errorf("CreateFileKeyring(existing) = %v; want ErrExists and fs.ErrExist", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("CreateFileKeyring(existing) changed the file")
	}

	if err := k.AddTenant("acme"); err != nil {
		t.Fatal(err)
	}
	if err := k.AddTenant("acme"); !errors.Is(err, ErrExists) {
		t.Errorf("AddTenant(twice) = %v; want ErrExists", err)
	}
	for _, bad := range []string{"", "a/b", "..", "x y", strings.Repeat("t", 129)} {
		if err := k.AddTenant(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("AddTenant(%q) = %v; want ErrInvalid", bad, err)
		}
	}

	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadFileKeyring(path); !errors.Is(err, ErrInsecureKeyring) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("LoadFileKeyring(mode %04o) = %v; want ErrInsecureKeyring", mode, err)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFileKeyring(path); err != nil {
		t.Errorf("LoadFileKeyring(mode 0400) = %v; want success", err)
	}

	bad := []struct{ name, content, want string }{
		{"not json", "{", "unexpected end"},
		{"unknown version", `{"version":2,"store_secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","tenants":{}}`, "version 2"},
		{"short store secret", `{"version":1,"store_secret":"AAAA","tenants":{}}`, "store secret is 3 bytes"},
		{"short tenant key", `{"version":1,"store_secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","tenants":{"acme":"AAAA"}}`, `tenant "acme" is 3 bytes`},
		{"bad tenant name", `{"version":1,"store_secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","tenants":{"a/b":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}`, "not allowed"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadFileKeyring(p); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("LoadFileKeyring(%s) = %v; want an error naming the file and containing %q", tc.name, err, tc.want)
			}
		})
	}
}

func TestFileKeyringWrap(t *testing.T) {
	ctx := context.Background()
	k := testKeyring(t, "wrap", "acme", "globex")
	dk := bytes.Repeat([]byte{0x5a}, 32)
	w, err := k.Wrap(ctx, "acme", dk)
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != nonceSize+len(dk)+tagSize {
		t.Errorf("len(Wrap()) = %d, want %d", len(w), nonceSize+len(dk)+tagSize)
	}
	if w2, _ := k.Wrap(ctx, "acme", dk); bytes.Equal(w, w2) {
		t.Errorf("two Wraps of one key are equal; the nonce must be fresh")
	}
	got, err := k.Unwrap(ctx, "acme", w)
	if err != nil || !bytes.Equal(got, dk) {
		t.Errorf("Unwrap(Wrap(k)) = %x, %v; want %x", got, err, dk)
	}

	// The tenant name is bound even when two tenants share a KEK.
	k.tenants["globex"] = k.tenants["acme"]
	if got, err := k.Unwrap(ctx, "globex", w); !errors.Is(err, ErrWrongKey) || got != nil {
		t.Errorf("Unwrap(acme's key as globex, same KEK) = %x, %v; want ErrWrongKey", got, err)
	}

	tests := []struct {
		name    string
		tenant  string
		wrapped []byte
		want    error
	}{
		{"unknown tenant", "umbrella", w, ErrNoKey},
		{"empty", "acme", nil, ErrWrongKey},
		{"too short", "acme", w[:nonceSize+tagSize], ErrWrongKey},
		{"truncated", "acme", w[:len(w)-1], ErrWrongKey},
		{"flipped", "acme", append(bytes.Clone(w[:20]), append([]byte{w[20] ^ 1}, w[21:]...)...), ErrWrongKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := k.Unwrap(ctx, tc.tenant, tc.wrapped); !errors.Is(err, tc.want) || got != nil {
				t.Errorf("Unwrap() = %x, %v; want %v", got, err, tc.want)
			}
		})
	}
	if _, err := k.Wrap(ctx, "umbrella", dk); !errors.Is(err, ErrNoKey) {
		t.Errorf("Wrap(unknown tenant) = %v; want ErrNoKey", err)
	}
	if _, err := k.Wrap(ctx, "acme", nil); err == nil {
		t.Errorf("Wrap(empty key) = nil error; want an error")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := k.Wrap(cancelled, "acme", dk); !errors.Is(err, context.Canceled) {
		t.Errorf("Wrap(cancelled) = %v; want context.Canceled", err)
	}
}

// TestFileKeyringConcurrent runs wraps, unwraps, additions and saves at
// once; run it with -race.
func TestFileKeyringConcurrent(t *testing.T) {
	ctx := context.Background()
	k, err := CreateFileKeyring(filepath.Join(t.TempDir(), "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := k.AddTenant("acme"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := k.AddTenant(fmt.Sprintf("t%d", g)); err != nil {
				errs <- err
			}
			for range 20 {
				dk := []byte(fmt.Sprintf("data key of goroutine %d........", g))
				w, err := k.Wrap(ctx, "acme", dk)
				if err != nil {
					errs <- err
					return
				}
				got, err := k.Unwrap(ctx, "acme", w)
				if err != nil || !bytes.Equal(got, dk) {
					errs <- fmt.Errorf("Unwrap() = %q, %v; want %q", got, err, dk)
					return
				}
			}
			if err := k.Save(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	l, err := LoadFileKeyring(k.Path())
	if err != nil {
		t.Fatal(err)
	}
	if got := len(l.Tenants()); got != 9 {
		t.Errorf("tenants after concurrent adds and saves = %d, want 9", got)
	}
}
