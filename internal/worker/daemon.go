package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/lode-dev/lode/internal/profile"
	"github.com/lode-dev/lode/internal/store"
)

// DefaultSocket is where the daemon listens and its clients connect.
const DefaultSocket = "/run/lode/agent.sock"

// DaemonConfig configures a Daemon: the flags of `lode agent`.
type DaemonConfig struct {
	// Socket is the control API's unix socket (mode 0600).
	Socket string
	// MetricsListen, if set, also serves /metrics and /healthz on TCP.
	MetricsListen string
	// StateDir is where mount state lives (lode umount and lode doctor
	// read it).
	StateDir string
	// Refresh is how often served images' pointers and root states are
	// re-read (0: never).
	Refresh time.Duration
	// MaxStarts and StartWait gate mounts and exports being set up
	// (agent.Admission): a start holds its slot through its first reads, at
	// most StartWindow (agent.StartGate); StartWindow is also how long a new
	// mount's reads count as a start's (agent.Image.SetStarting).
	MaxStarts   int
	StartWait   time.Duration
	StartWindow time.Duration
	// Takeover: if another daemon serves on Socket, take its mounts and
	// exports over; AfterTakeover is what a daemon taken over does: "exit"
	// (or "") at once, or "wait" for its context to end.
	Takeover      bool
	AfterTakeover string
	// ResolveTTL, ResolveStale and ManifestCache configure the resolver
	// (catalog.ResolverConfig).
	ResolveTTL, ResolveStale time.Duration
	ManifestCache            int64
	// WarmMemory is the reserve of plaintext buffers the daemon writes
	// ahead of the starts that need them (agent.Warm), at most the memory
	// cache's budget; 0 disables it.
	WarmMemory int64
	// Worker is the tier stack; Fill the background fill of every image.
	Worker Options
	Fill   FillOptions

	// Store and Keyring are the origin and the tenants' keys; Tenant the
	// default tenant of requests; Log the process's logger (nil: discard).
	Store   store.Store
	Keyring manifest.Keyring
	Tenant  string
	Log     *slog.Logger
}

// warmBytes is the warm reserve the daemon keeps: WarmMemory, at most the
// memory cache's budget, 0 when off.
func (c DaemonConfig) warmBytes() int64 { return max(min(c.WarmMemory, c.Worker.MemBytes), 0) }

// Daemon is a running `lode agent`: one Stack for every image it mounts or
// exports, its control API over a unix socket (api.go), root checks and GC
// alarms, the takeover protocol (takeover.go) and the extra services
// registered with AddService.
type Daemon struct {
	o       DaemonConfig
	st      store.Store
	kr      manifest.Keyring
	origins *agent.Origins
	stack   *Stack
	resolve *catalog.Resolver
	admit   *agent.Admission
	reg     *prometheus.Registry
	base    *slog.Logger // the process's logger, for the mounts and exports
	log     *slog.Logger
	tenant  string // default tenant of requests
	expired prometheus.Counter
	moved   prometheus.Counter
	// expiredReads counts chunk reads from expired roots (RootWatch).
	expiredReads prometheus.Counter

	services []Service

	mu      sync.Mutex
	closing bool
	// takenOver is closed once another agent took everything over: the
	// daemon then returns without unmounting or removing the socket.
	takenOver  chan struct{}
	stopAPI    func()             // closes the control socket's listener (set by Run)
	apiStopped atomic.Bool        // by a takeover
	mounts     map[string]*served // by dir
	exports    map[string]*served // by listen address
	alarmed    map[string]bool    // "image root" pairs already alarmed
	rootRead   map[store.RootID]time.Time
}

// served is one image the daemon serves: a mount or an NBD export.
type served struct {
	tenant, image string
	m             *manifest.Manifest
	manifestID    string
	im            *agent.Image
	watch         *RootWatch // the GC alarm on reads from an expired root
	learn         *learner   // the learned startup profile (learn.go)
	since         time.Time

	mu     sync.Mutex
	roots  []store.RootID // attached, oldest first
	detach []func()

	// A mount.
	dir   string
	mount *fuse.ImageMount
	// An export.
	listen, export, overlay string
	ov                      *blockdev.Overlay
	stopNBD                 context.CancelFunc
	nbdDone                 chan struct{}

	closeOnce sync.Once
	closeErr  error
}

func (s *served) name() string { return s.tenant + "/" + s.image }

func (s *served) attached() []store.RootID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]store.RootID(nil), s.roots...)
}

// close tears the mount or export down, then closes the image and
// detaches its roots. It is idempotent.
func (s *served) close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.mount != nil {
			errs = append(errs, s.mount.Close())
		}
		if s.stopNBD != nil {
			s.stopNBD()
			<-s.nbdDone
		}
		if s.ov != nil {
			errs = append(errs, s.ov.Close())
		}
		if s.im != nil {
			errs = append(errs, s.im.Close())
		}
		s.learn.Wait()
		if s.watch != nil {
			s.watch.Close()
		}
		s.mu.Lock()
		for _, d := range s.detach {
			d()
		}
		s.detach = nil
		s.mu.Unlock()
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Run serves until ctx ends, then unmounts everything, stops the exports
// and the services and returns nil; it closes d in every case. ready, if
// not nil, is closed once the socket accepts requests. With Takeover, a
// daemon already serving on the socket hands everything over first.
func (d *Daemon) Run(ctx context.Context, ready chan<- struct{}) error {
	defer d.Close()
	o := d.o
	var exports []ExportRequest
	var err error
	if o.Takeover && socketAnswers(o.Socket) {
		if exports, err = d.takeOver(ctx); err != nil {
			return err
		}
	}
	l, err := listenSocket(o.Socket)
	if err != nil {
		return err
	}
	defer func() {
		select {
		case <-d.takenOver: // the socket is the new agent's now
		default:
			os.Remove(o.Socket)
		}
	}()
	mux := d.handler()
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stopMetrics := func() {}
	if o.MetricsListen != "" {
		if stopMetrics, err = metrics.Serve(o.MetricsListen, d.reg, d.log); err != nil {
			l.Close()
			return err
		}
	}
	defer stopMetrics()
	stopServices, err := d.startServices()
	if err != nil {
		l.Close()
		return err
	}
	defer stopServices()
	// A takeover releases every listener before the new agent opens its own.
	d.stopAPI = func() { l.Close(); stopMetrics(); stopServices() }
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	d.restartExports(ctx, exports)
	go d.refreshLoop(ctx)
	stopWarmup := func() {}
	if w := o.warmBytes(); w > 0 {
		// Written beside the first requests; stopped when the daemon stops
		// or is taken over (the reserve is the process's: a daemon taken
		// over, waiting for its SIGTERM, must not keep it resident).
		wctx, stopWarm := context.WithCancel(ctx)
		warmed := make(chan struct{})
		go func() {
			defer close(warmed)
			d.stack.Agent.WarmFetchBuffers(0) // 0: the default chunk size
			fuse.WarmReadBuffers(8, 0)
			agent.Warm(wctx, w, 0)
		}()
		stopWarmup = func() { stopWarm(); <-warmed }
		defer stopWarmup()
	}
	d.log.Info("agent serving", slog.String("socket", o.Socket), slog.String("store", d.st.String()),
		slog.String("metrics", o.MetricsListen))
	if ready != nil {
		close(ready)
	}
	select {
	case <-ctx.Done():
	case <-d.takenOver:
		stopWarmup()
		return d.afterTakenOver(ctx)
	case err := <-errc:
		if d.apiStopped.Load() {
			<-d.takenOver
			stopWarmup()
			return d.afterTakenOver(ctx)
		}
		return fmt.Errorf("serving the control socket %s: %w", o.Socket, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return nil
}

// listenSocket listens on a unix socket at path with mode 0600, replacing
// a stale socket but refusing one a live daemon answers on.
func listenSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the socket's directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("listening on %s: another agent is serving there", path)
	}
	os.Remove(path)
	old := unix.Umask(0o177) // no window in which the socket is open to others
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return l, nil
}

// NewDaemon checks c and builds the daemon's stack; Run serves it.
func NewDaemon(ctx context.Context, c DaemonConfig) (*Daemon, error) {
	if err := c.Fill.Check(); err != nil {
		return nil, err
	}
	if c.AfterTakeover != "" && c.AfterTakeover != "exit" && c.AfterTakeover != "wait" {
		return nil, fmt.Errorf("--after-takeover %q: want exit or wait", c.AfterTakeover)
	}
	if c.Store == nil || c.Keyring == nil {
		return nil, errors.New("a daemon needs a store and a keyring")
	}
	if err := checkKeyring(c.Keyring, c.Worker.AllowStoreSecret); err != nil {
		return nil, err
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	LimitMemory(c.Worker.MemBytes+c.warmBytes(), c.Log) // the warm reserve is resident beside the cache
	reg := metrics.NewRegistry()
	d := &Daemon{
		o: c, st: c.Store, kr: c.Keyring, reg: reg, origins: agent.NewOrigins(c.Store),
		base:     c.Log,
		log:      c.Log.With(slog.String("component", "agentd")),
		tenant:   c.Tenant,
		mounts:   map[string]*served{},
		exports:  map[string]*served{},
		alarmed:  map[string]bool{},
		rootRead: map[store.RootID]time.Time{},

		takenOver: make(chan struct{}),
	}
	d.resolve = catalog.NewResolver(c.Store, c.Keyring, catalog.ResolverConfig{
		PointerTTL: c.ResolveTTL, MaxStale: c.ResolveStale, ManifestBytes: c.ManifestCache, Log: d.log,
	})
	stack, err := NewStack(ctx, c.Worker, d.origins, reg, c.Log, Parts{LocalOrigin: onLocalDisk(d.st)})
	if err != nil {
		return nil, err
	}
	d.stack = stack
	d.admit = agent.NewAdmission(c.MaxStarts, c.StartWait, stack.Metrics)
	d.registerMetrics()
	return d, nil
}

func (d *Daemon) registerMetrics() {
	d.expiredReads = NewExpiredReadsCounter()
	d.expired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "lode_agent_expired_root_opens_total",
		Help: "Images opened (or found at a pointer refresh) whose root is expired or being deleted; each raises the root's GC alarm.",
	})
	d.moved = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "lode_agent_image_repoints_total",
		Help: "Served images whose pointer moved to another root (GC copy-forward) and now read from it.",
	})
	count := func(m map[string]*served) func() float64 {
		return func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			return float64(len(m))
		}
	}
	rs := func(f func(catalog.ResolverStats) int64) func() float64 {
		return func() float64 { return float64(f(d.resolve.Stats())) }
	}
	d.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "lode_agent_resolves_total", Help: "Image names resolved to manifests for new starts."},
			rs(func(s catalog.ResolverStats) int64 { return s.Resolves })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "lode_agent_pointer_reads_total", Help: "Image pointers read from the store (the rest of the resolves reused one, see --resolve-ttl)."},
			rs(func(s catalog.ResolverStats) int64 { return s.PointerReads })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "lode_agent_manifest_reads_total", Help: "Manifests read from the store and opened (the rest came from the manifest cache)."},
			rs(func(s catalog.ResolverStats) int64 { return s.ManifestReads })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "lode_agent_stale_pointer_uses_total", Help: "Starts that used an expired pointer because re-reading it from the store failed."},
			rs(func(s catalog.ResolverStats) int64 { return s.StaleOnError })),
	)
	for _, r := range []struct {
		result string
		get    func(agent.LeaseStats) int64
	}{
		{"granted", func(s agent.LeaseStats) int64 { return s.Granted }},
		{"waited", func(s agent.LeaseStats) int64 { return s.Waited }},
		{"filled", func(s agent.LeaseStats) int64 { return s.Filled }},
		{"fallback", func(s agent.LeaseStats) int64 { return s.Fallback }},
	} {
		d.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "lode_agent_origin_leases_total",
			Help:        "Origin reads behind fleet leases (--origin-lease): granted (this worker read the origin), waited (another held the lease), filled (the wait ended with a fleet hit), fallback (the wait ran out; read the origin).",
			ConstLabels: prometheus.Labels{"result": r.result},
		}, func() float64 {
			return float64(r.get(d.stack.LeaseStats()))
		}))
	}
	d.reg.MustRegister(d.expired, d.expiredReads, d.moved,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lode_agent_mounts", Help: "Images the agent daemon has mounted."}, count(d.mounts)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lode_agent_exports", Help: "NBD exports the agent daemon serves."}, count(d.exports)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lode_agent_warm_buffers", Help: "Plaintext buffers written ahead of the starts that need them (--warm-memory), ready now."}, func() float64 {
			return float64(agent.WarmBuffers())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lode_agent_disk_cache_bytes", Help: "Ciphertext bytes held by the disk cache."}, func() float64 {
			if d.stack.Disk == nil {
				return 0
			}
			return float64(d.stack.Disk.Bytes())
		}))
}

// Close unmounts every image, stops every export and closes the stack.
// Run calls it; call it only for a daemon that was never run.
func (d *Daemon) Close() {
	d.mu.Lock()
	d.closing = true
	var all []*served
	// Entries still being opened (no image yet) are closed by their
	// request, which sees closing.
	for _, s := range d.mounts {
		if s.im != nil {
			all = append(all, s)
		}
	}
	for _, s := range d.exports {
		if s.im != nil {
			all = append(all, s)
		}
	}
	clear(d.mounts)
	clear(d.exports)
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.close(); err != nil {
				d.log.Error("tearing down at shutdown", slog.String("image", s.name()), slog.String("dir", s.dir),
					slog.String("listen", s.listen), slog.Any("err", err))
			}
		}()
	}
	wg.Wait()
	if d.stack != nil {
		d.stack.Close()
	}
}

// open resolves tenant/image and opens it on the shared agent, reading
// from its pointer's root.
func (d *Daemon) open(ctx context.Context, tenant, image string) (*served, error) {
	m, p, err := d.resolve.Resolve(ctx, tenant, image)
	if err != nil {
		return nil, err
	}
	s := &served{tenant: tenant, image: image, m: m, manifestID: p.Manifest, since: time.Now()}
	// One read of the root's state serves the expired-root check and the
	// image's root watch; it runs while the image opens and its prefetch
	// starts, not before them (two serial reads of STATE before: ~2.3 ms of
	// a cold local mount, a round trip each on S3).
	state := readRootAsync(ctx, d.st, p.Root)
	rootState := func() rootRead { // waits for the read; checks the root when due
		r := <-state
		if d.rootDue(p.Root) {
			d.applyRootState(ctx, s.name(), p.Root, r.ri, r.err)
		}
		return r
	}
	s.roots = []store.RootID{p.Root}
	s.detach = []func(){d.origins.Attach(p.Root, m)}
	im, err := d.stack.Agent.Open(s.name(), m)
	if err != nil {
		s.detach[0]()
		rootState() // an expired root still raises its alarm
		return nil, fmt.Errorf("opening image %s: %w", s.name(), err)
	}
	s.im = im
	s.learn = startLearner(d.st, p, m, im, s.name(), d.o.Worker.LearnProfile, fetchProfile(d.st, p), profile.NewMetrics(d.reg), d.log)
	// The learned profile, then the build-time start set (or a recorded
	// profile); ends when the image closes.
	s.learn.startPrefetch(context.Background(), im, m.Hints, onLocalDisk(d.st), d.o.Worker.Fetches, d.log, s.name())
	s.watch = newRootWatch(d.st, tenant, image, m, p.Root, d.log, d.expiredReads, rootState())
	s.watch.Attach(im)
	d.o.Fill.Start(context.Background(), im, nil, d.base) // ends when the image closes
	return s, nil
}

// startGate is how long a mount or export keeps its admission slot: through
// its first reads, at most --start-window (agent.StartGate).
func (d *Daemon) startGate() agent.StartGate {
	return agent.StartGate{Window: d.o.StartWindow}
}

// markStarting counts im's reads as a container start's for --start-window:
// they then take at most three quarters of the fetch slots, and running
// containers' reads keep the rest (agent.Image.SetStarting).
func (d *Daemon) markStarting(im *agent.Image) {
	if d.o.StartWindow <= 0 {
		return
	}
	im.SetStarting(true)
	time.AfterFunc(d.o.StartWindow, func() { im.SetStarting(false) })
}

// rootDue reports whether a start should read root's state: at most once
// per --resolve-ttl (a storm of starts would otherwise read it from the
// store every time; the garbage collector's grace is hours, and the refresh
// loop reads the state of every served root anyway).
func (d *Daemon) rootDue(root store.RootID) bool {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if t, ok := d.rootRead[root]; ok && d.o.ResolveTTL > 0 && now.Sub(t) < d.o.ResolveTTL {
		return false
	}
	d.rootRead[root] = now
	return true
}

// checkRoot warns, counts and raises the GC alarm when image's root is
// expired (docs/gc.md, "Alarms: what the agent must do"). Problems reading
// the state are logged: they must not stop a mount.
func (d *Daemon) checkRoot(ctx context.Context, image string, root store.RootID) {
	ri, err := store.ReadRoot(ctx, d.st, root)
	d.applyRootState(ctx, image, root, ri, err)
}

// applyRootState is checkRoot with root's state already read (ri, or the
// read's error).
func (d *Daemon) applyRootState(ctx context.Context, image string, root store.RootID, ri store.RootInfo, err error) {
	if err != nil {
		d.log.Warn("reading the state of the image's root", slog.String("image", image), slog.String("root", string(root)), slog.Any("err", err))
		return
	}
	if !ri.State.Alarming() {
		return
	}
	key := image + " " + string(root)
	d.mu.Lock()
	seen := d.alarmed[key]
	d.alarmed[key] = true
	d.mu.Unlock()
	if seen {
		return
	}
	d.expired.Inc()
	d.log.Warn("image is read from an expired root; raising the GC alarm", slog.String("image", image),
		slog.String("root", string(root)), slog.String("state", string(ri.State)))
	if err := store.RaiseAlarm(ctx, d.st, root, image, ""); err != nil {
		d.log.Error("raising the GC alarm", slog.String("image", image), slog.String("root", string(root)), slog.Any("err", err))
	}
}

// refreshLoop re-reads, every o.refresh, the pointers of served images and
// the states of their roots.
func (d *Daemon) refreshLoop(ctx context.Context) {
	if d.o.Refresh <= 0 {
		return
	}
	t := time.NewTicker(d.o.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.refresh(ctx)
		}
	}
}

// refresh follows images the GC repointed: when a served image's pointer
// names a root it does not read from yet (same manifest), that root is
// attached, and tried first from then on; the old one stays as a fallback
// until the image is closed.
func (d *Daemon) refresh(ctx context.Context) {
	for _, s := range d.all() {
		p, err := catalog.Lookup(ctx, d.st, s.tenant, s.image)
		if err != nil {
			d.log.Warn("re-reading the pointer of a served image", slog.String("image", s.name()), slog.Any("err", err))
			continue
		}
		s.mu.Lock()
		fresh := p.Manifest == s.manifestID && !containsRoot(s.roots, p.Root)
		if fresh {
			s.roots = append(s.roots, p.Root)
			s.detach = append(s.detach, d.origins.Attach(p.Root, s.m))
		}
		s.mu.Unlock()
		if fresh && s.watch != nil {
			s.watch.SetRoot(p.Root) // reads now go to the new root first
		}
		if fresh {
			d.moved.Inc()
			d.log.Info("image moved to a new root", slog.String("image", s.name()), slog.String("root", string(p.Root)))
		}
		for _, r := range s.attached() {
			d.checkRoot(ctx, s.name(), r)
		}
	}
}

func containsRoot(rs []store.RootID, r store.RootID) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

func (d *Daemon) all() []*served {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*served
	for _, s := range d.mounts {
		if s.im != nil {
			out = append(out, s)
		}
	}
	for _, s := range d.exports {
		if s.im != nil {
			out = append(out, s)
		}
	}
	return out
}
