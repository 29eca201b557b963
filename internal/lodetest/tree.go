package lodetest

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TreeEntry describes one path of a tree, as Snapshot records it.
type TreeEntry struct {
	Mode          fs.FileMode
	UID, GID      uint32
	Size          int64
	SHA256        string
	Target        string
	Xattrs        map[string]string
	MtimeSec      int64
	LinkGroupSize int // number of paths sharing this inode (regular files)
	FirstLink     string
}

// Snapshot walks root without following symlinks and describes every path
// under it (lost+found excepted): mode, owner, size and SHA-256 of regular
// files, symlink targets, user.* xattrs, mtimes of files, and which paths
// share an inode. Directory and symlink mtimes are not recorded: unpacking
// into a directory changes its mtime.
func Snapshot(t testing.TB, root string) map[string]TreeEntry {
	t.Helper()
	out := map[string]TreeEntry{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "lost+found" {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := fi.Sys().(*syscall.Stat_t)
		e := TreeEntry{Mode: fi.Mode(), UID: sys.Uid, GID: sys.Gid, MtimeSec: fi.ModTime().Unix()}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("reading %s: %w", rel, err)
			}
			e.Size = int64(len(b))
			e.SHA256 = fmt.Sprintf("%x", sha256.Sum256(b))
			inodes[sys.Ino] = append(inodes[sys.Ino], rel)
		case fi.Mode()&fs.ModeSymlink != 0:
			e.Target, err = os.Readlink(p)
			if err != nil {
				return err
			}
			e.MtimeSec = 0 // symlink times are not compared
		}
		if fi.IsDir() {
			e.MtimeSec = 0 // a directory's mtime changes when files are unpacked into it
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			e.Xattrs = userXattrs(t, p)
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	for _, paths := range inodes {
		sort.Strings(paths)
		for _, p := range paths {
			e := out[p]
			e.LinkGroupSize, e.FirstLink = len(paths), paths[0]
			out[p] = e
		}
	}
	return out
}

func userXattrs(t testing.TB, p string) map[string]string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var m map[string]string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		v := make([]byte, 4096)
		vn, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, name, err)
		}
		if m == nil {
			m = map[string]string{}
		}
		m[name] = string(v[:vn])
	}
	return m
}
