package run

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// User is a process identity resolved against an image's user database.
type User struct {
	UID, GID       uint32
	AdditionalGIDs []uint32 // supplementary groups; only for the implicit form (no group given)
	Home           string   // home directory from /etc/passwd, "/" when unknown
}

// maxUserDB bounds how much of an image's /etc/passwd or /etc/group is read:
// the files come from the image and are untrusted.
const maxUserDB = 8 << 20

// maxSymlinks bounds symlink resolution inside an image root (as the kernel's
// MAXSYMLINKS bounds it on a host).
const maxSymlinks = 40

// ResolveUser resolves an OCI config user string against the image rooted at
// rootfs, with the semantics of `docker run --user`:
//
//	""            uid 0 (root); gid and groups from /etc/passwd when present
//	"name"        looked up in /etc/passwd; gid from the entry; groups from /etc/group
//	"uid"         as given; gid (and home, groups) from /etc/passwd when listed, else 0
//	"u:g"         u as above (name or number), g a group name from /etc/group or a
//	              number; no supplementary groups (as runc and docker do)
//
// The image's /etc/passwd and /etc/group are read, never the host's; symlinks
// on the way are resolved with the image root as "/" and cannot leave it. A
// name that is not found is ErrUserNotFound or ErrGroupNotFound.
func ResolveUser(rootfs, user string) (User, error) {
	users, err := readUserDB(rootfs, "/etc/passwd", parsePasswd)
	if err != nil {
		return User{}, fmt.Errorf("resolving user %q: %w", user, err)
	}
	groups, err := readUserDB(rootfs, "/etc/group", parseGroup)
	if err != nil {
		return User{}, fmt.Errorf("resolving user %q: %w", user, err)
	}
	u, err := lookupUser(users, groups, user)
	if err != nil {
		return User{}, fmt.Errorf("resolving user %q in %s: %w", user, rootfs, err)
	}
	return u, nil
}

// lookupUser resolves user against parsed databases (see ResolveUser).
func lookupUser(users []passwdEntry, groups []groupEntry, user string) (User, error) {
	userArg, groupArg, hasGroup := strings.Cut(user, ":")
	if hasGroup && groupArg == "" {
		return User{}, errors.New("empty group")
	}
	if userArg == "" {
		if hasGroup {
			return User{}, errors.New("empty user")
		}
		userArg = "0"
	}
	u := User{Home: "/"}
	var name string
	if n, numErr := parseID(userArg); numErr == nil {
		u.UID = n
		for _, e := range users {
			if e.uid == n {
				u.GID, u.Home, name = e.gid, e.home, e.name
				break
			}
		}
	} else {
		found := false
		for _, e := range users {
			if e.name == userArg {
				u.UID, u.GID, u.Home, name = e.uid, e.gid, e.home, e.name
				found = true
				break
			}
		}
		if !found {
			return User{}, ErrUserNotFound
		}
	}
	if u.Home == "" {
		u.Home = "/"
	}
	if hasGroup {
		if n, numErr := parseID(groupArg); numErr == nil {
			u.GID = n
			return u, nil
		}
		for _, g := range groups {
			if g.name == groupArg {
				u.GID = g.gid
				return u, nil
			}
		}
		return User{}, fmt.Errorf("group %q: %w", groupArg, ErrGroupNotFound)
	}
	if name != "" {
		seen := map[uint32]bool{u.GID: true}
		for _, g := range groups {
			if seen[g.gid] {
				continue
			}
			for _, m := range g.members {
				if m == name {
					u.AdditionalGIDs = append(u.AdditionalGIDs, g.gid)
					seen[g.gid] = true
					break
				}
			}
		}
	}
	return u, nil
}

// parseID parses a uid or gid: a decimal number below 2^32-1 (-1 is "unset").
func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, err
	}
	if n == 1<<32-1 {
		return 0, fmt.Errorf("id %s is reserved", s)
	}
	return uint32(n), nil
}

type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// parsePasswd parses /etc/passwd lines "name:pw:uid:gid:gecos:home:shell".
// Malformed lines are skipped, as libc skips them.
func parsePasswd(r io.Reader) ([]passwdEntry, error) {
	var out []passwdEntry
	err := eachLine(r, func(line string) {
		f := strings.Split(line, ":")
		if len(f) < 4 || f[0] == "" {
			return
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil {
			return
		}
		e := passwdEntry{name: f[0], uid: uid, gid: gid}
		if len(f) >= 6 {
			e.home = f[5]
		}
		out = append(out, e)
	})
	return out, err
}

// parseGroup parses /etc/group lines "name:pw:gid:member,member".
func parseGroup(r io.Reader) ([]groupEntry, error) {
	var out []groupEntry
	err := eachLine(r, func(line string) {
		f := strings.Split(line, ":")
		if len(f) < 3 || f[0] == "" {
			return
		}
		gid, err := parseID(f[2])
		if err != nil {
			return
		}
		e := groupEntry{name: f[0], gid: gid}
		if len(f) >= 4 && f[3] != "" {
			for _, m := range strings.Split(f[3], ",") {
				if m = strings.TrimSpace(m); m != "" {
					e.members = append(e.members, m)
				}
			}
		}
		out = append(out, e)
	})
	return out, err
}

func eachLine(r io.Reader, fn func(string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		fn(line)
	}
	return sc.Err()
}

// readUserDB reads and parses one user database file of the image. A missing
// file is an empty database.
func readUserDB[T any](rootfs, name string, parse func(io.Reader) ([]T, error)) ([]T, error) {
	b, err := readInRoot(rootfs, name, maxUserDB)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out, err := parse(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parsing %s of image %s: %w", name, rootfs, err)
	}
	return out, nil
}

// readInRoot reads the regular file at name inside root, resolving symlinks
// with root as "/", and at most limit bytes of it.
func readInRoot(root, name string, limit int64) ([]byte, error) {
	p, err := resolveInRoot(root, name)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s of image %s: %w", name, root, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading %s of image %s: %w", name, root, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("reading %s of image %s: %w: not a regular file (%s)", name, root, ErrUnsafePath, fi.Mode().Type())
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("reading %s of image %s: %d bytes exceeds the limit of %d", name, root, fi.Size(), limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit))
	if err != nil {
		return nil, fmt.Errorf("reading %s of image %s: %w", name, root, err)
	}
	return b, nil
}

// resolveInRoot returns the host path of name inside root, following
// symlinks as if root were "/": ".." at the root stays at the root and
// absolute targets restart from root. Components that do not exist are
// appended as they are. More than maxSymlinks links is ErrUnsafePath.
func resolveInRoot(root, name string) (string, error) {
	rest := strings.Split(path.Clean("/"+name), "/")
	var cur []string // resolved components below root, no symlinks among them
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) > 0 {
				cur = cur[:len(cur)-1]
			}
			continue
		}
		next := append(cur[:len(cur):len(cur)], c)
		host := filepath.Join(root, filepath.Join(next...))
		fi, err := os.Lstat(host)
		if errors.Is(err, os.ErrNotExist) {
			cur = next
			continue
		}
		if err != nil {
			return "", fmt.Errorf("resolving %s in image %s: %w", name, root, err)
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		links++
		if links > maxSymlinks {
			return "", fmt.Errorf("resolving %s in image %s: %w: too many symlinks", name, root, ErrUnsafePath)
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", fmt.Errorf("resolving %s in image %s: %w", name, root, err)
		}
		if strings.HasPrefix(target, "/") {
			cur = nil
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return filepath.Join(root, filepath.Join(cur...)), nil
}
