package trace

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"sort"
	"text/tabwriter"
	"time"
)

// Analysis is what a trace shows about a start.
type Analysis struct {
	// Until is the mark the analysis stops at ("" when the trace has none
	// of the names asked for: every fetch counts); UntilUS its time.
	Until   string
	UntilUS int64
	// Fetches are the fetches asked for before Until, in the order asked.
	Fetches []Event
	// ByWhy and ByTier count Fetches by reason and by serving tier.
	ByWhy, ByTier map[string]int
	// Blocking counts Fetches that at least one read waited on.
	Blocking int
	// Chain is the serial chain: the longest sequence of Fetches each asked
	// for no earlier than the previous one completed. Its length is the
	// number of round trips the start paid one after another.
	Chain []Event
	// Reads counts reads begun before Until; ReadsWaited those that waited
	// for a fetch.
	Reads, ReadsWaited int
}

// Analyze finds the serial chain of the fetches asked for before the first
// mark named in until (e.g. "exit": the output; none given or none found:
// the whole trace).
func Analyze(events []Event, until ...string) Analysis {
	a := Analysis{ByWhy: map[string]int{}, ByTier: map[string]int{}, UntilUS: -1}
	for _, name := range until {
		for _, e := range events {
			if e.Kind == KindMark && e.Name == name {
				a.Until, a.UntilUS = name, e.Asked
				break
			}
		}
		if a.Until != "" {
			break
		}
	}
	before := func(t int64) bool { return a.UntilUS < 0 || t <= a.UntilUS }
	for _, e := range events {
		switch {
		case e.Kind == KindFetch && before(e.Asked):
			a.Fetches = append(a.Fetches, e)
			a.ByWhy[e.Why]++
			tier := e.Tier
			if tier == "" {
				tier = "failed"
			}
			a.ByTier[tier]++
			if len(e.Waited) > 0 {
				a.Blocking++
			}
		case e.Kind == KindRead && before(e.Asked):
			a.Reads++
			if len(e.Waited) > 0 {
				a.ReadsWaited++
			}
		}
	}
	slices.SortStableFunc(a.Fetches, func(x, y Event) int { return cmp.Compare(x.Asked, y.Asked) })
	a.Chain = SerialChain(a.Fetches)
	return a
}

// SerialChain returns the longest sequence of fetches in which each was
// asked for no earlier than the previous one was done, in order (the same
// count a proxy makes of requests each starting after the previous ended).
// A fetch never done (Done before Asked) ends no link.
func SerialChain(fetches []Event) []Event {
	type point struct {
		t    int64
		done bool
		i    int
	}
	pts := make([]point, 0, 2*len(fetches))
	for i, f := range fetches {
		pts = append(pts, point{f.Asked, false, i})
		if f.Done >= f.Asked {
			// A fetch of no measurable duration still ends after it began.
			pts = append(pts, point{max(f.Done, f.Asked+1), true, i})
		}
	}
	// In time order; at one instant, fetches done before fetches asked, so
	// a fetch asked the moment another completed follows it.
	sort.SliceStable(pts, func(x, y int) bool {
		if pts[x].t != pts[y].t {
			return pts[x].t < pts[y].t
		}
		return pts[x].done && !pts[y].done
	})
	length := make([]int, len(fetches))
	prev := make([]int, len(fetches))
	best, bestAt := 0, -1 // longest chain among fetches done so far
	for _, p := range pts {
		if !p.done {
			length[p.i], prev[p.i] = best+1, bestAt
			continue
		}
		if length[p.i] > best {
			best, bestAt = length[p.i], p.i
		}
	}
	end := -1
	for i := range fetches {
		if end < 0 || length[i] > length[end] {
			end = i
		}
	}
	var chain []Event
	for i := end; i >= 0; i = prev[i] {
		chain = append(chain, fetches[i])
	}
	slices.Reverse(chain)
	return chain
}

// WriteReport prints a's counts and its serial chain, one link a line:
// what each fetch was for, when it was asked, how long it took, and the gap
// since the previous link completed (time spent reading and thinking
// between round trips).
func WriteReport(w io.Writer, a Analysis) error {
	until := "the end of the trace"
	if a.Until != "" {
		until = fmt.Sprintf("%q at %v", a.Until, us(a.UntilUS))
	}
	fmt.Fprintf(w, "until %s: %d fetches (%s), %d that reads waited on; %d reads, %d of them waited\n",
		until, len(a.Fetches), counts(a.ByWhy), a.Blocking, a.Reads, a.ReadsWaited)
	fmt.Fprintf(w, "served by: %s\n", counts(a.ByTier))
	fmt.Fprintf(w, "serial chain: %d fetches one after another\n", len(a.Chain))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "#\tid\tchunk\twhy\tread off\tlen\tasked\ttook\tgap\ttier\twaited by\t")
	var last int64
	for k, f := range a.Chain {
		off, ln := "", ""
		if f.Why == WhyRead || f.Len > 0 {
			off, ln = fmt.Sprint(f.Off), fmt.Sprint(f.Len)
		}
		why := f.Why
		switch {
		case f.Why == WhyReadAhead && f.Read != 0:
			why += fmt.Sprintf("(r%d)", f.Read)
		case f.Why == WhyPrefetch:
			why += fmt.Sprintf("(#%d)", f.Hint)
		}
		gap := ""
		if k > 0 {
			gap = us(f.Asked - last).String()
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%s\t%v\t%v\t%s\t%s\t%d\t\n", k+1, f.ID, f.Chunk, why, off, ln,
			us(f.Asked), us(f.Done-f.Asked), gap, f.Tier, len(f.Waited))
		last = f.Done
	}
	return tw.Flush()
}

func us(n int64) time.Duration {
	return (time.Duration(n) * time.Microsecond).Round(10 * time.Microsecond)
}

func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %d", k, m[k])
	}
	if s == "" {
		return "none"
	}
	return s
}
