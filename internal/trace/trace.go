package trace

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Kinds of Event.
const (
	KindFetch = "fetch" // one chunk fetch through the tiers
	KindRead  = "read"  // one read of the image's bytes (a FUSE/loop/NBD request)
	KindMark  = "mark"  // a phase of the start: mounted, exec, exit
)

// Reasons a fetch was asked for (Event.Why).
const (
	WhyRead      = "read"      // a read missed the caches and waits for it
	WhyReadAhead = "readahead" // sequential read-ahead, after read Event.Read
	WhyPrefetch  = "prefetch"  // the start set or a profile (manifest.Hints), entry Event.Hint
	WhyFill      = "fill"      // the background fill
)

// Event is one line of a trace. Times are microseconds since the trace
// began.
type Event struct {
	Kind  string `json:"kind"`
	ID    uint64 `json:"id,omitempty"`
	Image string `json:"image,omitempty"`
	Name  string `json:"name,omitempty"` // a mark's name

	// Fetches.
	Chunk int    `json:"chunk"` // a read's: its first
	Why   string `json:"why,omitempty"`
	Read  uint64 `json:"read,omitempty"` // the read that asked (why=read) or triggered it (readahead)
	Hint  int    `json:"hint,omitempty"` // index in the prefetch list (why=prefetch)
	Tier  string `json:"tier,omitempty"` // the tier that served it; empty when it failed
	Bytes int    `json:"bytes,omitempty"`
	Err   string `json:"err,omitempty"`

	// Reads: offset and length; for a read the chunks it spans.
	Off   int64 `json:"off,omitempty"`
	Len   int64 `json:"len,omitempty"`
	First int   `json:"first,omitempty"`
	Last  int   `json:"last,omitempty"`

	Asked   int64 `json:"asked_us"`             // fetch asked for; read begun; mark's time
	Started int64 `json:"started_us,omitempty"` // fetch got its slot
	Done    int64 `json:"done_us,omitempty"`    // fetch completed; read returned

	// Waited: for a fetch, the reads that blocked on it; for a read, the
	// fetches it blocked on.
	Waited []uint64 `json:"waited,omitempty"`
}

// Cause is why a fetch is being asked for, as the agent passes it along.
type Cause struct {
	Chunk int
	Why   string
	Read  uint64
	Hint  int
}

// Recorder writes a trace. A nil *Recorder records nothing, so callers
// need not check. It is safe for concurrent use.
type Recorder struct {
	t0     time.Time
	ids    atomic.Uint64
	mu     sync.Mutex
	w      *bufio.Writer
	closer io.Closer
	err    error
}

// New returns a Recorder writing JSON lines to w from now on.
func New(w io.Writer) *Recorder {
	return &Recorder{t0: time.Now(), w: bufio.NewWriter(w)}
}

// Create returns a Recorder writing to the file at path (created or
// truncated); Close closes it.
func Create(path string) (*Recorder, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("creating fetch trace: %w", err)
	}
	r := New(f)
	r.closer = f
	return r, nil
}

// Now is the time since the trace began, in microseconds.
func (r *Recorder) Now() int64 {
	if r == nil {
		return 0
	}
	return time.Since(r.t0).Microseconds()
}

// NextID returns a new event id (ids start at 1; 0 means none).
func (r *Recorder) NextID() uint64 {
	if r == nil {
		return 0
	}
	return r.ids.Add(1)
}

// Emit writes e as one line.
func (r *Recorder) Emit(e Event) {
	if r == nil {
		return
	}
	b, err := json.Marshal(e)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		b = append(b, '\n')
		_, err = r.w.Write(b)
	}
	if err != nil && r.err == nil {
		r.err = err
	}
}

// Mark records a phase of the start (mounted, exec, exit) at this moment.
func (r *Recorder) Mark(name string) {
	if r == nil {
		return
	}
	r.Emit(Event{Kind: KindMark, Name: name, Asked: r.Now()})
}

// Flush writes out buffered events.
func (r *Recorder) Flush() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.w.Flush(); err != nil && r.err == nil {
		r.err = err
	}
	return r.err
}

// Close flushes the trace and closes its file (Create's).
func (r *Recorder) Close() error {
	if r == nil {
		return nil
	}
	err := r.Flush()
	if r.closer != nil {
		if cerr := r.closer.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("writing fetch trace: %w", err)
	}
	return nil
}

// Parse reads a trace's events. Lines that are not events fail it.
func Parse(rd io.Reader) ([]Event, error) {
	var out []Event
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("trace line %d: %w", n, err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading trace: %w", err)
	}
	return out, nil
}
