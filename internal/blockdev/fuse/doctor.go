package fuse

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Leftover is something a crashed lode process left behind, as lode doctor
// reports it: this package finds what its mounts leave (Leftovers); other
// packages report theirs (the worker's sockets and run dirs, the disk
// cache's temporary files) in the same form.
type Leftover struct {
	Kind   string // "stale mount", "stale loop", …
	What   string // the path or device
	Detail string
	// Fix cleans it; nil for stale mounts and unreadable mount state,
	// which Recover of their state dir cleans together.
	Fix func(ctx context.Context) error
}

func (l Leftover) String() string {
	if l.Detail == "" {
		return l.Kind + " " + l.What
	}
	return l.Kind + " " + l.What + ": " + l.Detail
}

// Leftovers lists what dead servers left under stateDir: mount entries
// whose server is gone ("stale mount", "stale mount state"), and loop
// devices ("stale loop") and FUSE mounts ("stale fuse") under stateDir that
// no live entry accounts for. Mounts with a live server are never listed.
func Leftovers(stateDir string) []Leftover {
	sd, _ := filepath.Abs(stateDir)
	mi, _ := mounts()
	var out []Leftover
	live := map[string]bool{} // entry dirs with a live server
	covered := map[string]bool{}
	ents, _ := os.ReadDir(sd)
	for _, e := range ents {
		entry := filepath.Join(sd, e.Name())
		st, err := readState(entry)
		if err == nil && alive(st.PID, st.StartTime) {
			live[entry] = true
			continue
		}
		if err != nil {
			out = append(out, Leftover{Kind: "stale mount state", What: entry, Detail: "no readable state.json"})
			continue
		}
		detail := fmt.Sprintf("server pid %d is gone", st.PID)
		if st.Loop != "" {
			detail += ", loop " + st.Loop
			covered[st.Loop] = true
		}
		if !mountedIn(mi, st.Dir) {
			detail += ", not mounted any more"
		}
		covered[st.FUSEDir] = true
		out = append(out, Leftover{Kind: "stale mount", What: st.Dir, Detail: detail + " (state " + entry + ")"})
	}
	for _, l := range boundLoops() {
		if !within(l.backing, sd) || live[entryOf(sd, l.backing)] || covered[l.dev] {
			continue
		}
		dev := l.dev
		detail := "backed by " + l.backing
		if users := sourcedFrom(mi, dev); len(users) > 0 {
			detail += ", mounted at " + strings.Join(users, ", ")
		}
		out = append(out, Leftover{Kind: "stale loop", What: dev, Detail: detail, Fix: func(ctx context.Context) error {
			for _, d := range mountsOf(dev) {
				if err := unix.Unmount(d, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("unmounting %s: %w", d, err)
				}
			}
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			return detachLoop(dctx, dev)
		}})
	}
	for _, m := range mi {
		if !strings.HasPrefix(m.FSType, "fuse") || !within(m.MountPoint, sd) || live[entryOf(sd, m.MountPoint)] || covered[m.MountPoint] {
			continue
		}
		mp := m.MountPoint
		out = append(out, Leftover{Kind: "stale fuse", What: mp, Detail: "FUSE mount without a live server", Fix: func(ctx context.Context) error {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmounting %s: %w", mp, err)
			}
			return nil
		}})
	}
	return out
}

// Served reports whether dir is a lode mount, recorded in one of stateDirs,
// whose server is alive.
func Served(dir string, stateDirs []string) bool {
	for _, sd := range stateDirs {
		ents, _ := os.ReadDir(sd)
		for _, e := range ents {
			st, err := readState(filepath.Join(sd, e.Name()))
			if err == nil && st.Dir == dir && alive(st.PID, st.StartTime) {
				return true
			}
		}
	}
	return false
}

// MountsWithin lists the mount points at or under dir.
func MountsWithin(dir string) []string {
	mi, _ := mounts()
	var out []string
	for _, m := range mi {
		if within(m.MountPoint, dir) {
			out = append(out, m.MountPoint)
		}
	}
	return out
}

// UnmountWithin detaches every mount at or under dir, deepest first, and
// fails if any stays mounted.
func UnmountWithin(dir string) error {
	inside := MountsWithin(dir)
	sort.Sort(sort.Reverse(sort.StringSlice(inside)))
	for _, mp := range inside {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmounting %s: %w", mp, err)
		}
	}
	if left := MountsWithin(dir); len(left) > 0 {
		return fmt.Errorf("%s is still mounted", left[0])
	}
	return nil
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

func mountedIn(mi []mountEntry, dir string) bool {
	for _, m := range mi {
		if m.MountPoint == dir {
			return true
		}
	}
	return false
}

func sourcedFrom(mi []mountEntry, dev string) []string {
	var out []string
	for _, m := range mi {
		if m.Source == dev {
			out = append(out, m.MountPoint)
		}
	}
	return out
}
