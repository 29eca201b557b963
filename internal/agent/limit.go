package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// Admission control and origin protection (issue #12): decorators that bound
// what one worker asks of a tier, and a gate on image starts. They are
// composed in cmd/lode's wiring like any other Tier.

// ErrTooManyStarts is returned by Admission.Acquire when the worker already
// has its limit of starts in flight and none finished within the wait.
var ErrTooManyStarts = errors.New("too many starts in flight")

// ErrThrottled is returned by a RateLimit tier whose wait for a token would
// outlast the caller's deadline.
var ErrThrottled = errors.New("tier request rate limit")

// limited bounds the concurrent Fetch calls on a tier.
type limited struct {
	Tier
	sem chan struct{}
}

// Limit returns t with at most n Fetch calls in flight; further calls wait
// for a slot (honouring ctx). Fill is not limited: write-backs are already
// bounded by the agent. n <= 0 returns t unchanged.
func Limit(t Tier, n int) Tier {
	if n <= 0 {
		return t
	}
	return &limited{Tier: t, sem: make(chan struct{}, n)}
}

// Unwrap returns the limited tier (Wrapper).
func (l *limited) Unwrap() Tier { return l.Tier }

func (l *limited) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a %s fetch slot for chunk %s: %w", l.Tier.Name(), n, context.Cause(ctx))
	}
	defer func() { <-l.sem }()
	return l.Tier.Fetch(ctx, n, dst)
}

// rateLimited spaces Fetch calls on a tier by a token bucket.
type rateLimited struct {
	Tier
	lim *rate.Limiter
}

// RateLimit returns t with Fetch calls limited to perSecond on average and
// burst at once (a token bucket, golang.org/x/time/rate). A call that would
// have to wait past its context's deadline fails at once with ErrThrottled
// rather than sleeping into the deadline. perSecond <= 0 returns t unchanged.
func RateLimit(t Tier, perSecond float64, burst int) Tier {
	if perSecond <= 0 {
		return t
	}
	return &rateLimited{Tier: t, lim: rate.NewLimiter(rate.Limit(perSecond), max(1, burst))}
}

// Unwrap returns the rate-limited tier (Wrapper).
func (r *rateLimited) Unwrap() Tier { return r.Tier }

func (r *rateLimited) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	if err := r.lim.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for the %s rate limit for chunk %s: %w", r.Tier.Name(), n, context.Cause(ctx))
		}
		return nil, fmt.Errorf("fetching chunk %s from %s: %w: %w", n, r.Tier.Name(), ErrThrottled, err)
	}
	return r.Tier.Fetch(ctx, n, dst)
}

// Admission bounds the image starts a worker has in flight. A start holds a
// slot from Acquire until the release function is called: when the start
// failed, or, once its image is set up, at the end of its first reads
// (StartGate.Hold: the container's first exec where the caller sees it, else
// the reads going quiet, at most a window). Reads of
// running containers never pass through it; and the reads of a starting
// image (Image.SetStarting) take at most three quarters of the agent's fetch
// slots, so running containers keep priority over new starts.
type Admission struct {
	slots chan struct{}
	wait  time.Duration
	m     *Metrics
}

// NewAdmission allows max starts in flight; a start past it waits up to wait
// for a slot, then fails with ErrTooManyStarts. max <= 0 admits everything.
func NewAdmission(max int, wait time.Duration, m *Metrics) *Admission {
	a := &Admission{wait: wait, m: m}
	if max > 0 {
		a.slots = make(chan struct{}, max)
	}
	return a
}

// Acquire takes a start slot for image, waiting up to the admission's wait
// (or ctx). The returned release must be called exactly once.
func (a *Admission) Acquire(ctx context.Context, image string) (release func(), err error) {
	if a == nil || a.slots == nil {
		return func() {}, nil
	}
	select {
	case a.slots <- struct{}{}:
	default:
		t := time.NewTimer(a.wait)
		defer t.Stop()
		select {
		case a.slots <- struct{}{}:
		case <-t.C:
			a.rejected()
			return nil, fmt.Errorf("starting %s: %w (%d starts, waited %v)", image, ErrTooManyStarts, cap(a.slots), a.wait)
		case <-ctx.Done():
			return nil, fmt.Errorf("starting %s: waiting for a start slot: %w", image, context.Cause(ctx))
		}
	}
	a.inFlight(1)
	var once bool
	return func() {
		if once {
			return
		}
		once = true
		a.inFlight(-1)
		<-a.slots
	}, nil
}

// StartGate is how long a start keeps its admission slot after its image is
// mounted or exported: through its first reads, which are what a storm of
// starts costs the tiers. Hold releases the slot at the first of: the
// container's first exec (execd closed, where the caller sees it, as lode
// run does), the image having been read since Hold and then no read having
// been in progress for Quiet, Window after Hold, or the image being closed.
type StartGate struct {
	Window time.Duration // 0: DefaultStartWindow
	Quiet  time.Duration // 0: DefaultStartQuiet
}

// Defaults of StartGate: a start's reads are over after 250 ms without one
// (runc starts a container in 20–60 ms, so a start's reads come in one burst;
// a quiet period of a second held each slot long after a warm start's 20 ms
// of reads, and capped one worker at --max-starts starts a second), and a
// slot is held at most 10 s (lode agent's --start-window).
const (
	DefaultStartWindow = 10 * time.Second
	DefaultStartQuiet  = 250 * time.Millisecond
)

// Hold calls release (from Acquire) at the end of im's first reads, as
// StartGate says, from a goroutine of its own. execd may be nil.
func (g StartGate) Hold(release func(), im *Image, execd <-chan struct{}) {
	if g.Window <= 0 {
		g.Window = DefaultStartWindow
	}
	if g.Quiet <= 0 {
		g.Quiet = DefaultStartQuiet
	}
	seq0 := im.demandSeq.Load()
	go func() {
		defer release()
		window := time.NewTimer(g.Window)
		defer window.Stop()
		tick := time.NewTicker(max(g.Quiet/5, 10*time.Millisecond))
		defer tick.Stop()
		last, changed := seq0, time.Now()
		for {
			select {
			case <-execd:
				return
			case <-window.C:
				return
			case <-im.ctx.Done(): // the image was closed
				return
			case now := <-tick.C:
				seq := im.demandSeq.Load()
				if seq != last {
					last, changed = seq, now
					continue
				}
				if seq != seq0 && im.demandActive.Load() == 0 && now.Sub(changed) >= g.Quiet {
					return
				}
			}
		}
	}()
}

// InFlight is the number of starts holding a slot.
func (a *Admission) InFlight() int {
	if a == nil || a.slots == nil {
		return 0
	}
	return len(a.slots)
}

func (a *Admission) rejected() {
	if a.m != nil {
		inc(a.m.startsRejected)
	}
}

func (a *Admission) inFlight(d float64) {
	if a.m != nil && a.m.startsInFlight != nil {
		a.m.startsInFlight.Add(d)
	}
}

// retrying retries a tier's failed fetches.
type retrying struct {
	Tier
	attempts int
	backoff  time.Duration
}

// Retry returns t with Fetch tried up to attempts times in all when it fails
// with a transient error: anything but a miss (store.ErrNotFound), a corrupt
// chunk (chunk.ErrCorrupt, which the next tier should serve instead), a
// throttled request, or the caller's context ending. Waits grow from backoff,
// doubling, with full jitter. attempts <= 1 returns t unchanged.
func Retry(t Tier, attempts int, backoff time.Duration) Tier {
	if attempts <= 1 {
		return t
	}
	return &retrying{Tier: t, attempts: attempts, backoff: backoff}
}

// Unwrap returns the retried tier: a retry passes its bytes through.
func (r *retrying) Unwrap() Tier { return r.Tier }

func (r *retrying) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	var err error
	for i := 0; i < r.attempts; i++ {
		if i > 0 {
			d := r.backoff << (i - 1)
			if d > 0 {
				d = time.Duration(rand.Int64N(int64(d))) + 1
			}
			if serr := sleep(ctx, d); serr != nil {
				return nil, fmt.Errorf("retrying chunk %s from %s: %w (last error: %w)", n, r.Tier.Name(), serr, err)
			}
		}
		var b []byte
		b, err = r.Tier.Fetch(ctx, n, dst)
		if err == nil || !transient(ctx, err) {
			return b, err
		}
	}
	return nil, err
}

func transient(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, chunk.ErrCorrupt) &&
		!errors.Is(err, ErrThrottled) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

type noFill struct{ Tier }

// NoFill returns t without write-backs: its Fill keeps nothing, its Fetch
// serves what it already holds. The worker wraps the disk cache in it when
// the origin is itself a directory on this machine's disk (store/file): a
// second copy there buys no latency, and writing it competes with the
// start's reads for the same disk and CPU.
func NoFill(t Tier) Tier { return noFill{t} }

// Unwrap returns the wrapped tier (Wrapper).
func (n noFill) Unwrap() Tier { return n.Tier }

// Fill implements Tier: it keeps nothing.
func (noFill) Fill(context.Context, chunk.Name, []byte) error { return nil }
