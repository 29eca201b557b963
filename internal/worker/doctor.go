package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/blockdev/fuse"
)

// DoctorOptions configure Doctor: lode doctor's flags.
type DoctorOptions struct {
	Fix       bool
	StateDirs []string // mount state dirs (fuse)
	Socket    string   // the daemon's control socket; *.sock beside it are checked too
	RunDir    string   // where Run makes container dirs ($LODE_HOME/run); its *.sock too
	CacheDir  string   // the disk cache
	// MinAge: run dirs and cache temporary files younger than this may be in
	// use and are not reported.
	MinAge time.Duration
}

// ErrProblems means Doctor found problems (without Fix) or could not fix
// them all.
var ErrProblems = errors.New("problems found")

// Doctor finds what crashed lode processes left behind (issue #9) and, with
// Fix, cleans it, reporting one line per finding to out. Each scanner lives
// beside the code that creates what it scans: fuse.Leftovers (mounts, loop
// devices, FUSE mounts), agent.StaleTemps (the disk cache), and here the
// daemon's and exports' sockets and Run's container dirs. It returns
// ErrProblems when something is left to fix.
func Doctor(ctx context.Context, o DoctorOptions, out io.Writer) error {
	found := doctorScan(o, time.Now())
	for _, f := range found {
		fmt.Fprintln(out, f)
	}
	if len(found) == 0 {
		fmt.Fprintln(out, "no problems found")
		return nil
	}
	if !o.Fix {
		fmt.Fprintf(out, "%d problem(s) found; run lode doctor --fix to clean them\n", len(found))
		return ErrProblems
	}
	var errs []error
	for _, dir := range o.StateDirs {
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
		if f.Fix == nil {
			continue
		}
		if err := f.Fix(ctx); err != nil {
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
		return ErrProblems
	}
	fmt.Fprintf(out, "fixed %d problem(s)\n", len(found))
	return nil
}

// doctorScan lists every problem, mounts first.
func doctorScan(o DoctorOptions, now time.Time) []fuse.Leftover {
	var out []fuse.Leftover
	for _, sd := range o.StateDirs {
		out = append(out, fuse.Leftovers(sd)...)
	}
	out = append(out, scanSockets(o.Socket, o.RunDir)...)
	out = append(out, scanRunDirs(o.RunDir, o.StateDirs, now, o.MinAge)...)
	for _, tf := range agent.StaleTemps(o.CacheDir, now, o.MinAge) {
		out = append(out, fuse.Leftover{Kind: "cache temp", What: tf.Path, Detail: fmt.Sprintf("%d bytes, from %s", tf.Size, tf.ModTime.Format(time.RFC3339)),
			Fix: func(context.Context) error { return os.Remove(tf.Path) }})
	}
	return out
}

// scanSockets reports unix sockets nobody accepts on: the daemon's socket
// and any *.sock beside it or in dirs (NBD exports).
func scanSockets(agentSocket string, dirs ...string) []fuse.Leftover {
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
	var out []fuse.Leftover
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
		out = append(out, fuse.Leftover{Kind: "stale socket", What: p, Detail: "nobody accepts on it", Fix: func(context.Context) error {
			return os.Remove(p)
		}})
	}
	return out
}

// scanRunDirs reports Run's container dirs (base/c-*) older than minAge
// whose lower dir has no mount served by a live process.
func scanRunDirs(base string, stateDirs []string, now time.Time, minAge time.Duration) []fuse.Leftover {
	ents, _ := os.ReadDir(base)
	var out []fuse.Leftover
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "c-") || strings.HasSuffix(e.Name(), "-bundle") {
			continue
		}
		dir := filepath.Join(base, e.Name())
		fi, err := e.Info()
		if err != nil || now.Sub(fi.ModTime()) < minAge {
			continue
		}
		if fuse.Served(filepath.Join(dir, "lower"), stateDirs) {
			continue
		}
		detail := "no live lode mount"
		if inside := fuse.MountsWithin(dir); len(inside) > 0 {
			detail += ", still mounted: " + strings.Join(inside, ", ")
		}
		out = append(out, fuse.Leftover{Kind: "stale run dir", What: dir, Detail: detail, Fix: func(ctx context.Context) error {
			// Unmount first: the overlay's merged dir would forward deletes.
			if err := fuse.UnmountWithin(dir); err != nil {
				return err
			}
			return os.RemoveAll(dir)
		}})
	}
	return out
}
