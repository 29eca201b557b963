package fuse

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev"
)

// DefaultStateDir holds one directory per image mount (see MountImage).
const DefaultStateDir = "/run/lode/mounts"

// MountOptions configure MountImage.
type MountOptions struct {
	Options
	// StateDir is where each mount keeps its FUSE mount point and state
	// file, in a directory named for the hash of the target dir (default
	// DefaultStateDir). Unmount and Recover must be given the same one.
	StateDir string
	// FSType is the filesystem in the image (default "ext4").
	FSType string
	// Data is the filesystem's mount data (default "noload" for ext4: no
	// journal replay, so nothing is ever written to the read-only image).
	Data string
	// ReadAheadKB is the loop device's readahead (default 512, one default
	// chunk): with a direct-I/O FUSE file it sets the size of the FUSE reads
	// of a sequential scan, and it is the readahead window of every file of
	// the ext4 above it. 4096 made a cold python3 start fetch 29 MiB where
	// 512 fetches 23 MiB, with the same serial fetches and, within noise,
	// the same warm sequential throughput (BenchmarkWarmSequentialRead;
	// docs/coldstart.md): the agent's chunk read-ahead already follows
	// streams.
	ReadAheadKB int
	// UnmountTimeout bounds how long Close and Unmount retry a busy
	// filesystem before detaching it lazily (default 5 s).
	UnmountTimeout time.Duration
}

func (o MountOptions) withDefaults() MountOptions {
	o.Options = o.Options.withDefaults()
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.FSType == "" {
		o.FSType = "ext4"
	}
	if o.Data == "" && o.FSType == "ext4" {
		o.Data = "noload"
	}
	if o.ReadAheadKB == 0 {
		o.ReadAheadKB = 512
	}
	if o.UnmountTimeout <= 0 {
		o.UnmountTimeout = 5 * time.Second
	}
	return o
}

// state is the file written for each mount, so another process (lode
// umount, lode doctor) can tear it down.
type state struct {
	Dir       string `json:"dir"`        // where the filesystem is mounted
	FUSEDir   string `json:"fuse_dir"`   // the FUSE mount point
	Loop      string `json:"loop"`       // /dev/loopN
	PID       int    `json:"pid"`        // the serving process
	StartTime uint64 `json:"start_time"` // its start time (field 22 of /proc/PID/stat), against PID reuse
}

const stateFile = "state.json"

func entryDir(stateDir, dir string) string {
	h := sha256.Sum256([]byte(dir))
	return filepath.Join(stateDir, hex.EncodeToString(h[:8]))
}

// ImageMount is an image mounted read-only through FUSE and a loop device.
type ImageMount struct {
	st      state
	entry   string
	fm      *FileMount
	o       MountOptions
	log     *slog.Logger
	closeMu sync.Mutex
	closed  chan struct{} // closed when torn down
	err     error
}

// MountImage serves d as a FUSE file in a private state directory, binds a
// read-only autoclear loop device over it, and mounts that read-only at
// dir (which must exist). It returns when the filesystem is mounted.
func MountImage(ctx context.Context, dir string, d blockdev.Device, o MountOptions) (_ *ImageMount, err error) {
	o = o.withDefaults()
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mounting image at %s: %w", dir, err)
	}
	entry := entryDir(o.StateDir, dir)
	if _, err := os.Stat(filepath.Join(entry, stateFile)); err == nil {
		return nil, fmt.Errorf("mounting image at %s: state %s exists: %w", dir, entry, ErrBusy)
	}
	fuseDir := filepath.Join(entry, "fuse")
	if err := os.MkdirAll(fuseDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating mount state %s: %w", entry, err)
	}
	log := o.Log.With(slog.String("dir", dir))
	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
			os.RemoveAll(entry)
		}
	}()
	fm, err := ServeFile(context.WithoutCancel(ctx), fuseDir, "image", d, o.Options)
	if err != nil {
		return nil, fmt.Errorf("mounting image at %s: %w", dir, err)
	}
	cleanup = append(cleanup, func() { fm.cancelReads(); fm.Unmount() })
	dev, lf, err := attachLoop(fm.Path(), o.ReadAheadKB)
	if err != nil {
		return nil, fmt.Errorf("mounting image at %s: %w", dir, err)
	}
	defer lf.Close() // the mount holds the device from here on
	cleanup = append(cleanup, func() {
		lf.Close()
		tctx, cancel := context.WithTimeout(context.Background(), o.UnmountTimeout)
		defer cancel()
		detachLoop(tctx, dev)
	})
	st := state{Dir: dir, FUSEDir: fuseDir, Loop: dev, PID: os.Getpid(), StartTime: processStart(os.Getpid())}
	m := &ImageMount{st: st, entry: entry, fm: fm, o: o, log: log, closed: make(chan struct{})}
	if err := m.writeState(); err != nil {
		return nil, err
	}
	if err := unix.Mount(dev, dir, o.FSType, unix.MS_RDONLY, o.Data); err != nil {
		return nil, fmt.Errorf("mounting %s (%s over %s) at %s: %w", o.FSType, dev, fm.Path(), dir, err)
	}
	log.Info("image mounted", slog.String("loop", dev), slog.String("fuse", fm.Path()))
	// Torn down from elsewhere (Unmount from another process): finish up.
	go func() {
		fm.Wait()
		m.Close()
	}()
	return m, nil
}

// writeState records the mount (and this process as its server) in
// state.json, atomically: lode doctor may read it at any time.
func (m *ImageMount) writeState() error {
	b, _ := json.Marshal(m.st)
	tmp := filepath.Join(m.entry, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing mount state %s: %w", m.entry, err)
	}
	if err := os.Rename(tmp, filepath.Join(m.entry, stateFile)); err != nil {
		return fmt.Errorf("writing mount state %s: %w", m.entry, err)
	}
	return nil
}

// ErrBusy reports a target that already has a lode mount.
var ErrBusy = errors.New("fuse: already mounted")

// ErrNotMounted reports an Unmount of a dir lode did not mount.
var ErrNotMounted = errors.New("fuse: not a lode mount")

// Dir returns where the filesystem is mounted.
func (m *ImageMount) Dir() string { return m.st.Dir }

// Loop returns the loop device (/dev/loopN).
func (m *ImageMount) Loop() string { return m.st.Loop }

// File returns the FUSE file backing the loop device.
func (m *ImageMount) File() string { return m.fm.Path() }

// Close unmounts dir (retrying while busy, then lazily after
// UnmountTimeout; reads blocked in the Device are cancelled first, so their
// readers get EIO), detaches the loop device and unmounts the FUSE file.
// It is idempotent and returns the first teardown error. After a
// successful HandOver it does nothing: the mount is the new server's.
func (m *ImageMount) Close() error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	select {
	case <-m.closed:
		return m.err
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*m.o.UnmountTimeout)
	defer cancel()
	m.err = teardown(ctx, m.st, m.o.UnmountTimeout, m.fm, m.log)
	if m.err == nil {
		os.RemoveAll(m.entry)
	}
	close(m.closed)
	return m.err
}

// Wait returns after Close or HandOver, or after Unmount from another process tore the
// mount down.
func (m *ImageMount) Wait() { <-m.closed }

// teardown unmounts st.Dir, detaches st.Loop and unmounts st.FUSEDir. fm
// is the in-process FUSE server (nil from another process).
func teardown(ctx context.Context, st state, timeout time.Duration, fm *FileMount, log *slog.Logger) error {
	var errs []error
	failReads := func() {
		if fm != nil {
			fm.cancelReads()
		}
	}
	// A reader blocked in the Device keeps dir busy: fail its read at once.
	failReads()
	lazy, err := unmountDir(ctx, st.Dir, timeout, nil)
	if err != nil {
		errs = append(errs, err)
	}
	if lazy {
		log.Warn("filesystem busy, detached lazily", slog.String("dir", st.Dir))
	}
	// After a lazy unmount the filesystem still holds the loop device, so
	// waiting for it to detach would only run out the timeout: autoclear
	// detaches it when the last user goes.
	if st.Loop != "" && !lazy && within(loopBacking(st.Loop), st.FUSEDir) {
		dctx, cancel := context.WithTimeout(ctx, timeout)
		if err := detachLoop(dctx, st.Loop); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	// The FUSE mount: normally free now; busy only if a lazily detached
	// filesystem still has users, then abort the connection so the loop
	// device errors out instead of waiting.
	fe, mounted := findMount(st.FUSEDir)
	if mounted {
		if err := unix.Unmount(st.FUSEDir, 0); err != nil {
			log.Warn("FUSE mount busy, aborting its connection", slog.String("fuse", st.FUSEDir), slog.Any("err", err))
			if err := abortFUSE(st.FUSEDir, fe); err != nil {
				errs = append(errs, err)
			}
			if err := unix.Unmount(st.FUSEDir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("lazily unmounting FUSE at %s: %w", st.FUSEDir, err))
			}
		}
	}
	if fm != nil {
		select {
		case <-fm.Done():
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("waiting for FUSE server of %s: %w", st.FUSEDir, ctx.Err()))
		}
	}
	return errors.Join(errs...)
}

// Unmount tears down the lode mount at dir from any process (lode umount):
// it unmounts dir, detaches the loop device and unmounts the FUSE file; the
// serving process sees its FUSE server exit and its Wait return. It does
// not need the serving process to be alive. stateDir "" means
// DefaultStateDir.
func Unmount(ctx context.Context, stateDir, dir string) error {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("unmounting %s: %w", dir, err)
	}
	entry := entryDir(stateDir, dir)
	st, err := readState(entry)
	if err != nil {
		return fmt.Errorf("unmounting %s: %w", dir, err)
	}
	if err := teardown(ctx, st, 5*time.Second, nil, slog.New(slog.DiscardHandler)); err != nil {
		return fmt.Errorf("unmounting %s: %w", dir, err)
	}
	// The serving process, if alive, removes the entry too; either is fine.
	os.RemoveAll(entry)
	return nil
}

func readState(entry string) (state, error) {
	var st state
	b, err := os.ReadFile(filepath.Join(entry, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("no state in %s: %w", entry, ErrNotMounted)
	}
	if err != nil {
		return st, fmt.Errorf("reading mount state %s: %w", entry, err)
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Dir == "" || !within(st.FUSEDir, entry) {
		return st, fmt.Errorf("parsing mount state %s: %w", entry, ErrNotMounted)
	}
	return st, nil
}

// Recover cleans up the mounts under stateDir whose serving process is gone
// (crashed or killed): it tears each down as Unmount does, then removes
// stray loop devices and FUSE mounts under stateDir that have no state.
// It returns the dirs it unmounted. Mounts with a live server are left.
func Recover(ctx context.Context, stateDir string) ([]string, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("recovering mounts in %s: %w", stateDir, err)
	}
	var done []string
	var errs []error
	log := slog.New(slog.DiscardHandler)
	for _, e := range ents {
		entry := filepath.Join(stateDir, e.Name())
		st, err := readState(entry)
		if err == nil && alive(st.PID, st.StartTime) {
			continue
		}
		if err == nil {
			if terr := teardown(ctx, st, 2*time.Second, nil, log); terr != nil {
				errs = append(errs, fmt.Errorf("recovering %s: %w", st.Dir, terr))
				continue
			}
			done = append(done, st.Dir)
		} else {
			// No readable state: clean what may be under the entry.
			fuseDir := filepath.Join(entry, "fuse")
			for _, dev := range loopsBackedUnder(fuseDir) {
				if m := mountsOf(dev); len(m) > 0 {
					for _, d := range m {
						unmountDir(ctx, d, time.Second, nil)
						done = append(done, d)
					}
				}
				dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				detachLoop(dctx, dev)
				cancel()
			}
			if fe, ok := findMount(fuseDir); ok {
				if unix.Unmount(fuseDir, 0) != nil {
					abortFUSE(fuseDir, fe)
					unix.Unmount(fuseDir, unix.MNT_DETACH)
				}
			}
		}
		if err := os.RemoveAll(entry); err != nil {
			errs = append(errs, err)
		}
	}
	return done, errors.Join(errs...)
}

// mountsOf lists the mount points whose source is dev.
func mountsOf(dev string) []string {
	ms, _ := mounts()
	return sourcedFrom(ms, dev)
}

// alive reports whether pid runs and is the process that wrote the state:
// the one liveness check of a mount's server (Recover, Leftovers, Served).
// A zombie — killed, not yet reaped by its parent — is dead: it serves no
// FUSE request, and its mount gives EIO (issue #20).
func alive(pid int, start uint64) bool {
	if pid <= 0 || unix.Kill(pid, 0) != nil {
		return false
	}
	state, started, ok := processStat(pid)
	if !ok {
		return false // gone between the two looks
	}
	if state == 'Z' || state == 'X' {
		return false
	}
	return start == 0 || started == start
}

// processStart returns field 22 (starttime) of /proc/PID/stat, 0 if unknown.
func processStart(pid int) uint64 {
	_, v, _ := processStat(pid)
	return v
}

// processStat returns fields 3 (state: R, S, Z, …) and 22 (starttime) of
// /proc/PID/stat; ok is false when the process is gone.
func processStat(pid int) (state byte, start uint64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// comm may contain spaces: fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, true
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) > 0 && len(f[0]) == 1 {
		state = f[0][0]
	}
	if len(f) < 20 {
		return state, 0, true
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return state, v, true
}
