package gc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/profile"
	"github.com/lode-dev/lode/internal/store"
)

// Collector runs garbage-collection passes over one store. Only one
// collector may work on a store at a time (run it from one cron job or
// leader); builds, deletions and mounts may go on concurrently. A Collector
// holds no state between calls: everything it needs is in the store, so any
// call may follow a crash of a previous one.
type Collector struct {
	st store.Store
	c  Config
}

// NewCollector returns a collector over st. Zero fields of c take their
// defaults; call c.Validate first to reject bad input.
func NewCollector(st store.Store, c Config) *Collector {
	c.setDefaults()
	return &Collector{st: st, c: c}
}

// run is the state of one call: the roots as this call sees them (in a dry
// run, as they would be after the moves it planned) and the report.
type run struct {
	*Collector
	now   time.Time
	roots []store.RootInfo
	rep   *Report
}

func (c *Collector) start(ctx context.Context) (*run, error) {
	if err := c.c.Validate(); err != nil {
		return nil, err
	}
	now := c.c.Now()
	r := &run{Collector: c, now: now, rep: &Report{DryRun: c.c.DryRun, Started: now}}
	roots, err := store.Roots(ctx, c.st)
	if err != nil {
		return nil, err
	}
	r.roots = roots
	return r, nil
}

// Pass runs one whole pass: rotate if the active root is older than
// RotateAfter, copy live images forward out of every retired root, expire
// retired roots that have settled and hold nothing live, and delete expired
// roots past Grace that have no alarm. Every step is idempotent; a pass
// that fails part-way leaves the store consistent and the next pass
// continues. The report covers what was done (or, in a dry run, would be
// done) even when an error is returned.
func (c *Collector) Pass(ctx context.Context) (Report, error) {
	r, err := c.start(ctx)
	if err != nil {
		return Report{}, err
	}
	var errs []error
	if _, err := r.rotate(ctx, false); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, r.copyForwardAll(ctx))
		errs = append(errs, r.expireAll(ctx))
		errs = append(errs, r.deleteAll(ctx))
	}
	errs = append(errs, r.finish(ctx))
	err = errors.Join(errs...)
	c.c.Metrics.observe(r.rep, err)
	return *r.rep, err
}

// Rotate makes a new active root if the newest active one is older than
// RotateAfter, and retires every older active root (finishing a rotation
// that crashed between its two writes). It returns the active root.
func (c *Collector) Rotate(ctx context.Context) (store.RootID, error) {
	r, err := c.start(ctx)
	if err != nil {
		return "", err
	}
	return r.rotate(ctx, false)
}

// RotateNow rotates whatever the active root's age.
func (c *Collector) RotateNow(ctx context.Context) (store.RootID, error) {
	r, err := c.start(ctx)
	if err != nil {
		return "", err
	}
	return r.rotate(ctx, true)
}

// CopyForward copies the manifests of the live images that point into the
// retired root from, and the chunks they name, into the active root to
// (only what to lacks), and repoints the images. It does not change either
// root's state.
func (c *Collector) CopyForward(ctx context.Context, from, to store.RootID) (Stats, error) {
	r, err := c.start(ctx)
	if err != nil {
		return Stats{}, err
	}
	fi, ti := r.find(from), r.find(to)
	if fi == nil || fi.State != store.RootRetired {
		return Stats{}, fmt.Errorf("copying forward from root %s: want a retired root: %w", from, ErrWrongState)
	}
	if ti == nil || ti.State != store.RootActive {
		return Stats{}, fmt.Errorf("copying forward into root %s: want an active root: %w", to, ErrWrongState)
	}
	ents, err := r.scan(ctx)
	if err != nil {
		return Stats{}, err
	}
	err = r.copyForward(ctx, from, to, liveIn(ents, from))
	return r.rep.Stats, err
}

// Collect expires the retired roots that have settled and hold nothing
// live, then deletes the expired roots past Grace that have no alarm.
func (c *Collector) Collect(ctx context.Context) (Stats, error) {
	r, err := c.start(ctx)
	if err != nil {
		return Stats{}, err
	}
	err = errors.Join(r.expireAll(ctx), r.deleteAll(ctx))
	return r.rep.Stats, err
}

func (r *run) act(msg string, args ...any) {
	r.rep.Actions = append(r.rep.Actions, fmt.Sprintf(msg, args...))
	r.c.Log.Info(fmt.Sprintf(msg, args...), "dry_run", r.c.DryRun)
}

func (r *run) find(id store.RootID) *store.RootInfo {
	for i := range r.roots {
		if r.roots[i].ID == id {
			return &r.roots[i]
		}
	}
	return nil
}

// active returns the newest active root, or nil.
func (r *run) active() *store.RootInfo {
	for i := len(r.roots) - 1; i >= 0; i-- {
		if r.roots[i].State == store.RootActive {
			return &r.roots[i]
		}
	}
	return nil
}

// move changes a root's state in the store (or, in a dry run, only in
// r.roots).
func (r *run) move(ctx context.Context, ri *store.RootInfo, to store.RootState) error {
	if r.c.DryRun {
		if err := store.CheckTransition(ri.State, to); err != nil {
			return fmt.Errorf("moving root %s: %w", ri.ID, err)
		}
		ri.State, ri.Since = to, r.now.UTC()
		return nil
	}
	next, err := moveRoot(ctx, r.st, *ri, to, r.now)
	if err != nil {
		return err
	}
	*ri = next
	return nil
}

func (r *run) rotate(ctx context.Context, force bool) (store.RootID, error) {
	newest := r.active()
	due := force || newest == nil && len(r.roots) > 0 ||
		newest != nil && r.now.Sub(newest.Since) >= r.c.RotateAfter
	if due {
		n := 1
		if len(r.roots) > 0 {
			n = store.RootNumber(r.roots[len(r.roots)-1].ID) + 1
		}
		id := store.RootIDFor(n)
		if !r.c.DryRun {
			var err error
			if id, err = store.CreateRoot(ctx, r.st, n, r.now); err != nil {
				return "", err
			}
		}
		r.roots = append(r.roots, store.RootInfo{ID: id, State: store.RootActive, Since: r.now.UTC()})
		newest = &r.roots[len(r.roots)-1]
		r.rep.Rotated = id
		r.act("created active root %s", id)
	}
	if newest == nil {
		return "", nil // an empty store: the first build creates the first root
	}
	keep := newest.ID
	for i := range r.roots {
		ri := &r.roots[i]
		if ri.State != store.RootActive || ri.ID == keep {
			continue
		}
		if err := r.move(ctx, ri, store.RootRetired); err != nil {
			return keep, err
		}
		r.act("retired root %s (builds that chose it may write into it until %s)", ri.ID, ri.Since.Add(r.c.BuildTimeout).Format(time.RFC3339))
	}
	return keep, nil
}

// scan reads every image pointer of every tenant, deleted ones included.
func (r *run) scan(ctx context.Context) ([]catalog.Entry, error) {
	tenants, err := catalog.Tenants(ctx, r.st)
	if err != nil {
		return nil, fmt.Errorf("listing tenants in %s: %w", r.st, err)
	}
	var out []catalog.Entry
	for _, t := range tenants {
		es, err := catalog.List(ctx, r.st, t, true)
		if err != nil {
			return nil, err
		}
		out = append(out, es...)
	}
	return out, nil
}

// liveIn returns the entries of live images whose pointer names root.
func liveIn(ents []catalog.Entry, root store.RootID) []catalog.Entry {
	var out []catalog.Entry
	for _, e := range ents {
		if e.Pointer.Root == root && !e.Pointer.Deleted {
			out = append(out, e)
		}
	}
	return out
}

func (r *run) copyForwardAll(ctx context.Context) error {
	to := r.active()
	var retired []store.RootID
	for _, ri := range r.roots {
		if ri.State == store.RootRetired {
			retired = append(retired, ri.ID)
		}
	}
	if len(retired) == 0 || to == nil {
		return nil
	}
	ents, err := r.scan(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, from := range retired {
		errs = append(errs, r.copyForward(ctx, from, to.ID, liveIn(ents, from)))
	}
	return errors.Join(errs...)
}

// copyForward copies each image of ents (live, pointing into from) into
// to. A failure of one image does not stop the others; the root keeps the
// image until a later pass copies it.
func (r *run) copyForward(ctx context.Context, from, to store.RootID, ents []catalog.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	present := &sync.Map{} // chunk.Name → struct{}: known to be in to
	var errs []error
	for _, e := range ents {
		if err := r.copyImage(ctx, from, to, e, present); err != nil {
			errs = append(errs, fmt.Errorf("copying image %s/%s forward from root %s to %s: %w", e.Tenant, e.Name, from, to, err))
			continue
		}
	}
	return errors.Join(errs...)
}

// copyImage copies one image: chunks first, then its manifest, then the
// pointer, so a crash anywhere leaves at worst unreferenced objects in the
// active root, never a pointer to something missing.
func (r *run) copyImage(ctx context.Context, from, to store.RootID, e catalog.Entry, present *sync.Map) error {
	p := e.Pointer
	mkey := store.ManifestKey(from, p.Manifest)
	sealed, err := r.st.Get(ctx, mkey, nil)
	if err != nil {
		return fmt.Errorf("reading manifest: %w", err)
	}
	if got := manifest.ID(sealed); got != p.Manifest {
		return fmt.Errorf("manifest %s hashes to %s: %w", mkey, got, manifest.ErrCorrupt)
	}
	pub, err := manifest.ReadPublic(sealed)
	if err != nil {
		return fmt.Errorf("reading manifest %s: %w", mkey, err)
	}
	seen := make(map[chunk.Name]bool, len(pub.Names))
	var names []chunk.Name
	for _, n := range pub.Names {
		if !n.IsZero() && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	var objs, bytes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.c.Concurrency)
	for _, n := range names {
		if _, ok := present.Load(n); ok {
			continue
		}
		g.Go(func() error {
			copied, size, err := r.copyChunk(gctx, from, to, n)
			if err != nil {
				return err
			}
			present.Store(n, struct{}{})
			if copied {
				objs.Add(1)
				bytes.Add(size)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	r.rep.ObjectsCopied += int(objs.Load())
	r.rep.BytesCopied += bytes.Load()

	tkey := store.ManifestKey(to, p.Manifest)
	if r.c.DryRun {
		if _, err := r.st.Stat(ctx, tkey); errors.Is(err, store.ErrNotFound) {
			r.rep.ObjectsCopied++
			r.rep.BytesCopied += int64(len(sealed))
		}
		r.rep.ImagesCopied++
		r.act("would copy image %s/%s from root %s to %s", e.Tenant, e.Name, from, to)
		return nil
	}
	if err := r.st.PutIfAbsent(ctx, tkey, sealed); err == nil {
		r.rep.ObjectsCopied++
		r.rep.BytesCopied += int64(len(sealed))
	} else if !errors.Is(err, store.ErrExists) {
		return fmt.Errorf("storing manifest %s: %w", tkey, err)
	}
	// The manifest's learned startup profiles (internal/profile) stay valid
	// under the same manifest id: copy them too. They are an optimization,
	// learned again if lost, so a failure does not stop the copy.
	if n, b, err := profile.CopyForward(ctx, r.st, from, to, p.Manifest); err != nil {
		r.act("learned profile of image %s/%s not copied forward (%v); workers will learn it again", e.Tenant, e.Name, err)
	} else {
		r.rep.ObjectsCopied += n
		r.rep.BytesCopied += b
	}

	// Repoint only if nobody changed the pointer since the scan: a build
	// may have replaced the image, or a user deleted it (catalog.Swap: a
	// compare-and-swap where the store has one, see doc.go).
	np := store.Pointer{Root: to, Manifest: p.Manifest, Created: p.Created}
	if err := catalog.Swap(ctx, r.st, e.Tenant, e.Name, p, np); errors.Is(err, catalog.ErrChanged) {
		r.act("image %s/%s changed during copy-forward (%v); left as is", e.Tenant, e.Name, err)
		return nil
	} else if err != nil {
		return fmt.Errorf("repointing: %w", err)
	}
	r.rep.ImagesCopied++
	r.act("copied image %s/%s from root %s to %s (%d chunks, %d copied)", e.Tenant, e.Name, from, to, len(names), objs.Load())
	return nil
}

// copyChunk copies chunk n from root from to root to unless to has it. It
// verifies the ciphertext against its name first, so a corrupt object is
// never propagated. It reports whether it stored the chunk (in a dry run:
// would store it) and its size.
func (r *run) copyChunk(ctx context.Context, from, to store.RootID, n chunk.Name) (bool, int64, error) {
	tkey := store.ChunkKey(to, n)
	if _, err := r.st.Stat(ctx, tkey); err == nil {
		return false, 0, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return false, 0, fmt.Errorf("checking chunk %s: %w", n, err)
	}
	fkey := store.ChunkKey(from, n)
	if r.c.DryRun {
		size, err := r.st.Stat(ctx, fkey)
		if err != nil {
			return false, 0, fmt.Errorf("checking chunk %s: %w", n, err)
		}
		return true, size, nil
	}
	ct, err := r.st.Get(ctx, fkey, nil)
	if err != nil {
		return false, 0, fmt.Errorf("reading chunk %s: %w", n, err)
	}
	if err := chunk.Verify(n, ct); err != nil {
		return false, 0, fmt.Errorf("reading chunk %s from root %s: %w", n, from, err)
	}
	err = r.st.PutIfAbsent(ctx, tkey, ct)
	if errors.Is(err, store.ErrExists) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("storing chunk %s: %w", tkey, err)
	}
	return true, int64(len(ct)), nil
}

// expireAll expires each retired root that has been retired for longer
// than BuildTimeout and that no live pointer names. Pointers are read again
// here, after the settle period: a build that chose the root before it was
// retired may have written its pointer after the last copy-forward. Such
// images are copied now.
func (r *run) expireAll(ctx context.Context) error {
	var errs []error
	for i := range r.roots {
		ri := &r.roots[i]
		if ri.State != store.RootRetired {
			continue
		}
		if until := ri.Since.Add(r.c.BuildTimeout); r.now.Before(until) {
			r.act("root %s settling: builds may write into it until %s", ri.ID, until.Format(time.RFC3339))
			continue
		}
		if err := r.expire(ctx, ri); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *run) expire(ctx context.Context, ri *store.RootInfo) error {
	ents, err := r.scan(ctx)
	if err != nil {
		return err
	}
	live := liveIn(ents, ri.ID)
	if len(live) > 0 {
		to := r.active()
		if to == nil {
			return fmt.Errorf("expiring root %s: %d live images and no active root to copy them to: %w", ri.ID, len(live), store.ErrNoActiveRoot)
		}
		if err := r.copyForward(ctx, ri.ID, to.ID, live); err != nil {
			return fmt.Errorf("expiring root %s: %w", ri.ID, err)
		}
		if !r.c.DryRun {
			if ents, err = r.scan(ctx); err != nil {
				return err
			}
			live = liveIn(ents, ri.ID)
		} else {
			live = nil // a dry run assumes the copy it planned succeeds
		}
	}
	if len(live) > 0 {
		r.act("root %s still holds %d live images (e.g. %s/%s); not expired", ri.ID, len(live), live[0].Tenant, live[0].Name)
		return nil
	}
	if err := r.move(ctx, ri, store.RootExpired); err != nil {
		return err
	}
	r.rep.Expired = append(r.rep.Expired, ri.ID)
	r.act("expired root %s (deletable after %s)", ri.ID, ri.Since.Add(r.c.Grace).Format(time.RFC3339))
	return nil
}

// deleteAll deletes each expired root past Grace that has no alarm, and
// finishes any deletion a crash interrupted.
func (r *run) deleteAll(ctx context.Context) error {
	var errs []error
	kept := r.roots[:0:0]
	for i := range r.roots {
		ri := &r.roots[i]
		deleted, err := r.maybeDelete(ctx, ri)
		if err != nil {
			errs = append(errs, err)
		}
		if !deleted {
			kept = append(kept, *ri)
		}
	}
	r.roots = kept
	return errors.Join(errs...)
}

func (r *run) maybeDelete(ctx context.Context, ri *store.RootInfo) (bool, error) {
	switch ri.State {
	case store.RootDeleting:
		r.act("resuming deletion of root %s", ri.ID)
		return true, r.deleteRoot(ctx, ri.ID)
	case store.RootExpired:
	default:
		return false, nil
	}
	if until := ri.Since.Add(r.c.Grace); r.now.Before(until) {
		r.act("root %s expired; deletable after %s", ri.ID, until.Format(time.RFC3339))
		return false, nil
	}
	alarmed, err := store.HasAlarm(ctx, r.st, ri.ID)
	if err != nil {
		return false, err
	}
	if alarmed {
		a, err := store.ReadAlarm(ctx, r.st, ri.ID)
		if err != nil {
			return false, err
		}
		r.rep.Blocked = append(r.rep.Blocked, a)
		r.act("root %s not deleted: alarm raised %s by image %s chunk %s; clear it with `lode gc clear-alarm %s`", ri.ID, a.Time.Format(time.RFC3339), a.Image, a.Chunk, ri.ID)
		return false, nil
	}
	ents, err := r.scan(ctx)
	if err != nil {
		return false, err
	}
	if live := liveIn(ents, ri.ID); len(live) > 0 {
		// Nothing should point here any more; something is wrong (a
		// pointer reverted by a concurrent writer, or a store restored from
		// a backup). Keep the data and tell the operator.
		image := live[0].Tenant + "/" + live[0].Name
		a := store.Alarm{Root: ri.ID, Image: image, Time: r.now.UTC()}
		if !r.c.DryRun {
			if err := store.RaiseAlarm(ctx, r.st, ri.ID, image, ""); err != nil {
				return false, err
			}
		}
		r.rep.Blocked = append(r.rep.Blocked, a)
		r.c.Log.Error("live image points into an expired root; raised an alarm", "root", ri.ID, "image", image)
		r.act("root %s not deleted: live image %s still points into it; raised an alarm", ri.ID, image)
		return false, nil
	}
	if r.c.DryRun {
		objs, size, err := r.size(ctx, ri.ID)
		if err != nil {
			return false, err
		}
		sz, err := r.st.Stat(ctx, store.StateKey(ri.ID))
		if err != nil {
			return false, fmt.Errorf("sizing root %s: %w", ri.ID, err)
		}
		r.rep.ObjectsFreed += objs - 1 // STATE objects are not counted
		r.rep.BytesFreed += size - sz
		for _, e := range ents {
			if e.Pointer.Deleted && e.Pointer.Root == ri.ID {
				r.rep.PointersRemoved++
			}
		}
		r.rep.Deleted = append(r.rep.Deleted, ri.ID)
		r.act("would delete root %s (%d objects, %d bytes)", ri.ID, objs, size)
		return true, nil
	}
	if err := r.move(ctx, ri, store.RootDeleting); err != nil {
		return false, err
	}
	return true, r.deleteRoot(ctx, ri.ID)
}

// deleteRoot removes the pointers of deleted images that name root, then
// every object of root, the STATE object last.
func (r *run) deleteRoot(ctx context.Context, root store.RootID) error {
	ents, err := r.scan(ctx)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Pointer.Deleted || e.Pointer.Root != root {
			continue
		}
		// Only if unchanged: the image may have been rebuilt since the scan.
		err := catalog.Remove(ctx, r.st, e.Tenant, e.Name, e.Pointer)
		if errors.Is(err, catalog.ErrChanged) {
			continue
		}
		if err != nil {
			return fmt.Errorf("deleting root %s: removing pointer of deleted image %s/%s: %w", root, e.Tenant, e.Name, err)
		}
		r.rep.PointersRemoved++
	}
	type obj struct {
		key  string
		size int64
	}
	var objs []obj
	stateKey := store.StateKey(root)
	err = r.st.List(ctx, store.RootPrefix(root), func(key string, size int64) error {
		if key != stateKey {
			objs = append(objs, obj{key, size})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting root %s: listing: %w", root, err)
	}
	var n, bytes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.c.Concurrency)
	for _, o := range objs {
		g.Go(func() error {
			if err := r.st.Delete(gctx, o.key); err != nil {
				return fmt.Errorf("deleting root %s: %w", root, err)
			}
			n.Add(1)
			bytes.Add(o.size)
			return nil
		})
	}
	err = g.Wait()
	r.rep.ObjectsFreed += int(n.Load())
	r.rep.BytesFreed += bytes.Load()
	if err != nil {
		return err
	}
	if err := r.st.Delete(ctx, stateKey); err != nil {
		return fmt.Errorf("deleting root %s: %w", root, err)
	}
	r.rep.Deleted = append(r.rep.Deleted, root)
	r.act("deleted root %s (%d objects, %d bytes)", root, n.Load(), bytes.Load())
	return nil
}

// size counts the objects and bytes under root.
func (r *run) size(ctx context.Context, root store.RootID) (int, int64, error) {
	var n int
	var b int64
	err := r.st.List(ctx, store.RootPrefix(root), func(_ string, size int64) error {
		n++
		b += size
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("sizing root %s: %w", root, err)
	}
	return n, b, nil
}

// finish fills the report's view of the roots and images.
func (r *run) finish(ctx context.Context) error {
	ents, err := r.scan(ctx)
	if err != nil {
		return err
	}
	live := map[store.RootID]int{}
	for _, e := range ents {
		if e.Pointer.Deleted {
			r.rep.DeletedImages++
			continue
		}
		r.rep.LiveImages++
		live[e.Pointer.Root]++
	}
	for _, ri := range r.roots {
		rr := RootReport{ID: ri.ID, State: ri.State, Since: ri.Since, LiveImages: live[ri.ID]}
		if rr.Objects, rr.Bytes, err = r.size(ctx, ri.ID); err != nil {
			return err
		}
		if rr.Alarm, err = store.HasAlarm(ctx, r.st, ri.ID); err != nil {
			return err
		}
		r.rep.Roots = append(r.rep.Roots, rr)
	}
	r.rep.Duration = r.c.Now().Sub(r.rep.Started)
	return nil
}
