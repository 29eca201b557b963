package fuse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// attachLoop binds a free loop device read-only with autoclear over
// backing and returns its path and an open fd on it. The caller must keep
// the fd open until something else (a mount) holds the device: autoclear
// detaches it when the last opener closes.
func attachLoop(backing string, readAheadKB int) (string, *os.File, error) {
	// A raw descriptor, not os.OpenFile: Go registers every file it opens
	// with the runtime's epoll instance, and for a file on a FUSE mount that
	// epoll_ctl sends FUSE_POLL and waits for the answer while holding the
	// instance and the caller's P. When backing is served by this process
	// (MountImage), the answer needs a P too, and another P blocked in the
	// runtime's netpoll on the same instance can leave none: the process
	// deadlocks (seen in CI on 2 CPUs).
	bfd, err := unix.Open(backing, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("opening loop backing file %s: %w", backing, err)
	}
	defer unix.Close(bfd)
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("opening /dev/loop-control: %w", err)
	}
	defer ctl.Close()
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("finding a free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return "", nil, fmt.Errorf("opening %s: %w", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(bfd)}
		cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], backing)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		if errors.Is(err, unix.EBUSY) && attempt < 20 {
			lf.Close() // another process took it between GET_FREE and CONFIGURE
			continue
		}
		if err != nil {
			lf.Close()
			return "", nil, fmt.Errorf("configuring %s over %s: %w", dev, backing, err)
		}
		if readAheadKB > 0 {
			ra := filepath.Join("/sys/block", filepath.Base(dev), "queue/read_ahead_kb")
			// Best effort: larger readahead means larger FUSE reads.
			_ = os.WriteFile(ra, []byte(strconv.Itoa(readAheadKB)), 0)
		}
		return dev, lf, nil
	}
}

// detachLoop asks dev to detach; with autoclear a busy device detaches when
// its last user goes. It then waits (bounded by ctx) until it has.
func detachLoop(ctx context.Context, dev string) error {
	if f, err := os.OpenFile(dev, os.O_RDONLY, 0); err == nil {
		err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.ENXIO) {
			return fmt.Errorf("detaching %s: %w", dev, err)
		}
	}
	for loopBacking(dev) != "" {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to detach: %w", dev, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// loopBacking returns the backing file of a bound loop device, "" if free.
func loopBacking(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop/backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// loopDev is a bound loop device and its backing file.
type loopDev struct{ dev, backing string }

// boundLoops lists bound loop devices and their backing files (a deleted
// backing file is listed under its old path), ordered by device.
func boundLoops() []loopDev {
	ms, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []loopDev
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		out = append(out, loopDev{dev: "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(m))), backing: backing})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dev < out[j].dev })
	return out
}

// loopsBackedUnder lists bound loop devices whose backing file is under dir.
func loopsBackedUnder(dir string) []string {
	var out []string
	for _, l := range boundLoops() {
		if within(l.backing, dir) {
			out = append(out, l.dev)
		}
	}
	return out
}

func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	Major, Minor uint32
	MountPoint   string
	FSType       string
	Source       string
}

func mounts() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if e, ok := parseMountInfoLine(sc.Text()); ok {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// parseMountInfoLine parses "id parent maj:min root mountpoint opts
// [optional...] - fstype source superopts".
func parseMountInfoLine(line string) (mountEntry, bool) {
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return mountEntry{}, false
	}
	f, g := strings.Fields(pre), strings.Fields(post)
	if len(f) < 5 || len(g) < 2 {
		return mountEntry{}, false
	}
	majS, minS, ok := strings.Cut(f[2], ":")
	maj, err1 := strconv.ParseUint(majS, 10, 32)
	mnr, err2 := strconv.ParseUint(minS, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return mountEntry{}, false
	}
	return mountEntry{Major: uint32(maj), Minor: uint32(mnr), MountPoint: unescapeMount(f[4]), FSType: g[0], Source: unescapeMount(g[1])}, true
}

// unescapeMount undoes the kernel's octal escapes (\040 for space…).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func findMount(dir string) (mountEntry, bool) {
	ms, _ := mounts()
	var found mountEntry
	ok := false
	for _, m := range ms { // the last one stacked at dir is the visible one
		if m.MountPoint == dir {
			found, ok = m, true
		}
	}
	return found, ok
}

func isMounted(dir string) bool { _, ok := findMount(dir); return ok }

// unmountDir unmounts dir, retrying while busy until timeout, then lazily
// (MNT_DETACH) so that a stuck user cannot wedge the caller. beforeLazy
// runs once before the lazy fallback (to fail reads in flight). It reports
// whether it had to detach lazily.
func unmountDir(ctx context.Context, dir string, timeout time.Duration, onBusy func()) (lazy bool, err error) {
	deadline := time.Now().Add(timeout)
	busyOnce := false
	for {
		err := unix.Unmount(dir, 0)
		switch {
		case err == nil:
			return false, nil
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT):
			if !isMounted(dir) {
				return false, nil
			}
			return false, fmt.Errorf("unmounting %s: %w", dir, err)
		case !errors.Is(err, unix.EBUSY):
			return false, fmt.Errorf("unmounting %s: %w", dir, err)
		}
		if !busyOnce && onBusy != nil {
			onBusy()
			busyOnce = true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return true, fmt.Errorf("lazily unmounting %s: %w", dir, err)
			}
			return true, nil
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// abortFUSE aborts the FUSE connection of the mount at dir through fusectl
// (mounting fusectl if needed): pending and future requests fail with
// ENOTCONN and the server's loop ends. This is the last resort that keeps a
// stuck loop device from wedging the host.
func abortFUSE(dir string, m mountEntry) error {
	const ctl = "/sys/fs/fuse/connections"
	if !isMounted(ctl) {
		if err := unix.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil && !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("mounting fusectl to abort FUSE at %s: %w", dir, err)
		}
	}
	p := filepath.Join(ctl, strconv.FormatUint(uint64(m.Minor), 10), "abort")
	if err := os.WriteFile(p, []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("aborting FUSE connection of %s: %w", dir, err)
	}
	return nil
}
