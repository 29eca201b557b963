package gc

import (
	"fmt"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/lode-dev/lode/internal/store"
)

// Stats counts what a step copied and freed (in a dry run: would copy and
// free).
type Stats struct {
	ImagesCopied    int   // images repointed into the active root
	ObjectsCopied   int   // chunks and manifests written into the active root
	BytesCopied     int64 // their bytes
	ObjectsFreed    int   // objects deleted with their roots (STATE objects not counted)
	BytesFreed      int64 // their bytes
	PointersRemoved int   // pointers of deleted images removed with their root
}

// RootReport is one root as a pass left it.
type RootReport struct {
	ID         store.RootID
	State      store.RootState
	Since      time.Time
	LiveImages int   // live images whose pointer names this root
	Objects    int   // objects under roots/<root>/
	Bytes      int64 // their bytes
	Alarm      bool  // roots/<root>/ALARM exists
}

// Report describes one pass, or one step.
type Report struct {
	DryRun   bool
	Started  time.Time
	Duration time.Duration
	Stats
	Rotated       store.RootID   // the active root a rotation created, if any
	Expired       []store.RootID // roots moved retired → expired
	Deleted       []store.RootID // roots deleted whole
	Blocked       []store.Alarm  // expired roots past grace kept because of an alarm
	Roots         []RootReport   // every root after the pass, oldest first
	LiveImages    int
	DeletedImages int      // pointers still marked deleted
	Actions       []string // what was done or, in a dry run, would be done
}

// String renders the report for a terminal.
func (r Report) String() string {
	var b strings.Builder
	mode := ""
	if r.DryRun {
		mode = " (dry run: nothing was changed)"
	}
	fmt.Fprintf(&b, "gc pass at %s in %v%s\n", r.Started.UTC().Format(time.RFC3339), r.Duration.Round(time.Millisecond), mode)
	fmt.Fprintf(&b, "roots:\n")
	if len(r.Roots) == 0 {
		fmt.Fprintf(&b, "  (none)\n")
	}
	for _, rr := range r.Roots {
		alarm := ""
		if rr.Alarm {
			alarm = "  ALARM"
		}
		fmt.Fprintf(&b, "  %-10s %-9s since %s  live images %d  objects %d  %s%s\n",
			rr.ID, rr.State, rr.Since.UTC().Format(time.RFC3339), rr.LiveImages, rr.Objects, humanize.IBytes(uint64(rr.Bytes)), alarm)
	}
	fmt.Fprintf(&b, "live images: %d (deleted, awaiting collection: %d)\n", r.LiveImages, r.DeletedImages)
	verb := func(done, would string) string {
		if r.DryRun {
			return would
		}
		return done
	}
	fmt.Fprintf(&b, "%s: %d images, %d objects, %s\n", verb("copied forward", "would copy forward"), r.ImagesCopied, r.ObjectsCopied, humanize.IBytes(uint64(r.BytesCopied)))
	fmt.Fprintf(&b, "%s: %d roots, %d objects, %s (%d deleted-image pointers removed)\n", verb("freed", "would free"), len(r.Deleted), r.ObjectsFreed, humanize.IBytes(uint64(r.BytesFreed)), r.PointersRemoved)
	for _, a := range r.Blocked {
		fmt.Fprintf(&b, "blocked: root %s has an alarm (image %s, chunk %q, %s): run `lode gc clear-alarm %s` once checked\n", a.Root, a.Image, a.Chunk, a.Time.UTC().Format(time.RFC3339), a.Root)
	}
	if len(r.Actions) > 0 {
		fmt.Fprintf(&b, "actions:\n")
		for _, a := range r.Actions {
			fmt.Fprintf(&b, "  - %s\n", a)
		}
	}
	return b.String()
}
