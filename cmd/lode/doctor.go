package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/worker"
)

// doctor.go is `lode doctor`: it finds what a crashed lode process left
// behind (issue #9) and, with --fix, cleans it.

func init() { extraCommands = append(extraCommands, newDoctorCmd) }

type doctorOptions struct {
	fix       bool
	stateDirs []string
	socket    string
	cacheDir  string
	minAge    time.Duration
}

func newDoctorCmd() *cobra.Command {
	var o doctorOptions
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Find (and with --fix clean) what crashed lode processes left behind",
		Long: `Doctor looks for leftovers of lode processes that died without cleaning up:

  stale mount     a lode mount whose serving process is gone (reads give EIO)
  stale loop      a loop device over a lode FUSE file with no live server
  stale fuse      a FUSE mount under the state dir with no live server
  stale socket    a unix socket nobody accepts on (agent or NBD)
  stale run dir   a lode run container dir under $LODE_HOME/run with no live mount
  cache temp      a disk-cache temporary file older than --min-age

It prints one line per finding. With --fix it tears stale mounts down (as
lode umount does), detaches the loop devices, unmounts the FUSE mounts and
removes the files, then looks again. The exit status is 0 when nothing is
left to fix and 1 otherwise. Mounts with a live server are never touched.`,
		Example: `  lode doctor
  lode doctor --fix`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDoctor(cmd.Context(), o, stdout)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.fix, "fix", false, "clean what is found")
	f.StringSliceVar(&o.stateDirs, "state-dir", []string{fuse.DefaultStateDir}, "mount state dirs to check (as given to lode mount/agent)")
	f.StringVar(&o.socket, "socket", envOr("LODE_AGENT_SOCKET", worker.DefaultSocket), "the agent's control socket; sockets next to it are checked too")
	f.StringVar(&o.cacheDir, "cache-dir", "", "disk cache to check for temporary files (default $LODE_HOME/cache)")
	f.DurationVar(&o.minAge, "min-age", 10*time.Minute, "only report run dirs and temporary files older than this (younger ones may be in use)")
	return cmd
}

// finding is one problem doctor found.
type finding struct {
	kind   string // "stale mount", …
	what   string // the path or device
	detail string
	// fix cleans it; nil for the mount findings, which fuse.Recover of
	// their state dir cleans together.
	fix func(ctx context.Context) error
}

func (f finding) String() string {
	if f.detail == "" {
		return f.kind + " " + f.what
	}
	return f.kind + " " + f.what + ": " + f.detail
}

func runDoctor(ctx context.Context, o doctorOptions, out io.Writer) error {
	if o.cacheDir == "" {
		o.cacheDir = filepath.Join(global.home, "cache")
	}
	found := doctorScan(o, time.Now())
	for _, f := range found {
		fmt.Fprintln(out, f)
	}
	if len(found) == 0 {
		fmt.Fprintln(out, "no problems found")
		return nil
	}
	if !o.fix {
		fmt.Fprintf(out, "%d problem(s) found; run lode doctor --fix to clean them\n", len(found))
		return &exitError{code: 1}
	}
	var errs []error
	for _, dir := range o.stateDirs {
		done, err := fuse.Recover(ctx, dir)
		for _, d := range done {
			fmt.Fprintf(out, "fixed: unmounted %s\n", d)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	// What Recover cannot reach (loop devices and FUSE mounts whose state
	// entry is gone), then the files.
	for _, f := range doctorScan(o, time.Now()) {
		if f.fix == nil {
			continue
		}
		if err := f.fix(ctx); err != nil {
			errs = append(errs, fmt.Errorf("fixing %s: %w", f, err))
			continue
		}
		fmt.Fprintf(out, "fixed: %s\n", f)
	}
	for _, err := range errs {
		fmt.Fprintf(out, "error: %v\n", err)
	}
	left := doctorScan(o, time.Now())
	for _, f := range left {
		fmt.Fprintf(out, "still: %s\n", f)
	}
	if len(left) > 0 {
		fmt.Fprintf(out, "%d problem(s) remain\n", len(left))
		return &exitError{code: 1}
	}
	fmt.Fprintf(out, "fixed %d problem(s)\n", len(found))
	return nil
}

// doctorScan lists every problem, mounts first.
func doctorScan(o doctorOptions, now time.Time) []finding {
	mi := readMountInfo()
	var out []finding
	for _, sd := range o.stateDirs {
		out = append(out, scanStateDir(sd, mi)...)
	}
	out = append(out, scanSockets(o.socket, filepath.Join(global.home, "run"))...)
	out = append(out, scanRunDirs(filepath.Join(global.home, "run"), o.stateDirs, mi, now, o.minAge)...)
	out = append(out, scanCacheTemps(o.cacheDir, now, o.minAge)...)
	return out
}

// mountState is fuse's state.json (internal/blockdev/fuse, image.go).
type mountState struct {
	Dir       string `json:"dir"`
	FUSEDir   string `json:"fuse_dir"`
	Loop      string `json:"loop"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// scanStateDir reports mount entries whose server is gone, and loop
// devices and FUSE mounts under sd that no live entry accounts for.
func scanStateDir(sd string, mi []mountInfo) []finding {
	sd, _ = filepath.Abs(sd)
	var out []finding
	live := map[string]bool{} // entry dirs with a live server
	covered := map[string]bool{}
	ents, _ := os.ReadDir(sd)
	for _, e := range ents {
		entry := filepath.Join(sd, e.Name())
		var st mountState
		b, err := os.ReadFile(filepath.Join(entry, "state.json"))
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err == nil && st.Dir != "" && processAlive(st.PID, st.StartTime) {
			live[entry] = true
			continue
		}
		if err != nil || st.Dir == "" {
			out = append(out, finding{kind: "stale mount state", what: entry, detail: "no readable state.json"})
			continue
		}
		detail := fmt.Sprintf("server pid %d is gone", st.PID)
		if st.Loop != "" {
			detail += ", loop " + st.Loop
			covered[st.Loop] = true
		}
		if !mountedAt(mi, st.Dir) {
			detail += ", not mounted any more"
		}
		covered[st.FUSEDir] = true
		out = append(out, finding{kind: "stale mount", what: st.Dir, detail: detail + " (state " + entry + ")"})
	}
	// Loop devices over FUSE files under sd without a live server.
	for _, lb := range loopBackings() {
		if !withinDir(lb.backing, sd) || live[entryOf(sd, lb.backing)] || covered[lb.dev] {
			continue
		}
		dev := lb.dev
		users := mountsFrom(mi, dev)
		detail := "backed by " + lb.backing
		if len(users) > 0 {
			detail += ", mounted at " + strings.Join(users, ", ")
		}
		out = append(out, finding{kind: "stale loop", what: dev, detail: detail, fix: func(ctx context.Context) error {
			for _, d := range mountsFrom(readMountInfo(), dev) {
				if err := unix.Unmount(d, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("unmounting %s: %w", d, err)
				}
			}
			return clearLoop(dev)
		}})
	}
	// FUSE mounts under sd without a live server.
	for _, m := range mi {
		if !strings.HasPrefix(m.fsType, "fuse") || !withinDir(m.mountPoint, sd) || live[entryOf(sd, m.mountPoint)] || covered[m.mountPoint] {
			continue
		}
		mp := m.mountPoint
		out = append(out, finding{kind: "stale fuse", what: mp, detail: "FUSE mount without a live server", fix: func(ctx context.Context) error {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmounting %s: %w", mp, err)
			}
			return nil
		}})
	}
	return out
}

// entryOf returns the state entry dir (sd/<hash>) that p lies under.
func entryOf(sd, p string) string {
	rel, err := filepath.Rel(sd, p)
	if err != nil {
		return ""
	}
	first, _, _ := strings.Cut(rel, string(filepath.Separator))
	return filepath.Join(sd, first)
}

func withinDir(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// processAlive reports whether pid runs and (if start is known) is the
// process that started at start (field 22 of /proc/PID/stat).
func processAlive(pid int, start uint64) bool {
	if pid <= 0 || unix.Kill(pid, 0) != nil {
		return false
	}
	if start == 0 {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return true
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return true
	}
	got, err := strconv.ParseUint(f[19], 10, 64)
	return err != nil || got == start
}

// mountInfo is one line of /proc/self/mountinfo.
type mountInfo struct {
	mountPoint, fsType, source string
}

func readMountInfo() []mountInfo {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	return parseMountInfo(string(b))
}

// parseMountInfo parses /proc/PID/mountinfo (proc(5)): field 5 is the
// mount point; after the " - " separator come the type and the source.
func parseMountInfo(s string) []mountInfo {
	var out []mountInfo
	for _, line := range strings.Split(s, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 2 {
			continue
		}
		out = append(out, mountInfo{mountPoint: unescapeOctal(f[4]), fsType: g[0], source: unescapeOctal(g[1])})
	}
	return out
}

// unescapeOctal undoes the kernel's \ooo escaping of spaces, tabs,
// newlines and backslashes in mountinfo.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func mountedAt(mi []mountInfo, dir string) bool {
	for _, m := range mi {
		if m.mountPoint == dir {
			return true
		}
	}
	return false
}

func mountsFrom(mi []mountInfo, dev string) []string {
	var out []string
	for _, m := range mi {
		if m.source == dev {
			out = append(out, m.mountPoint)
		}
	}
	return out
}

type loopBacking struct{ dev, backing string }

// loopBackings lists attached loop devices and their backing files.
func loopBackings() []loopBacking {
	ms, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []loopBacking
	for _, p := range ms {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		name := filepath.Base(filepath.Dir(filepath.Dir(p)))
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		out = append(out, loopBacking{dev: "/dev/" + name, backing: backing})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dev < out[j].dev })
	return out
}

// clearLoop detaches loop device dev (LOOP_CLR_FD).
func clearLoop(dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detaching %s: %w", dev, err)
	}
	return nil
}

// scanSockets reports unix sockets nobody accepts on: the agent's socket
// and any *.sock beside it or in dirs.
func scanSockets(agentSocket string, dirs ...string) []finding {
	cands := map[string]bool{}
	if agentSocket != "" {
		cands[agentSocket] = true
		dirs = append(dirs, filepath.Dir(agentSocket))
	}
	for _, d := range dirs {
		ms, _ := filepath.Glob(filepath.Join(d, "*.sock"))
		for _, m := range ms {
			cands[m] = true
		}
	}
	var paths []string
	for p := range cands {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var out []finding
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&os.ModeSocket == 0 {
			continue
		}
		c, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			c.Close()
			continue
		}
		if !errors.Is(err, unix.ECONNREFUSED) {
			continue // busy, or not ours to judge
		}
		out = append(out, finding{kind: "stale socket", what: p, detail: "nobody accepts on it", fix: func(context.Context) error {
			return os.Remove(p)
		}})
	}
	return out
}

// scanRunDirs reports container dirs of lode run (base/c-*) older than
// minAge whose lower dir has no mount served by a live process.
func scanRunDirs(base string, stateDirs []string, mi []mountInfo, now time.Time, minAge time.Duration) []finding {
	ents, _ := os.ReadDir(base)
	var out []finding
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "c-") || strings.HasSuffix(e.Name(), "-bundle") {
			continue
		}
		dir := filepath.Join(base, e.Name())
		fi, err := e.Info()
		if err != nil || now.Sub(fi.ModTime()) < minAge {
			continue
		}
		if servedMount(filepath.Join(dir, "lower"), stateDirs) {
			continue
		}
		var inside []string
		for _, m := range mi {
			if withinDir(m.mountPoint, dir) {
				inside = append(inside, m.mountPoint)
			}
		}
		detail := "no live lode mount"
		if len(inside) > 0 {
			detail += ", still mounted: " + strings.Join(inside, ", ")
		}
		out = append(out, finding{kind: "stale run dir", what: dir, detail: detail, fix: func(ctx context.Context) error {
			return removeRunDir(dir)
		}})
	}
	return out
}

// servedMount reports whether dir is a lode mount with a live server.
func servedMount(dir string, stateDirs []string) bool {
	for _, sd := range stateDirs {
		ents, _ := os.ReadDir(sd)
		for _, e := range ents {
			var st mountState
			b, err := os.ReadFile(filepath.Join(sd, e.Name(), "state.json"))
			if err != nil || json.Unmarshal(b, &st) != nil {
				continue
			}
			if st.Dir == dir && processAlive(st.PID, st.StartTime) {
				return true
			}
		}
	}
	return false
}

// removeRunDir unmounts what is mounted under dir, deepest first, and
// removes it; it refuses to remove while anything stays mounted (the
// overlay's merged dir would forward deletes).
func removeRunDir(dir string) error {
	var inside []string
	for _, m := range readMountInfo() {
		if withinDir(m.mountPoint, dir) {
			inside = append(inside, m.mountPoint)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(inside)))
	for _, mp := range inside {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmounting %s: %w", mp, err)
		}
	}
	for _, m := range readMountInfo() {
		if withinDir(m.mountPoint, dir) {
			return fmt.Errorf("%s is still mounted", m.mountPoint)
		}
	}
	return os.RemoveAll(dir)
}

// scanCacheTemps reports the disk cache's temporary files (a write cut off
// by a crash) older than minAge.
func scanCacheTemps(dir string, now time.Time, minAge time.Duration) []finding {
	ms, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	var out []finding
	for _, p := range ms {
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() || now.Sub(fi.ModTime()) < minAge {
			continue
		}
		out = append(out, finding{kind: "cache temp", what: p, detail: fmt.Sprintf("%d bytes, from %s", fi.Size(), fi.ModTime().Format(time.RFC3339)),
			fix: func(context.Context) error { return os.Remove(p) }})
	}
	return out
}
