package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// RootWatch raises the garbage collector's alarm on reads of an image
// whose root is expired (docs/gc.md, "Alarms"): every chunk read of the
// image while its root is expired or being deleted is counted
// (lode_agent_expired_root_reads_total), and at most once per AlarmEvery
// per image a warning names the tenant, the image, the chunk (name and
// index) and the root, and store.RaiseAlarm writes roots/<root>/ALARM, which
// stops the root's deletion. Every serving mode installs one on each image
// it opens (Open, the daemon's mounts and exports) as the image's read hook.
//
// The root's state is read when the watch is made and re-read at most once
// per StateTTL, in the background, so a read never waits for the store;
// warnings and alarm writes happen in the background too.
type RootWatch struct {
	st           store.Store
	tenant, name string
	m            *manifest.Manifest
	log          *slog.Logger
	reads        prometheus.Counter // nil: not counted
	ttl, every   time.Duration
	now          func() time.Time

	mu        sync.Mutex
	root      store.RootID
	state     store.RootState
	checked   time.Time
	checking  bool
	lastAlarm time.Time
	quiet     int64 // chunk reads from the expired root since the last warning
	closed    bool
	wg        sync.WaitGroup
}

// Defaults of a RootWatch: the root's state is re-read at most once a
// minute (it only moves forward, and the collector's grace is hours), and
// each image warns and rewrites the alarm at most once a minute.
const (
	StateTTL   = time.Minute
	AlarmEvery = time.Minute
)

// rootRead is the answer of a read of a root's state.
type rootRead struct {
	ri  store.RootInfo
	err error
}

// readRootAsync starts reading root's state and returns where the answer
// comes. Open starts it as soon as the pointer names the root, so the read
// runs alongside the manifest's instead of after it: one round trip fewer
// in series before a start (docs/coldstart.md, "Requests before the mount").
func readRootAsync(ctx context.Context, st store.Store, root store.RootID) <-chan rootRead {
	ch := make(chan rootRead, 1)
	go func() {
		ri, err := store.ReadRoot(ctx, st, root)
		ch <- rootRead{ri, err}
	}()
	return ch
}

// newRootWatch returns a watch of tenant/name's reads (m is its manifest)
// from r, root's state as readRootAsync read it (started as soon as the
// pointer named the root). reads, if not nil, counts chunk reads from an
// expired root. A failure to read the state is logged, not returned: it
// must not stop a mount; the state is read again on a later read.
func newRootWatch(st store.Store, tenant, name string, m *manifest.Manifest, root store.RootID, log *slog.Logger, reads prometheus.Counter, r rootRead) *RootWatch {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &RootWatch{st: st, tenant: tenant, name: name, m: m, log: log, reads: reads,
		ttl: StateTTL, every: AlarmEvery, now: time.Now, root: root}
	w.applyState(root, r.ri, r.err)
	return w
}

// Attach installs w as im's read hook.
func (w *RootWatch) Attach(im *agent.Image) { im.SetReadHook(w.OnRead) }

// SetRoot makes root the one the image reads from (the daemon follows a
// pointer the collector moved) and reads its state in the background.
func (w *RootWatch) SetRoot(root store.RootID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if root == w.root || w.closed {
		return
	}
	w.root, w.state, w.checked = root, "", time.Time{}
	w.refreshLocked()
}

func (w *RootWatch) readState(ctx context.Context, root store.RootID) {
	ri, err := store.ReadRoot(ctx, w.st, root)
	w.applyState(root, ri, err)
}

// applyState records root's state as read (ri, or the read's error).
func (w *RootWatch) applyState(root store.RootID, ri store.RootInfo, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.checking = false
	if root != w.root {
		return
	}
	w.checked = w.now()
	if err != nil {
		w.log.Warn("reading the state of the image's root", slog.String("tenant", w.tenant), slog.String("image", w.name),
			slog.String("root", string(root)), slog.Any("err", err))
		return
	}
	w.state = ri.State
}

// refreshLocked starts a background re-read of the state when it is older
// than the TTL.
func (w *RootWatch) refreshLocked() {
	if w.checking || w.closed || w.now().Sub(w.checked) < w.ttl {
		return
	}
	w.checking = true
	root := w.root
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		w.readState(ctx, root)
	}()
}

// OnRead is the image's read hook: chunks first..last were read.
func (w *RootWatch) OnRead(first, last int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.refreshLocked()
	if !w.state.Alarming() {
		return
	}
	idx, n := -1, int64(0)
	for i := first; i <= last && i < len(w.m.Names); i++ {
		if w.m.Names[i].IsZero() { // a hole: nothing is read from the root
			continue
		}
		if idx < 0 {
			idx = i
		}
		n++
	}
	if n == 0 {
		return
	}
	if w.reads != nil {
		w.reads.Add(float64(n))
	}
	now := w.now()
	if !w.lastAlarm.IsZero() && now.Sub(w.lastAlarm) < w.every || w.closed {
		w.quiet += n
		return
	}
	w.lastAlarm = now
	quiet := w.quiet
	w.quiet = 0
	root, state, chunkName := w.root, w.state, w.m.Names[idx].String()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.log.Warn("read of a chunk from an expired root; raising the GC alarm",
			slog.String("tenant", w.tenant), slog.String("image", w.name), slog.String("chunk", chunkName),
			slog.Int("index", idx), slog.String("root", string(root)), slog.String("state", string(state)),
			slog.Int64("reads_since_last_warning", quiet))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := store.RaiseAlarm(ctx, w.st, root, w.tenant+"/"+w.name, chunkName); err != nil {
			w.log.Error("raising the GC alarm", slog.String("tenant", w.tenant), slog.String("image", w.name),
				slog.String("root", string(root)), slog.Any("err", err))
		}
	}()
}

// Close waits for the watch's background work; later reads are counted
// but start none.
func (w *RootWatch) Close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.wg.Wait()
}

// NewExpiredReadsCounter returns the counter RootWatch counts into:
// lode_agent_expired_root_reads_total.
func NewExpiredReadsCounter() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "lode_agent_expired_root_reads_total",
		Help: "Chunk reads of images whose root is expired or being deleted; each image warns and raises the root's GC alarm at most once a minute.",
	})
}
