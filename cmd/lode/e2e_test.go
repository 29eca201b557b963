package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/store"
)

func requireMount(t *testing.T) {
	t.Helper()
	lodetest.Require(t, lodetest.Root, lodetest.FUSE, lodetest.Loop)
}

// mounted is a runMount serving in the background.
type mounted struct {
	dir, stateDir string
	cancel        context.CancelFunc
	errc          chan error
}

// startMount runs "lode mount NAME DIR" until the test cancels it, and
// returns once it prints the mounted line.
func (c *cli) startMount(t *testing.T, name string) *mounted {
	t.Helper()
	m := &mounted{dir: filepath.Join(t.TempDir(), "mnt"), stateDir: filepath.Join(c.home, "mounts"), errc: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		m.errc <- runMount(ctx, mountOptions{stateDir: m.stateDir, worker: c.workerOpts()}, name, m.dir)
	}()
	t.Cleanup(func() {
		cancel()
		if isMounted(t, m.dir) {
			fuse.Unmount(context.Background(), m.stateDir, m.dir)
		}
	})
	waitFor(t, "the mounted line", m.errc, func() bool {
		return strings.Contains(c.stdout.String(), mountedLine+"default/"+name+" at "+m.dir)
	})
	if !isMounted(t, m.dir) {
		t.Fatalf("mount printed %q but %s is not in mountinfo", c.stdout.String(), m.dir)
	}
	return m
}

// wait returns runMount's error; the limit only guards against a hang.
func (m *mounted) wait(t *testing.T, what string) error {
	t.Helper()
	select {
	case err := <-m.errc:
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("lode mount did not return after %s", what)
		return nil
	}
}

func TestMountComparesEveryFile(t *testing.T) {
	requireMount(t)
	want := lodetest.Snapshot(t, oracle(t))
	c := newCLI(t)
	c.buildSample(t)
	m := c.startMount(t, "demo")

	got := lodetest.Snapshot(t, m.dir)
	if len(want) < 100 {
		t.Fatalf("the oracle has only %d paths", len(want))
	}
	for _, p := range []string{"app/start.sh", "data/model.bin", "etc/passwd", "bin"} {
		if _, ok := want[p]; !ok {
			t.Errorf("the oracle lacks %s", p)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mounted image differs from umoci's unpacked rootfs (-umoci +lode mount):\n%s", diff)
	}

	// Unmount while a reader is busy: the mount must go away and the
	// reader must stop, neither hanging.
	f, err := os.Open(filepath.Join(m.dir, "data/model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	readerDone := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		buf := make([]byte, 64<<10)
		for i := 0; ; i++ {
			if i == 1 {
				close(started)
			}
			if _, err := f.ReadAt(buf, int64(i%128)*int64(len(buf))); err != nil && err != io.EOF {
				readerDone <- err
				return
			}
			if i > 1 && i%128 == 0 {
				// Drop the page cache so reads keep reaching the device.
				unixFadviseDontNeed(f)
			}
		}
	}()
	<-started
	m.cancel()
	if err := m.wait(t, "cancel with a busy reader"); err != nil {
		t.Errorf("lode mount after cancel = %v", err)
	}
	if isMounted(t, m.dir) {
		t.Errorf("%s is still mounted after lode mount returned", m.dir)
	}
	select {
	case err := <-readerDone:
		t.Logf("the reader stopped with %v", err)
	case <-time.After(60 * time.Second):
		t.Errorf("a reader of the unmounted image hangs")
	}
	if s := c.stderr.String(); !strings.Contains(s, "chunk reads by tier") || !strings.Contains(s, "origin") {
		t.Errorf("mount printed no statistics on exit: %q", s)
	}
}

func unixFadviseDontNeed(f *os.File) {
	syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, 4 /* POSIX_FADV_DONTNEED */, 0, 0)
}

// TestUmountFromOutside unmounts with fuse.Unmount (what "lode umount"
// runs in another process): lode mount notices and returns.
func TestUmountFromOutside(t *testing.T) {
	requireMount(t)
	c := newCLI(t)
	c.buildSample(t)
	m := c.startMount(t, "demo")
	b, err := os.ReadFile(filepath.Join(m.dir, "app/config.json"))
	if err != nil || !strings.Contains(string(b), `"workers": 4`) {
		t.Fatalf("reading app/config.json: %q, %v", b, err)
	}
	if err := c.execLode(t, "umount", "--state-dir", m.stateDir, m.dir); err != nil {
		t.Fatalf("lode umount: %v", err)
	}
	if !strings.Contains(c.stdout.String(), "unmounted "+m.dir) {
		t.Errorf("lode umount printed %q", c.stdout.String())
	}
	if err := m.wait(t, "lode umount"); err != nil {
		t.Errorf("lode mount after lode umount = %v", err)
	}
	if isMounted(t, m.dir) {
		t.Errorf("%s still mounted", m.dir)
	}
	entries, _ := os.ReadDir(m.stateDir)
	if len(entries) != 0 {
		t.Errorf("mount state left in %s: %v", m.stateDir, entries)
	}
}

func TestRun(t *testing.T) {
	requireMount(t)
	lodetest.Require(t, lodetest.Tool("runc"))
	c := newCLI(t)
	c.buildSample(t)
	ctx := context.Background()
	opts := runOptions{runtime: "runc", network: "host", stateDir: filepath.Join(c.home, "mounts"), worker: c.workerOpts()}

	// lode run --entrypoint '' demo -- /bin/sh -c 'echo hi; exit 3'
	o := opts
	o.setEntrypoint = true
	var out, errOut syncBuffer
	err := runRun(ctx, o, "demo", []string{"/bin/sh", "-c", "echo hi; exit 3"}, nil, &out, &errOut)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 3 {
		t.Errorf("run = %v, want exit status 3\nstderr: %s", err, errOut.String())
	}
	if out.String() != "hi\n" {
		t.Errorf("run printed %q, want %q", out.String(), "hi\n")
	}
	stats := errOut.String()
	if !regexp.MustCompile(`lode: default/demo: mounted in .*, first exec after .*, exit 3 after`).MatchString(stats) || !strings.Contains(stats, "origin") {
		t.Errorf("run's statistics = %q, want the timing line and the origin tier", stats)
	}

	// The image's own entrypoint, from a cold cache.
	o = opts
	o.worker.CacheDir = filepath.Join(c.home, "cold-cache")
	out, errOut = syncBuffer{}, syncBuffer{}
	if err := runRun(ctx, o, "demo", nil, nil, &out, &errOut); err != nil {
		t.Fatalf("run with the default entrypoint = %v\nstderr: %s", err, errOut.String())
	}
	for _, want := range []string{"hello from a lazily loaded image", "running as 1000:1000 in /app", `PRETTY_NAME="lode sample image"`, "payload present: 1 file(s), not read"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the entrypoint printed %q, want it to contain %q", out.String(), want)
		}
	}
	m := regexp.MustCompile(`read (\S+ \S+) of (\S+ \S+) \(([0-9.]+)% of the image`).FindStringSubmatch(errOut.String())
	if m == nil {
		t.Fatalf("no share-read line in %q", errOut.String())
	}
	if share, _ := strconv.ParseFloat(m[3], 64); share <= 0 || share >= 100 {
		t.Errorf("the start read %s%% of the image, want some but not all", m[3])
	}
	if !regexp.MustCompile(`origin [1-9]\d* `).MatchString(errOut.String()) {
		t.Errorf("a cold start fetched nothing from the origin: %q", errOut.String())
	}
}

func TestServeNBD(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("nbdcopy"), lodetest.Tool("nbdinfo"))
	c := newCLI(t)
	keep := c.buildSample(t)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- runServeNBD(ctx, serveNBDOptions{listen: "unix:" + sock, worker: c.workerOpts()}, "demo")
	}()
	waitFor(t, "the serving line", errc, func() bool { return strings.Contains(c.stderr.String(), "as NBD export \"demo\" on unix:"+sock) })

	uri := "nbd+unix:///demo?socket=" + sock
	info, err := exec.Command("nbdinfo", "--size", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, info)
	}
	fi, err := os.Stat(keep)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(info)); got != strconv.FormatInt(fi.Size(), 10) {
		t.Errorf("nbdinfo --size = %s, want %d", got, fi.Size())
	}
	copied := filepath.Join(t.TempDir(), "copy.img")
	if out, err := exec.Command("nbdcopy", uri, copied).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, out)
	}
	a, _ := os.ReadFile(keep)
	b, _ := os.ReadFile(copied)
	if !bytes.Equal(a, b) {
		t.Errorf("nbdcopy of the export: %d bytes, sha256 %x; built image %d bytes, sha256 %x", len(b), sha256.Sum256(b), len(a), sha256.Sum256(a))
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("serve-nbd after cancel = %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve-nbd did not return after cancel")
	}
}

// TestTamperedChunkGivesEIO flips a byte of a stored chunk inside
// data/model.bin and deletes another: reading the file through a mount
// fails with EIO at each, every byte returned before is right, other parts
// and files still read, and the log names the chunks and the image.
func TestTamperedChunkGivesEIO(t *testing.T) {
	requireMount(t)
	lodetest.Require(t, lodetest.Tool("debugfs"))
	want, err := os.ReadFile(filepath.Join(oracle(t), "data/model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	c := newCLI(t)
	keep := c.buildSample(t)

	_, _, man, p := resolveDemo(t)
	// chunkAt returns the chunk holding logical block b of the file, and
	// its file in the store.
	chunkAt := func(b int64) (chunk.Name, string) {
		t.Helper()
		out, err := exec.Command("debugfs", "-R", "bmap /data/model.bin "+strconv.FormatInt(b, 10), keep).Output()
		if err != nil {
			t.Fatalf("debugfs bmap: %v", err)
		}
		block, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		if err != nil || block == 0 {
			t.Fatalf("debugfs bmap printed %q", out)
		}
		ci := int(block * 4096 / (512 << 10))
		name := man.Names[ci]
		if name.IsZero() {
			t.Fatalf("chunk %d of the image is a hole", ci)
		}
		for i, n := range man.Names {
			if n == name && i != ci {
				t.Fatalf("chunk %d repeats as chunk %d: damaging it would hit both", ci, i)
			}
		}
		return name, filepath.Join(c.home, "store", filepath.FromSlash(store.ChunkKey(p.Root, name)))
	}
	// Tamper with the chunk in the file's middle; delete the one at 3/4.
	blocks := int64(len(want) / 4096)
	logical := blocks / 2
	name, chunkFile := chunkAt(logical)
	ct, err := os.ReadFile(chunkFile)
	if err != nil {
		t.Fatal(err)
	}
	ct[len(ct)/2] ^= 0x01
	if err := os.WriteFile(chunkFile, ct, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := chunk.Verify(name, ct); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("Verify of the tampered chunk = %v", err)
	}
	missingAt := blocks * 3 / 4
	missing, missingFile := chunkAt(missingAt)
	if err := os.Remove(missingFile); err != nil {
		t.Fatal(err)
	}

	m := c.startMount(t, "demo")
	f, err := os.Open(filepath.Join(m.dir, "data/model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []byte
	buf := make([]byte, 64<<10)
	var readErr error
	for {
		n, err := f.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			readErr = err
			break
		}
	}
	if !errors.Is(readErr, syscall.EIO) {
		t.Errorf("reading the file over the tampered chunk ended with %v after %d bytes, want EIO", readErr, len(got))
	}
	if len(got) > len(want) || !bytes.Equal(got, want[:len(got)]) {
		t.Errorf("the %d bytes read before the error are not the file's", len(got))
	}
	if lo := logical * 4096; int64(len(got)) > lo {
		t.Errorf("read %d bytes, past offset %d, which lies in the tampered chunk", len(got), lo)
	}
	// The missing chunk gives EIO too.
	if _, err := f.ReadAt(make([]byte, 4096), missingAt*4096); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading over the missing chunk = %v, want EIO", err)
	}
	// The end of the file lies in other chunks and still reads.
	tail := make([]byte, 4096)
	if _, err := f.ReadAt(tail, int64(len(want)-len(tail))); err != nil || !bytes.Equal(tail, want[len(want)-len(tail):]) {
		t.Errorf("reading the file's last block = %v (right bytes: %v)", err, bytes.Equal(tail, want[len(want)-len(tail):]))
	}
	if b, err := os.ReadFile(filepath.Join(m.dir, "app/start.sh")); err != nil || !strings.Contains(string(b), "GREETING") {
		t.Errorf("reading app/start.sh = %v", err)
	}
	f.Close() // an open file would keep the filesystem busy at unmount
	log := c.log.String()
	for _, n := range []chunk.Name{name, missing} {
		if !regexp.MustCompile(`reading chunk.*image=default/demo.*chunk=` + n.String()).MatchString(log) {
			t.Errorf("the log does not name chunk %s of default/demo:\n%s", n, log)
		}
	}
	m.cancel()
	if err := m.wait(t, "cancel"); err != nil {
		t.Errorf("lode mount after cancel = %v", err)
	}
	if !regexp.MustCompile(`[1-9]\d* fetch errors, [1-9]\d* verification failures`).MatchString(c.stderr.String()) {
		t.Errorf("statistics do not count the failure: %q", c.stderr.String())
	}
}

// TestServeNBDKeepsFileAtListenPath: --listen unix:PATH replaces a stale
// socket, but must never delete a regular file a mistyped PATH names.
func TestServeNBDKeepsFileAtListenPath(t *testing.T) {
	c := newCLI(t)
	c.buildSample(t)
	precious := filepath.Join(t.TempDir(), "precious.txt")
	if err := os.WriteFile(precious, []byte("keep me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- runServeNBD(ctx, serveNBDOptions{listen: "unix:" + precious, worker: c.workerOpts()}, "demo")
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-errc:
			if err == nil || !strings.Contains(err.Error(), precious) {
				t.Errorf("serve-nbd on a regular file = %v, want an error naming %s", err, precious)
			}
		default:
			if strings.Contains(c.stderr.String(), "on unix:"+precious) || time.Now().After(deadline) {
				t.Errorf("serve-nbd listens on %s, where a regular file was", precious)
				cancel()
				<-errc
			} else {
				time.Sleep(20 * time.Millisecond)
				continue
			}
		}
		break
	}
	if b, err := os.ReadFile(precious); err != nil || string(b) != "keep me\n" {
		t.Errorf("the file at the listen path: %q, %v; want it untouched", b, err)
	}
}
