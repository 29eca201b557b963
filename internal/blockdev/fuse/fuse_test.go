package fuse

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/lodetest"
)

// The test binary re-executes itself as a mount server (see TestRecover).
func TestMain(m *testing.M) {
	if os.Getenv("LODE_FUSE_TEST_SERVER") == "1" {
		helperServer()
		return
	}
	// A test that times out must not leave this process serving mounts it
	// reads itself: it could not exit (see AbortAll).
	stop := lodetest.BeforeTimeout(20*time.Second, func() {
		fmt.Fprintf(os.Stderr, "test timeout near: aborted %d FUSE connections\n", AbortAll())
	})
	code := m.Run()
	stop()
	os.Exit(code)
}

func helperServer() {
	img, err := os.ReadFile(os.Getenv("LODE_IMG"))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	_, err = MountImage(context.Background(), os.Getenv("LODE_DIR"), blockdev.NewMemDevice(img), MountOptions{StateDir: os.Getenv("LODE_STATE")})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	select {}
}

func requireMount(t testing.TB) {
	lodetest.Require(t, lodetest.Root, lodetest.FUSE, lodetest.Loop, lodetest.Tool("mkfs.ext4"), lodetest.Tool("debugfs"))
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// makeTree writes a source tree with regular files, a symlink, a hard
// link, xattrs, odd modes and owners.
func makeTree(t testing.TB, bigSize int) string {
	src := filepath.Join(t.TempDir(), "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "etc/sub"), 0o755))
	must(os.WriteFile(filepath.Join(src, "etc/hostname"), []byte("lode\n"), 0o644))
	must(os.WriteFile(filepath.Join(src, "etc/empty"), nil, 0o600))
	must(os.WriteFile(filepath.Join(src, "etc/sub/medium"), randomBytes(1, 300<<10), 0o750))
	must(os.WriteFile(filepath.Join(src, "big"), randomBytes(2, bigSize), 0o644))
	must(os.Symlink("../big", filepath.Join(src, "etc/link-to-big")))
	must(os.Link(filepath.Join(src, "etc/hostname"), filepath.Join(src, "etc/hardlink")))
	must(unix.Lsetxattr(filepath.Join(src, "etc/hostname"), "user.lode", []byte("xattr value"), 0))
	must(os.Lchown(filepath.Join(src, "etc/sub/medium"), 1234, 5678))
	mt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(filepath.Join(src, "etc/sub/medium"), mt, mt))
	return src
}

// makeImage builds a 4 KiB-block ext4 image of src with mkfs.ext4 -d.
func makeImage(t testing.TB, src string, size string) (path string, img []byte) {
	path = filepath.Join(t.TempDir(), "img.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-b", "4096", "-d", src, "-F", path, size).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, img
}

// fileBlocks returns the byte range [off, end) of the blocks of file in the
// image (contiguous for mkfs.ext4 -d output; checked).
func fileBlocks(t testing.TB, imgPath, file string) (off, end int64) {
	out, err := exec.Command("debugfs", "-R", "blocks "+file, imgPath).Output()
	if err != nil {
		t.Fatalf("debugfs blocks %s: %v", file, err)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		t.Fatalf("debugfs blocks %s: no blocks", file)
	}
	first, _ := strconv.ParseInt(f[0], 10, 64)
	last, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
	if last-first+1 != int64(len(f)) {
		t.Fatalf("file %s is not contiguous: %d blocks from %d to %d", file, len(f), first, last)
	}
	return first * 4096, (last + 1) * 4096
}

type entry struct {
	Mode   fs.FileMode
	Size   int64
	UID    uint32
	GID    uint32
	Mtime  int64
	Link   string
	Xattr  string
	SHA256 string // of the content
	HardOf string
}

// snapshot describes every entry under root (except lost+found).
func snapshot(t testing.TB, root string) map[string]entry {
	out := map[string]entry{}
	inodes := map[uint64]string{}
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
		st := fi.Sys().(*syscall.Stat_t)
		e := entry{Mode: fi.Mode(), UID: st.Uid, GID: st.Gid}
		if !fi.IsDir() {
			e.Size, e.Mtime = fi.Size(), fi.ModTime().Unix()
		}
		x := make([]byte, 256)
		if n, err := unix.Lgetxattr(p, "user.lode", x); err == nil {
			e.Xattr = string(x[:n])
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			e.Link, err = os.Readlink(p)
		case fi.Mode().IsRegular():
			var b []byte
			b, err = os.ReadFile(p)
			e.SHA256 = fmt.Sprintf("%x", sha256.Sum256(b))
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					e.HardOf = first
				} else {
					inodes[st.Ino] = rel
				}
			}
		}
		out[rel] = e
		return err
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	return out
}

type mounted struct {
	dir, state string
	m          *ImageMount
}

func mountImage(t *testing.T, d blockdev.Device, o MountOptions) mounted {
	t.Helper()
	base := t.TempDir()
	mt := mounted{dir: filepath.Join(base, "mnt"), state: filepath.Join(base, "state")}
	if err := os.Mkdir(mt.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	o.StateDir = mt.state
	o.Log = testLog(t)
	m, err := MountImage(context.Background(), mt.dir, d, o)
	if err != nil {
		t.Fatalf("MountImage: %v", err)
	}
	mt.m = m
	t.Cleanup(func() {
		m.Close()
		checkTornDown(t, mt)
	})
	return mt
}

// checkTornDown asserts that no mount and no loop device of mt is left.
func checkTornDown(t testing.TB, mt mounted) {
	t.Helper()
	if isMounted(mt.dir) {
		t.Errorf("%s still mounted", mt.dir)
	}
	if fm := filepath.Join(entryDir(mt.state, mt.dir), "fuse"); isMounted(fm) {
		t.Errorf("FUSE %s still mounted", fm)
	}
	if loops := loopsBackedUnder(mt.state); len(loops) > 0 {
		t.Errorf("loop devices still bound under %s: %v", mt.state, loops)
	}
}

func TestMountImageMatchesTree(t *testing.T) {
	requireMount(t)
	src := makeTree(t, 5<<20)
	_, img := makeImage(t, src, "64M")
	mt := mountImage(t, blockdev.NewMemDevice(img), MountOptions{})
	if !isMounted(mt.dir) {
		t.Fatalf("%s not in mountinfo", mt.dir)
	}
	want, got := snapshot(t, src), snapshot(t, mt.dir)
	// The root's own owner and mode come from mkfs, not from src.
	delete(want, ".")
	delete(got, ".")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mounted tree differs from source (-want +got):\n%s", diff)
	}
	if got["etc/hardlink"].HardOf == "" && got["etc/hostname"].HardOf == "" {
		t.Errorf("hard link etc/hardlink ↔ etc/hostname not preserved")
	}
	// Read-only all the way down.
	if err := os.WriteFile(filepath.Join(mt.dir, "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("creating a file = %v, want EROFS", err)
	}
	if f, err := os.OpenFile(mt.m.File(), os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EACCES) {
		f.Close()
		t.Errorf("opening the FUSE file for writing = %v, want EROFS", err)
	}
	if err := mt.m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkTornDown(t, mt)
	if err := mt.m.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// faultyDevice fails (or stalls, until ctx ends) reads overlapping a range.
type faultyDevice struct {
	blockdev.Device
	off, end int64
	stall    bool
	stalled  chan struct{} // receives once per stalled read
}

func (d *faultyDevice) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < d.end && off+int64(len(p)) > d.off {
		if d.stall {
			select {
			case d.stalled <- struct{}{}:
			default:
			}
			<-ctx.Done()
			return 0, fmt.Errorf("stalled read at %d: %w", off, ctx.Err())
		}
		return 0, fmt.Errorf("reading chunk at %d: injected failure", off)
	}
	return d.Device.ReadAt(ctx, p, off)
}

func TestReadErrorIsEIO(t *testing.T) {
	requireMount(t)
	src := makeTree(t, 2<<20)
	path, img := makeImage(t, src, "64M")
	off, end := fileBlocks(t, path, "/big")
	dev := &faultyDevice{Device: blockdev.NewMemDevice(img), off: off + (end-off)/2, end: off + (end-off)/2 + 1}
	mt := mountImage(t, dev, MountOptions{})
	_, err := os.ReadFile(filepath.Join(mt.dir, "big"))
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("reading big over a failing range = %v, want EIO", err)
	}
	got, err := os.ReadFile(filepath.Join(mt.dir, "etc/sub/medium"))
	if err != nil || !bytes.Equal(got, randomBytes(1, 300<<10)) {
		t.Errorf("reading etc/sub/medium = %d bytes, %v; want the source bytes", len(got), err)
	}
	// The FUSE file itself reports EIO at the failing offset.
	f, err := os.Open(mt.m.File())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, 4096), dev.off&^4095); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the FUSE file at %d = %v, want EIO", dev.off, err)
	}
}

func TestUnmountFromOutside(t *testing.T) {
	requireMount(t)
	_, img := makeImage(t, makeTree(t, 1<<20), "64M")
	mt := mountImage(t, blockdev.NewMemDevice(img), MountOptions{})
	loop := mt.m.Loop()
	if b := loopBacking(loop); b != mt.m.File() {
		t.Fatalf("%s backing file = %q, want %q", loop, b, mt.m.File())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Unmount(ctx, mt.state, mt.dir); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	waited := make(chan struct{})
	go func() { mt.m.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
		t.Fatal("serving side's Wait did not return after Unmount")
	}
	checkTornDown(t, mt)
	if b := loopBacking(loop); b != "" {
		t.Errorf("%s still backed by %q", loop, b)
	}
	if _, err := os.Stat(entryDir(mt.state, mt.dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state entry still present: %v", err)
	}
	if err := Unmount(ctx, mt.state, mt.dir); !errors.Is(err, ErrNotMounted) {
		t.Errorf("second Unmount = %v, want ErrNotMounted", err)
	}
}

func TestCloseWhileReaderStalled(t *testing.T) {
	requireMount(t)
	src := makeTree(t, 2<<20)
	path, img := makeImage(t, src, "64M")
	off, end := fileBlocks(t, path, "/big")
	dev := &faultyDevice{Device: blockdev.NewMemDevice(img), off: off, end: end, stall: true, stalled: make(chan struct{}, 1)}
	mt := mountImage(t, dev, MountOptions{UnmountTimeout: time.Second})
	var wg sync.WaitGroup
	var readErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, readErr = os.ReadFile(filepath.Join(mt.dir, "big"))
	}()
	select {
	case <-dev.stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("reader never reached the stalled device")
	}
	closed := make(chan error, 1)
	go func() { closed <- mt.m.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close hung with a stalled reader")
	}
	wg.Wait()
	if !errors.Is(readErr, syscall.EIO) {
		t.Errorf("stalled reader got %v, want EIO", readErr)
	}
	checkTornDown(t, mt)
}

// startHelperServer runs this test binary as a mount server of the image
// at imgPath on mt (TestMain, helperServer) and returns once it serves.
func startHelperServer(t *testing.T, imgPath string, mt mounted) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "LODE_FUSE_TEST_SERVER=1", "LODE_IMG="+imgPath, "LODE_DIR="+mt.dir, "LODE_STATE="+mt.state)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper server said %q", line)
	}
	return cmd
}

// Issue #20: right after a mount's server is killed, before its parent
// reaps it, the server is a zombie: kill(pid, 0) still succeeds, but it
// serves nothing and the mount gives EIO. The liveness check must call it
// dead, so that lode doctor reports the mount and Recover cleans it.
func TestLeftoversZombieServer(t *testing.T) {
	requireMount(t)
	imgPath, _ := makeImage(t, makeTree(t, 1<<20), "64M")
	base := t.TempDir()
	mt := mounted{dir: filepath.Join(base, "mnt"), state: filepath.Join(base, "state")}
	if err := os.Mkdir(mt.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := startHelperServer(t, imgPath, mt)
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			cmd.Process.Kill()
			cmd.Wait()
		}
		Recover(context.Background(), mt.state)
	})
	if got := Leftovers(mt.state); len(got) != 0 || !Served(mt.dir, []string{mt.state}) {
		t.Fatalf("with a live server: leftovers %v, served %v; want none, true", got, Served(mt.dir, []string{mt.state}))
	}
	pid := cmd.Process.Pid
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Not reaped: wait until the kernel has made it a zombie.
	for i := 0; ; i++ {
		if state, _, ok := processStat(pid); ok && state == 'Z' {
			break
		}
		if i == 500 {
			t.Fatalf("pid %d did not become a zombie after SIGKILL", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := unix.Kill(pid, 0); err != nil {
		t.Fatalf("kill(%d, 0) = %v on the unreaped server; the test needs a zombie", pid, err)
	}
	got := Leftovers(mt.state)
	if len(got) != 1 || got[0].Kind != "stale mount" || got[0].What != mt.dir || !strings.Contains(got[0].Detail, fmt.Sprintf("server pid %d is gone", pid)) {
		t.Errorf("leftovers with a zombie server = %v, want the stale mount %s", got, mt.dir)
	}
	if Served(mt.dir, []string{mt.state}) {
		t.Errorf("Served(%s) = true with a zombie server", mt.dir)
	}
	done, err := Recover(context.Background(), mt.state)
	if err != nil || len(done) != 1 || done[0] != mt.dir {
		t.Errorf("Recover with a zombie server = %v, %v; want %s unmounted", done, err, mt.dir)
	}
	cmd.Wait()
	reaped = true
	checkTornDown(t, mt)
}

func TestRecoverAfterServerKilled(t *testing.T) {
	requireMount(t)
	imgPath, _ := makeImage(t, makeTree(t, 1<<20), "64M")
	base := t.TempDir()
	mt := mounted{dir: filepath.Join(base, "mnt"), state: filepath.Join(base, "state")}
	if err := os.Mkdir(mt.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := startHelperServer(t, imgPath, mt)
	if got, err := os.ReadFile(filepath.Join(mt.dir, "etc/hostname")); err != nil || string(got) != "lode\n" {
		t.Errorf("reading through the helper's mount = %q, %v", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A live server is left alone.
	if done, err := Recover(ctx, mt.state); err != nil || len(done) != 0 {
		t.Errorf("Recover with a live server = %v, %v; want nothing done", done, err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if !isMounted(mt.dir) {
		t.Fatalf("%s not mounted after the server died (nothing to recover)", mt.dir)
	}
	// The dead server's mount fails reads instead of hanging.
	if _, err := os.ReadFile(filepath.Join(mt.dir, "big")); err == nil {
		t.Log("reading big after the server died succeeded (page cache)")
	}
	done, err := Recover(ctx, mt.state)
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if diff := cmp.Diff([]string{mt.dir}, done); diff != "" {
		t.Errorf("Recover cleaned (-want +got):\n%s", diff)
	}
	checkTornDown(t, mt)
	if ents, _ := os.ReadDir(mt.state); len(ents) != 0 {
		t.Errorf("state dir still has %d entries", len(ents))
	}
}

func TestParseMountInfoLine(t *testing.T) {
	tests := []struct {
		line string
		want mountEntry
		ok   bool
	}{
		{"36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext4 /dev/loop3 ro", mountEntry{98, 0, "/mnt/with space", "ext4", "/dev/loop3"}, true},
		{"40 35 0:52 / /run/lode/x/fuse rw - fuse.lode lode rw,user_id=0", mountEntry{0, 52, "/run/lode/x/fuse", "fuse.lode", "lode"}, true},
		{"garbage", mountEntry{}, false},
	}
	for _, tc := range tests {
		got, ok := parseMountInfoLine(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseMountInfoLine(%q) = %+v, %v, want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`a\134b`: `a\b`, `x\04`: `x\04`, `\011t`: "\tt", `end\`: `end\`, `/tmp/with\040space`: "/tmp/with space"} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParseMountInfo: every line of /proc/self/mountinfo parses or is
// skipped, never into an entry without a type (lode doctor's scanners read
// it, as Recover and Unmount do).
func FuzzParseMountInfo(f *testing.F) {
	f.Add("36 35 98:0 /mnt1 /mnt/parent rw - ext3 /dev/root rw\n")
	f.Add(`1 2 3:4 4 /a\040b - fuse x` + "\n - \n")
	f.Fuzz(func(t *testing.T, s string) {
		for _, line := range strings.Split(s, "\n") {
			m, ok := parseMountInfoLine(line)
			if ok && (m.FSType == "" || m.Source == "" && m.MountPoint == "") {
				t.Errorf("empty entry %+v from %q", m, line)
			}
		}
	})
}
