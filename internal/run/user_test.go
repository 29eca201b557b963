package run

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const testPasswd = `root:x:0:0:root:/root:/bin/sh
# a comment

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
broken line without fields
bad:x:notanumber:1::/:
nohome:x:1001:1001
`

const testGroup = `root:x:0:
daemon:x:1:
app:x:1000:
wheel:x:10:root,app
audio:x:29:app
staff:x:50:
dup:x:1000:app
`

// writeUserDB makes a root with /etc/passwd and /etc/group.
func writeUserDB(t *testing.T, passwd, group string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if passwd != "" {
		writeFile(t, filepath.Join(root, "etc/passwd"), passwd)
	}
	if group != "" {
		writeFile(t, filepath.Join(root, "etc/group"), group)
	}
	return root
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestResolveUser(t *testing.T) {
	root := writeUserDB(t, testPasswd, testGroup)
	tests := []struct {
		name, user string
		want       User
		wantErr    error
	}{
		{name: "empty is root", user: "", want: User{UID: 0, GID: 0, AdditionalGIDs: []uint32{10}, Home: "/root"}},
		{name: "root by name", user: "root", want: User{UID: 0, GID: 0, AdditionalGIDs: []uint32{10}, Home: "/root"}},
		{name: "name", user: "app", want: User{UID: 1000, GID: 1000, AdditionalGIDs: []uint32{10, 29}, Home: "/home/app"}},
		{name: "uid listed", user: "1000", want: User{UID: 1000, GID: 1000, AdditionalGIDs: []uint32{10, 29}, Home: "/home/app"}},
		{name: "uid unlisted", user: "4242", want: User{UID: 4242, GID: 0, Home: "/"}},
		{name: "uid:gid", user: "4242:77", want: User{UID: 4242, GID: 77, Home: "/"}},
		{name: "name:group", user: "app:staff", want: User{UID: 1000, GID: 50, Home: "/home/app"}},
		{name: "name:gid", user: "app:5", want: User{UID: 1000, GID: 5, Home: "/home/app"}},
		{name: "uid:group", user: "0:audio", want: User{UID: 0, GID: 29, Home: "/root"}},
		{name: "no home field", user: "nohome", want: User{UID: 1001, GID: 1001, Home: "/"}},
		{name: "missing user", user: "nobody", wantErr: ErrUserNotFound},
		{name: "missing group", user: "app:nogroup", wantErr: ErrGroupNotFound},
		{name: "malformed line is not a user", user: "bad", wantErr: ErrUserNotFound},
		{name: "empty group", user: "app:", wantErr: errAny},
		{name: "empty user", user: ":50", wantErr: errAny},
		{name: "reserved uid", user: "4294967295", wantErr: ErrUserNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveUser(root, tc.user)
			if tc.wantErr != nil {
				if err == nil || (tc.wantErr != errAny && !errors.Is(err, tc.wantErr)) {
					t.Fatalf("ResolveUser(%q) = %+v, %v; want error %v", tc.user, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ResolveUser(%q): %v", tc.user, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ResolveUser(%q) mismatch (-want +got):\n%s", tc.user, diff)
			}
		})
	}
}

// errAny marks a case that must fail, with any error.
var errAny = errors.New("any error")

func TestResolveUserNoDatabase(t *testing.T) {
	root := t.TempDir() // no /etc at all: numeric users still work
	got, err := ResolveUser(root, "1000:1000")
	if err != nil {
		t.Fatalf("ResolveUser without /etc: %v", err)
	}
	if diff := cmp.Diff(User{UID: 1000, GID: 1000, Home: "/"}, got); diff != "" {
		t.Errorf("ResolveUser mismatch (-want +got):\n%s", diff)
	}
	if _, err := ResolveUser(root, "app"); !errors.Is(err, ErrUserNotFound) {
		t.Errorf("ResolveUser(app) without /etc/passwd = %v, want ErrUserNotFound", err)
	}
}

// TestResolveUserSymlinks: the image's /etc/passwd may be a symlink; it is
// resolved with the image root as "/", never reaching the host's files.
func TestResolveUserSymlinks(t *testing.T) {
	// outside is a host directory next to the image root with a passwd that
	// must never be read.
	base := t.TempDir()
	writeFile(t, filepath.Join(base, "etc/passwd"), "host:x:7777:7777::/host:/bin/sh\n")
	writeFile(t, filepath.Join(base, "passwd"), "host:x:7777:7777::/host:/bin/sh\n")
	tests := []struct {
		name   string
		target string // what image/etc/passwd points to
		inside string // where the image's own passwd lives, "" for none
		want   error  // for user "app"; nil means found as uid 1000
	}{
		{name: "absolute target resolves in root", target: "/lib/passwd", inside: "lib/passwd"},
		{name: "dotdot escape clamps at root", target: "../../../../passwd", inside: "passwd"},
		{name: "absolute host path stays in root", target: filepath.Join(base, "etc/passwd"), want: ErrUserNotFound},
		{name: "dotdot to host file is not read", target: "../../passwd", want: ErrUserNotFound},
		{name: "loop", target: "passwd", want: ErrUnsafePath},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(base, "img-"+strings.ReplaceAll(tc.name, " ", "-"))
			writeFile(t, filepath.Join(root, "etc/group"), testGroup)
			if tc.inside != "" {
				writeFile(t, filepath.Join(root, tc.inside), testPasswd)
			}
			if err := os.Symlink(tc.target, filepath.Join(root, "etc/passwd")); err != nil {
				t.Fatal(err)
			}
			got, err := ResolveUser(root, "app")
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("ResolveUser(app) = %+v, %v; want %v", got, err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("ResolveUser(app): %v", err)
			}
			if got.UID != 1000 || got.Home != "/home/app" {
				t.Errorf("ResolveUser(app) = %+v, want uid 1000 home /home/app from the image", got)
			}
		})
	}
}

func TestResolveInRoot(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "a/b/file"), "x")
	for _, l := range []struct{ name, target string }{
		{"a/abs", "/a/b"},
		{"a/rel", "b/file"},
		{"a/up", "../../../../a"},
		{"a/chain", "abs/file"},
	} {
		if err := os.Symlink(l.target, filepath.Join(root, l.name)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct{ in, want string }{
		{"/a/b/file", "a/b/file"},
		{"a/abs/file", "a/b/file"},
		{"/a/rel", "a/b/file"},
		{"/a/up/b", "a/b"},
		{"/a/chain", "a/b/file"},
		{"/../../a/b/../b/file", "a/b/file"},
		{"/a/missing/x", "a/missing/x"},
		{"/", ""},
	}
	for _, tc := range tests {
		got, err := resolveInRoot(root, tc.in)
		if err != nil {
			t.Errorf("resolveInRoot(%q): %v", tc.in, err)
			continue
		}
		if want := filepath.Join(root, tc.want); got != want {
			t.Errorf("resolveInRoot(%q) = %q, want %q", tc.in, got, want)
		}
	}
}

func TestReadUserDBRefusesNonRegular(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/passwd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolveUser(root, "app"); !errors.Is(err, ErrUnsafePath) {
		t.Errorf("ResolveUser with /etc/passwd a directory = %v, want ErrUnsafePath", err)
	}
}

func TestParsePasswd(t *testing.T) {
	got, err := parsePasswd(strings.NewReader(testPasswd))
	if err != nil {
		t.Fatal(err)
	}
	want := []passwdEntry{
		{name: "root", uid: 0, gid: 0, home: "/root"},
		{name: "daemon", uid: 1, gid: 1, home: "/usr/sbin"},
		{name: "app", uid: 1000, gid: 1000, home: "/home/app"},
		{name: "nohome", uid: 1001, gid: 1001},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(passwdEntry{})); diff != "" {
		t.Errorf("parsePasswd mismatch (-want +got):\n%s", diff)
	}
}

func TestParseGroup(t *testing.T) {
	got, err := parseGroup(strings.NewReader(testGroup))
	if err != nil {
		t.Fatal(err)
	}
	want := []groupEntry{
		{name: "root", gid: 0}, {name: "daemon", gid: 1}, {name: "app", gid: 1000},
		{name: "wheel", gid: 10, members: []string{"root", "app"}},
		{name: "audio", gid: 29, members: []string{"app"}},
		{name: "staff", gid: 50},
		{name: "dup", gid: 1000, members: []string{"app"}},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(groupEntry{})); diff != "" {
		t.Errorf("parseGroup mismatch (-want +got):\n%s", diff)
	}
}

// FuzzUserDB: the image's /etc/passwd and /etc/group are untrusted input.
func FuzzUserDB(f *testing.F) {
	f.Add([]byte(testPasswd), []byte(testGroup), "app")
	f.Add([]byte("a:b:c\n::::\n:x:1:1\n"), []byte("g::1:,,,\n"), "1:g")
	f.Add([]byte(strings.Repeat("x", 5000)), []byte{}, "x:y")
	f.Fuzz(func(t *testing.T, passwd, group []byte, user string) {
		users, err := parsePasswd(bytes.NewReader(passwd))
		if err != nil {
			return // a line longer than the scanner's limit
		}
		groups, err := parseGroup(bytes.NewReader(group))
		if err != nil {
			return
		}
		for _, e := range users {
			if e.name == "" || e.uid == 1<<32-1 || e.gid == 1<<32-1 {
				t.Errorf("parsePasswd kept a bad entry %+v", e)
			}
		}
		u, err := lookupUser(users, groups, user)
		if err != nil {
			return
		}
		if u.Home == "" {
			t.Errorf("lookupUser(%q) = %+v: empty home", user, u)
		}
		if u.UID == 1<<32-1 || u.GID == 1<<32-1 {
			t.Errorf("lookupUser(%q) = %+v: reserved id", user, u)
		}
		for _, g := range u.AdditionalGIDs {
			if g == u.GID {
				t.Errorf("lookupUser(%q) = %+v: primary gid among additional", user, u)
			}
		}
	})
}
