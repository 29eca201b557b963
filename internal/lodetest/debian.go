package lodetest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// DebianRootfsName is the cached tar DebianRootfs makes.
const DebianRootfsName = "debian-bookworm-minbase-python3.tar"

// toolsDir is $LODE_TOOLS, default ~/.cache/lode-tools (as .ci/s3.sh uses).
func toolsDir() string {
	if d := os.Getenv("LODE_TOOLS"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "lode-tools")
	}
	return filepath.Join(home, ".cache", "lode-tools")
}

// DebianRootfs returns the path of a plain tar of a real Debian bookworm
// root filesystem (debootstrap --variant=minbase --include=python3, the
// mirror from /etc/apt), as users make one: it carries device nodes in /dev,
// setuid binaries, hard links and absolute symlinks. It is built once (about
// a minute) and cached in the tools directory ($LODE_TOOLS, default
// ~/.cache/lode-tools), so CI makes it once per machine. Building it needs
// root and debootstrap; a cached tar needs nothing.
func DebianRootfs(t testing.TB) string {
	t.Helper()
	dir := toolsDir()
	out := filepath.Join(dir, DebianRootfsName)
	if _, err := os.Stat(out); err == nil {
		return out
	}
	Require(t, Root, Tool("debootstrap"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// One builder at a time across test binaries.
	lock, err := os.OpenFile(out+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out); err == nil {
		return out
	}
	mirror, err := debianMirror()
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.MkdirTemp(dir, "debootstrap-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include=python3", "bookworm", root, mirror)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debootstrap from %s: %v\n%s", mirror, err, tail(b, 4000))
	}
	// Drop what varies between runs and is not part of an image.
	os.RemoveAll(filepath.Join(root, "var", "cache", "apt", "archives"))
	os.MkdirAll(filepath.Join(root, "var", "cache", "apt", "archives", "partial"), 0o755)
	tmp := out + ".tmp"
	if b, err := exec.Command("tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", tmp, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar of the debootstrap tree: %v\n%s", err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// debianMirror returns the first Debian (not security) mirror configured for
// apt, from /etc/apt/sources.list.d/*.sources (deb822) or sources.list.
func debianMirror() (string, error) {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	files = append(files, "/etc/apt/sources.list")
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			var urls []string
			if u, ok := strings.CutPrefix(line, "URIs:"); ok {
				urls = strings.Fields(u)
			} else if fs := strings.Fields(line); len(fs) >= 3 && fs[0] == "deb" {
				urls = fs[1:2]
			}
			for _, u := range urls {
				if strings.Contains(u, "debian") && !strings.Contains(u, "security") {
					fh.Close()
					return u, nil
				}
			}
		}
		fh.Close()
	}
	return "", fmt.Errorf("no Debian mirror in /etc/apt sources")
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
