package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/blockdev/nbd"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/gc"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/lode-dev/lode/internal/snapshotter"
	"github.com/lode-dev/lode/internal/store"
)

// agentd.go is `lode agent`: the worker daemon that keeps one agent (one
// memory cache, one disk cache, the fleet client, the origin) for every
// image it mounts or exports, and its control API over a unix socket.

func init() { extraCommands = append(extraCommands, newAgentCmd) }

// defaultAgentSocket is where the daemon listens and the clients connect.
const defaultAgentSocket = "/run/lode/agent.sock"

type agentdOptions struct {
	socket        string
	metricsListen string
	stateDir      string
	refresh       time.Duration
	maxStarts     int
	startWait     time.Duration
	takeover      bool
	afterTakeover string
	startWindow   time.Duration
	resolveTTL    time.Duration
	resolveStale  time.Duration
	manifestCache int64
	worker        workerOptions
	fill          fillOptions
	containerd    containerdOptions
}

func newAgentCmd() *cobra.Command {
	var o agentdOptions
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the worker daemon: one warm cache for every mount and NBD export",
		Long: `Agent runs the worker daemon. It keeps one chunk reader — memory cache, disk
cache, cache fleet (--fleet) and origin — for every image it serves, so a chunk
read by one container is warm for the next, and serves Prometheus /metrics.

Images are mounted (FUSE + loop + ext4, as lode mount does) or exported over
NBD on request through an HTTP API on a unix socket (--socket, mode 0600):

  POST   /v1/mounts   {"image":…,"tenant":…,"dir":…}     mount
  DELETE /v1/mounts?dir=DIR                              unmount
  GET    /v1/mounts                                      mounts with statistics
  POST   /v1/exports  {"image":…,"tenant":…,"listen":…,"overlay":…,"export":…}
  DELETE /v1/exports?listen=ADDR
  GET    /v1/exports, /v1/status, /healthz, /metrics
  POST   /v1/takeover                                   a new agent takes over (below)

"lode agent mount|umount|status|export|unexport" are clients of that API.
Each image reads chunks under its own pointer's root; every --refresh the
daemon re-reads the pointers and follows images the garbage collector moved
to a newer root. On SIGTERM it unmounts everything and stops its exports.

Upgrades without unmounting (--takeover, on by default): start the new lode
agent with the same --socket and --state-dir while the old one runs. It asks
the old one (POST /v1/takeover on the socket) to hand every mount over: the
old agent stops taking FUSE requests, answers those it took, and passes each
mount's /dev/fuse connection (SCM_RIGHTS) with its tenant, image and
manifest; the new one reopens the same image and serves the connection, so
readers of the mounts see a pause, not an error. The old agent then stops its
NBD exports (the new one restarts them on the same addresses; NBD clients
reconnect), releases the socket and exits 0 without unmounting
(--after-takeover=wait: waits for SIGTERM first, then exits 0 without
unmounting). A crash still loses the mounts (lode doctor --fix cleans up):
see docs/operations.md.`,
		Example: `  lode agent --metrics-listen 127.0.0.1:9470 &
  lode agent mount app /mnt/app
  lode agent status
  lode agent umount /mnt/app`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAgentDaemon(cmd.Context(), o, nil)
		},
	}
	cmd.PersistentFlags().StringVar(&o.socket, "socket", envOr("LODE_AGENT_SOCKET", defaultAgentSocket), "control socket of the daemon (env LODE_AGENT_SOCKET)")
	f := cmd.Flags()
	f.StringVar(&o.metricsListen, "metrics-listen", "", "also serve Prometheus /metrics and /healthz on this TCP address")
	f.StringVar(&o.stateDir, "state-dir", fuse.DefaultStateDir, "where mount state lives (lode umount and lode doctor read it)")
	f.DurationVar(&o.refresh, "refresh", time.Minute, "how often to re-read the pointers and root states of served images (0 disables)")
	f.IntVar(&o.maxStarts, "max-starts", 64, "mounts and exports being set up at once; past it a request waits --start-wait, then fails with \"too many starts in flight\" (0: unbounded)")
	f.DurationVar(&o.startWait, "start-wait", 2*time.Second, "how long a start waits for a slot before it is refused")
	f.DurationVar(&o.startWindow, "start-window", 10*time.Second, "for this long after a mount or export, its reads count as a start's: starts share at most three quarters of --max-fetches, so running containers' reads keep the rest (0: no distinction)")
	f.DurationVar(&o.resolveTTL, "resolve-ttl", time.Second, "how long a start reuses an image's pointer read by an earlier start (a new build or a delete is seen within it); up to --resolve-stale a start uses the pointer it has while one background read refreshes it; negative: read the pointer at every start")
	f.DurationVar(&o.resolveStale, "resolve-stale", 30*time.Second, "oldest pointer a start uses while refreshing it in the background")
	f.Int64Var(&o.manifestCache, "manifest-cache-size", 256<<20, "bytes of opened manifests kept for new starts (content-addressed, never stale)")
	f.BoolVar(&o.takeover, "takeover", true, "if another agent serves on --socket, take its mounts and exports over (it then exits 0) instead of failing")
	f.StringVar(&o.afterTakeover, "after-takeover", "exit", `once taken over by a new agent: "exit" 0 at once, or "wait" for SIGTERM first (for supervisors that restart a process that exits, e.g. a Kubernetes pod being replaced)`)
	o.worker.bind(f)
	o.fill.bind(f)
	o.containerd.bind(f)
	cmd.AddCommand(newAgentMountCmd(&o.socket), newAgentUmountCmd(&o.socket), newAgentStatusCmd(&o.socket),
		newAgentExportCmd(&o.socket), newAgentUnexportCmd(&o.socket))
	return cmd
}

// daemon is a running `lode agent`.
type daemon struct {
	o       agentdOptions
	st      store.Store
	kr      manifest.Keyring
	origins *agent.Origins
	origin  agent.Tier // the origin tier as the agent reads it (limits, leases)
	resolve *catalog.Resolver
	admit   *agent.Admission
	disk    *agent.DiskCache
	mem     *agent.MemCache
	agent   *agent.Agent
	reg     *prometheus.Registry
	base    *slog.Logger // the process's logger, for the mounts and exports
	log     *slog.Logger
	tenant  string // default tenant of requests
	closers []func() error
	expired prometheus.Counter
	moved   prometheus.Counter

	mu      sync.Mutex
	closing bool
	// takenOver is closed once another agent took everything over: the
	// daemon then returns without unmounting or removing the socket.
	takenOver  chan struct{}
	stopAPI    func()             // closes the control socket's listener (set by runAgentDaemon)
	apiStopped atomic.Bool        // by a takeover
	mounts     map[string]*served // by dir
	exports    map[string]*served // by listen address
	alarmed    map[string]bool    // "image root" pairs already alarmed
	rootRead   map[store.RootID]time.Time
	containerd *containerdService // --containerd-socket
}

// served is one image the daemon serves: a mount or an NBD export.
type served struct {
	tenant, image string
	m             *manifest.Manifest
	manifestID    string
	im            *agent.Image
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

// runAgentDaemon serves until ctx ends, then unmounts everything, stops the
// exports and returns nil. ready, if not nil, is closed once the socket
// accepts requests.
func runAgentDaemon(ctx context.Context, o agentdOptions, ready chan<- struct{}) error {
	if o.fill.on {
		if err := o.fill.check(); err != nil {
			return err
		}
	}
	if o.afterTakeover != "" && o.afterTakeover != "exit" && o.afterTakeover != "wait" {
		return fmt.Errorf("--after-takeover %q: want exit or wait", o.afterTakeover)
	}
	limitMemory(o.worker.memBytes)
	d, err := newDaemon(ctx, o)
	if err != nil {
		return err
	}
	defer d.shutdown()
	var exports []exportRequest
	if o.takeover && socketAnswers(o.socket) {
		if exports, err = d.takeOver(ctx); err != nil {
			return err
		}
	}
	l, err := listenSocket(o.socket)
	if err != nil {
		return err
	}
	defer func() {
		select {
		case <-d.takenOver: // the socket is the new agent's now
		default:
			os.Remove(o.socket)
		}
	}()
	mux := d.handler()
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stopMetrics := func() {}
	if o.metricsListen != "" {
		if stopMetrics, err = serveMetrics(o.metricsListen, d.reg); err != nil {
			l.Close()
			return err
		}
	}
	defer stopMetrics()
	if d.containerd, err = d.startContainerd(ctx, o.containerd); err != nil {
		l.Close()
		return err
	}
	defer d.containerd.stop()
	// A takeover releases the listeners (and the snapshotter's metadata)
	// before the new agent opens its own.
	d.stopAPI = func() { l.Close(); stopMetrics(); d.containerd.stop() }
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	d.restartExports(ctx, exports)
	go d.refreshLoop(ctx)
	d.log.Info("agent serving", slog.String("socket", o.socket), slog.String("store", d.st.String()),
		slog.String("metrics", o.metricsListen))
	if ready != nil {
		close(ready)
	}
	select {
	case <-ctx.Done():
	case <-d.takenOver:
		return d.afterTakenOver(ctx)
	case err := <-errc:
		if d.apiStopped.Load() {
			<-d.takenOver
			return d.afterTakenOver(ctx)
		}
		return fmt.Errorf("serving the control socket %s: %w", o.socket, err)
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

func newDaemon(ctx context.Context, o agentdOptions) (*daemon, error) {
	st, err := openStore(ctx)
	if err != nil {
		return nil, err
	}
	kr, err := openKeyring()
	if err != nil {
		return nil, err
	}
	reg := metrics.NewRegistry()
	d := &daemon{
		o: o, st: st, kr: kr, reg: reg, origins: agent.NewOrigins(st),
		base:     logger,
		log:      logger.With(slog.String("component", "agentd")),
		tenant:   global.tenant,
		mounts:   map[string]*served{},
		exports:  map[string]*served{},
		alarmed:  map[string]bool{},
		rootRead: map[store.RootID]time.Time{},

		takenOver: make(chan struct{}),
	}
	d.resolve = catalog.NewResolver(st, kr, catalog.ResolverConfig{
		PointerTTL: o.resolveTTL, MaxStale: o.resolveStale, ManifestBytes: o.manifestCache, Log: d.log,
	})
	tiers, closers, err := o.worker.cacheTiers(ctx, reg)
	if err != nil {
		return nil, err
	}
	d.closers = closers
	for _, t := range tiers {
		if dc, ok := t.(*agent.DiskCache); ok {
			d.disk = dc
		}
	}
	d.origin = o.worker.protectOrigin(d.origins, tiers)
	cfg := o.worker.agentConfig(append(tiers, d.origin), reg)
	d.mem = cfg.Mem
	a, err := agent.New(cfg)
	if err != nil {
		d.shutdown()
		return nil, err
	}
	d.agent = a
	d.admit = agent.NewAdmission(o.maxStarts, o.startWait, cfg.Metrics)
	d.registerMetrics()
	return d, nil
}

func (d *daemon) registerMetrics() {
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
			s, _ := agent.CoordinateStats(d.origin)
			return float64(r.get(s))
		}))
	}
	d.reg.MustRegister(d.expired, d.moved,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lode_agent_mounts", Help: "Images the agent daemon has mounted."}, count(d.mounts)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lode_agent_exports", Help: "NBD exports the agent daemon serves."}, count(d.exports)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lode_agent_disk_cache_bytes", Help: "Ciphertext bytes held by the disk cache."}, func() float64 {
			if d.disk == nil {
				return 0
			}
			return float64(d.disk.Bytes())
		}))
}

// shutdown unmounts every image, stops every export and closes the agent.
func (d *daemon) shutdown() {
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
	if d.agent != nil {
		d.agent.Close()
	}
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
}

// open resolves tenant/image and opens it on the shared agent, reading
// from its pointer's root.
func (d *daemon) open(ctx context.Context, tenant, image string) (*served, error) {
	m, p, err := d.resolve.Resolve(ctx, tenant, image)
	if err != nil {
		return nil, err
	}
	s := &served{tenant: tenant, image: image, m: m, manifestID: p.Manifest, since: time.Now()}
	if d.rootDue(p.Root) {
		d.checkRoot(ctx, s.name(), p.Root)
	}
	s.roots = []store.RootID{p.Root}
	s.detach = []func(){d.origins.Attach(p.Root, m)}
	im, err := d.agent.Open(s.name(), m)
	if err != nil {
		s.detach[0]()
		return nil, fmt.Errorf("opening image %s: %w", s.name(), err)
	}
	s.im = im
	d.o.fill.start(context.Background(), im, nil) // ends when the image closes
	return s, nil
}

// markStarting counts im's reads as a container start's for --start-window:
// they then take at most three quarters of the fetch slots, and running
// containers' reads keep the rest (agent.Image.SetStarting).
func (d *daemon) markStarting(im *agent.Image) {
	if d.o.startWindow <= 0 {
		return
	}
	im.SetStarting(true)
	time.AfterFunc(d.o.startWindow, func() { im.SetStarting(false) })
}

// rootDue reports whether a start should read root's state: at most once
// per --resolve-ttl (a storm of starts would otherwise read it from the
// store every time; the garbage collector's grace is hours, and the refresh
// loop reads the state of every served root anyway).
func (d *daemon) rootDue(root store.RootID) bool {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if t, ok := d.rootRead[root]; ok && d.o.resolveTTL > 0 && now.Sub(t) < d.o.resolveTTL {
		return false
	}
	d.rootRead[root] = now
	return true
}

// checkRoot warns, counts and raises the GC alarm when image's root is
// expired (docs/gc.md, "Alarms: what the agent must do"). Problems reading
// the state are logged: they must not stop a mount.
func (d *daemon) checkRoot(ctx context.Context, image string, root store.RootID) {
	ri, err := store.ReadRoot(ctx, d.st, root)
	if err != nil {
		d.log.Warn("reading the state of the image's root", slog.String("image", image), slog.String("root", string(root)), slog.Any("err", err))
		return
	}
	if ri.State != store.RootExpired && ri.State != gc.StateDeleting {
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
	if err := gc.RaiseAlarm(ctx, d.st, root, image, ""); err != nil {
		d.log.Error("raising the GC alarm", slog.String("image", image), slog.String("root", string(root)), slog.Any("err", err))
	}
}

// refreshLoop re-reads, every o.refresh, the pointers of served images and
// the states of their roots.
func (d *daemon) refreshLoop(ctx context.Context) {
	if d.o.refresh <= 0 {
		return
	}
	t := time.NewTicker(d.o.refresh)
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
func (d *daemon) refresh(ctx context.Context) {
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

func (d *daemon) all() []*served {
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

// The control API.

type mountRequest struct {
	Image  string `json:"image"`
	Tenant string `json:"tenant,omitempty"`
	Dir    string `json:"dir"`
}

type exportRequest struct {
	Image   string `json:"image"`
	Tenant  string `json:"tenant,omitempty"`
	Listen  string `json:"listen"`
	Export  string `json:"export,omitempty"`
	Overlay string `json:"overlay,omitempty"`
}

// servedStatus is one mount or export in the API's answers.
type servedStatus struct {
	Image    string      `json:"image"`
	Tenant   string      `json:"tenant"`
	Roots    []string    `json:"roots"`
	Manifest string      `json:"manifest"`
	Since    time.Time   `json:"since"`
	Dir      string      `json:"dir,omitempty"`
	Loop     string      `json:"loop,omitempty"`
	Listen   string      `json:"listen,omitempty"`
	Export   string      `json:"export,omitempty"`
	Overlay  string      `json:"overlay,omitempty"`
	Stats    imageStatus `json:"stats"`
}

// imageStatus is agent.Stats with stable JSON names.
type imageStatus struct {
	ImageSize          int64            `json:"image_size"`
	ChunkCount         int              `json:"chunk_count"`
	BytesRead          int64            `json:"bytes_read"`
	DistinctChunksRead int64            `json:"distinct_chunks_read"`
	DistinctBytesRead  int64            `json:"distinct_bytes_read"`
	MemHits            int64            `json:"mem_hits"`
	Holes              int64            `json:"holes"`
	ReadAheads         int64            `json:"read_aheads"`
	FetchErrors        int64            `json:"fetch_errors"`
	VerifyFailures     int64            `json:"verify_failures"`
	FetchedBytes       int64            `json:"fetched_bytes"` // ciphertext from every tier below memory
	Tiers              []tierStatus     `json:"tiers"`
	Degraded           map[string]int64 `json:"degraded,omitempty"` // lazy loading degraded, by reason
	Filled             int64            `json:"filled,omitempty"`   // chunks the background fill fetched
}

type tierStatus struct {
	Tier   string `json:"tier"`
	Hits   int64  `json:"hits"`
	Chunks int64  `json:"chunks"`
	Bytes  int64  `json:"bytes"`
}

type agentStatus struct {
	Mounts         []servedStatus `json:"mounts"`
	Exports        []servedStatus `json:"exports"`
	MemCacheBytes  int64          `json:"mem_cache_bytes"`
	DiskCacheBytes int64          `json:"disk_cache_bytes"`
	DiskCacheFiles int            `json:"disk_cache_chunks"`
	// Snapshots are containerd's snapshots (--containerd-socket) with their kinds.
	Snapshots []snapshotter.SnapshotStatus `json:"snapshots,omitempty"`
}

func statusOf(s *served) servedStatus {
	st := s.im.Stats()
	out := servedStatus{
		Image: s.image, Tenant: s.tenant, Manifest: s.manifestID, Since: s.since,
		Dir: s.dir, Listen: s.listen, Export: s.export, Overlay: s.overlay,
		Stats: imageStatus{
			ImageSize: st.ImageSize, ChunkCount: st.ChunkCount, BytesRead: st.BytesRead,
			DistinctChunksRead: st.DistinctChunksRead, DistinctBytesRead: st.DistinctBytesRead,
			MemHits: st.MemHits, Holes: st.Holes, ReadAheads: st.ReadAheads,
			FetchErrors: st.FetchErrors, VerifyFailures: st.VerifyFailures, Tiers: []tierStatus{},
			Degraded: st.Degraded, Filled: st.Filled,
		},
	}
	if s.mount != nil {
		out.Loop = s.mount.Loop()
	}
	for _, r := range s.attached() {
		out.Roots = append(out.Roots, string(r))
	}
	for _, t := range st.Tiers {
		out.Stats.Tiers = append(out.Stats.Tiers, tierStatus{Tier: t.Tier, Hits: t.Hits, Chunks: t.Chunks, Bytes: t.Bytes})
		out.Stats.FetchedBytes += t.Bytes
	}
	return out
}

func (d *daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(d.reg))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("POST /v1/mounts", d.postMount)
	mux.HandleFunc("DELETE /v1/mounts", d.deleteMount)
	mux.HandleFunc("GET /v1/mounts", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.status().Mounts) })
	mux.HandleFunc("POST /v1/exports", d.postExport)
	mux.HandleFunc("DELETE /v1/exports", d.deleteExport)
	mux.HandleFunc("GET /v1/exports", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.status().Exports) })
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.status()) })
	mux.HandleFunc("POST /v1/takeover", d.postTakeover)
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

type apiError struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, apiError{Error: err.Error()})
}

// errCode maps an error to an HTTP status.
func errCode(err error) int {
	switch {
	case errors.Is(err, catalog.ErrNoImage), errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, fuse.ErrBusy):
		return http.StatusConflict
	case errors.Is(err, agent.ErrTooManyStarts):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func (d *daemon) status() agentStatus {
	d.mu.Lock()
	var ms, es []*served
	for _, s := range d.mounts {
		if s.im != nil && (s.mount != nil) {
			ms = append(ms, s)
		}
	}
	for _, s := range d.exports {
		if s.im != nil && s.nbdDone != nil {
			es = append(es, s)
		}
	}
	d.mu.Unlock()
	out := agentStatus{Mounts: []servedStatus{}, Exports: []servedStatus{}}
	for _, s := range ms {
		out.Mounts = append(out.Mounts, statusOf(s))
	}
	for _, s := range es {
		out.Exports = append(out.Exports, statusOf(s))
	}
	sort.Slice(out.Mounts, func(i, j int) bool { return out.Mounts[i].Dir < out.Mounts[j].Dir })
	sort.Slice(out.Exports, func(i, j int) bool { return out.Exports[i].Listen < out.Exports[j].Listen })
	if d.mem != nil {
		out.MemCacheBytes = d.mem.Bytes()
	}
	if d.disk != nil {
		out.DiskCacheBytes, out.DiskCacheFiles = d.disk.Bytes(), d.disk.Len()
	}
	out.Snapshots = d.containerd.status(context.Background())
	return out
}

// reserve claims key in table (a dir or a listen address) while the image
// is being opened, so concurrent requests for it conflict.
func (d *daemon) reserve(table map[string]*served, key string, s *served) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return errors.New("the agent is shutting down")
	}
	if _, ok := table[key]; ok {
		return fmt.Errorf("%s is already served by this agent: %w", key, fuse.ErrBusy)
	}
	table[key] = s
	return nil
}

func (d *daemon) release(table map[string]*served, key string, s *served) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if table[key] == s {
		delete(table, key)
	}
}

func (d *daemon) postMount(w http.ResponseWriter, r *http.Request) {
	var req mountRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decoding the mount request: %w", err))
		return
	}
	if req.Tenant == "" {
		req.Tenant = d.tenant
	}
	if req.Image == "" || !filepath.IsAbs(req.Dir) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("a mount needs an image and an absolute dir, got image %q dir %q", req.Image, req.Dir))
		return
	}
	dir := filepath.Clean(req.Dir)
	placeholder := &served{}
	if err := d.reserve(d.mounts, dir, placeholder); err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	s, err := d.mountImage(r.Context(), req, dir)
	if err != nil {
		d.release(d.mounts, dir, placeholder)
		d.log.Warn("mount failed", slog.String("image", req.Tenant+"/"+req.Image), slog.String("dir", dir), slog.Any("err", err))
		writeError(w, errCode(err), err)
		return
	}
	d.mu.Lock()
	closing := d.closing
	if !closing {
		d.mounts[dir] = s
	}
	d.mu.Unlock()
	if closing {
		s.close()
		writeError(w, http.StatusServiceUnavailable, errors.New("the agent is shutting down"))
		return
	}
	d.watchMount(s)
	d.log.Info("mounted", slog.String("image", s.name()), slog.String("dir", dir), slog.String("loop", s.mount.Loop()))
	writeJSON(w, http.StatusCreated, statusOf(s))
}

// watchMount forgets s once its mount is gone: unmounted from outside
// (lode umount DIR), or handed over to a new agent.
func (d *daemon) watchMount(s *served) {
	go func() {
		s.mount.Wait()
		d.release(d.mounts, s.dir, s)
		s.close()
	}()
}

func (d *daemon) mountImage(ctx context.Context, req mountRequest, dir string) (*served, error) {
	release, err := d.admit.Acquire(ctx, req.Tenant+"/"+req.Image)
	if err != nil {
		return nil, err
	}
	defer release()
	s, err := d.open(ctx, req.Tenant, req.Image)
	if err != nil {
		return nil, err
	}
	d.markStarting(s.im)
	s.dir = dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.close()
		return nil, fmt.Errorf("creating mount point %s: %w", dir, err)
	}
	mo := fuse.MountOptions{StateDir: d.o.stateDir}
	mo.Log = d.base
	m, err := fuse.MountImage(ctx, dir, s.im, mo)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("mounting %s at %s: %w", s.name(), dir, err)
	}
	s.mount = m
	return s, nil
}

func (d *daemon) deleteMount(w http.ResponseWriter, r *http.Request) {
	dir := filepath.Clean(r.URL.Query().Get("dir"))
	d.stopServed(w, d.mounts, dir, func(s *served) bool { return s.mount != nil },
		fmt.Errorf("%s is not mounted by this agent", dir), "unmounting "+dir, "unmounted", slog.String("dir", dir))
}

// stopServed removes the entry key of table (a mount or an export that has
// finished starting), closes it and answers with its last status; notFound
// answers a key that names nothing started.
func (d *daemon) stopServed(w http.ResponseWriter, table map[string]*served, key string, started func(*served) bool,
	notFound error, doing, done string, where slog.Attr) {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, errors.New("the agent is shutting down or being taken over"))
		return
	}
	s, ok := table[key]
	if ok && started(s) {
		delete(table, key)
	}
	d.mu.Unlock()
	if !ok || !started(s) {
		writeError(w, http.StatusNotFound, notFound)
		return
	}
	st := statusOf(s)
	if err := s.close(); err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("%s: %w", doing, err))
		return
	}
	d.log.Info(done, slog.String("image", s.name()), where)
	writeJSON(w, http.StatusOK, st)
}

func (d *daemon) postExport(w http.ResponseWriter, r *http.Request) {
	var req exportRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decoding the export request: %w", err))
		return
	}
	if req.Tenant == "" {
		req.Tenant = d.tenant
	}
	if req.Image == "" || req.Listen == "" {
		writeError(w, http.StatusBadRequest, fmt.Errorf("an export needs an image and a listen address, got image %q listen %q", req.Image, req.Listen))
		return
	}
	placeholder := &served{}
	if err := d.reserve(d.exports, req.Listen, placeholder); err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	s, err := d.startExport(r.Context(), req)
	if err != nil {
		d.release(d.exports, req.Listen, placeholder)
		writeError(w, errCode(err), err)
		return
	}
	d.mu.Lock()
	closing := d.closing
	if !closing {
		d.exports[req.Listen] = s
	}
	d.mu.Unlock()
	if closing {
		s.close()
		writeError(w, http.StatusServiceUnavailable, errors.New("the agent is shutting down"))
		return
	}
	d.log.Info("exporting", slog.String("image", s.name()), slog.String("listen", s.listen), slog.String("export", s.export))
	writeJSON(w, http.StatusCreated, statusOf(s))
}

func (d *daemon) startExport(ctx context.Context, req exportRequest) (*served, error) {
	release, err := d.admit.Acquire(ctx, req.Tenant+"/"+req.Image)
	if err != nil {
		return nil, err
	}
	defer release()
	s, err := d.open(ctx, req.Tenant, req.Image)
	if err != nil {
		return nil, err
	}
	d.markStarting(s.im)
	s.listen, s.export, s.overlay = req.Listen, req.Export, req.Overlay
	if s.export == "" {
		s.export = req.Image
	}
	var dev blockdev.Device = s.im
	if req.Overlay != "" {
		ov, err := blockdev.NewOverlay(s.im, req.Overlay)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("opening overlay %s: %w", req.Overlay, err)
		}
		s.ov, dev = ov, ov
	}
	l, err := listen(req.Listen)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("listening on %s: %w", req.Listen, err)
	}
	c := nbd.DefaultConfig()
	c.Log = d.base
	srv := nbd.NewServer(map[string]nbd.Export{s.export: {Device: dev, Description: s.name()}}, c)
	nctx, cancel := context.WithCancel(context.Background())
	s.stopNBD, s.nbdDone = cancel, make(chan struct{})
	go func() {
		defer close(s.nbdDone)
		if err := srv.Serve(nctx, l); err != nil {
			d.log.Error("NBD export stopped", slog.String("image", s.name()), slog.String("listen", s.listen), slog.Any("err", err))
		}
		if p, ok := strings.CutPrefix(s.listen, "unix:"); ok {
			os.Remove(p)
		}
	}()
	return s, nil
}

func (d *daemon) deleteExport(w http.ResponseWriter, r *http.Request) {
	addr := r.URL.Query().Get("listen")
	d.stopServed(w, d.exports, addr, func(s *served) bool { return s.nbdDone != nil },
		fmt.Errorf("no export on %s", addr), "stopping the export on "+addr, "export stopped", slog.String("listen", addr))
}

// The clients.

// agentClient talks HTTP to the daemon's unix socket.
type agentClient struct {
	socket string
	hc     *http.Client
}

func newAgentClient(socket string) *agentClient {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", socket)
	}}
	return &agentClient{socket: socket, hc: &http.Client{Transport: tr}}
}

// call sends method path with body (JSON, if not nil) and decodes the
// answer into out (if not nil). A non-2xx answer is an error carrying the
// daemon's message.
func (c *agentClient) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://lode-agent"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("calling the lode agent on %s (is \"lode agent\" running?): %w", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the agent's answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var ae apiError
		if json.Unmarshal(b, &ae) == nil && ae.Error != "" {
			return fmt.Errorf("lode agent: %s", ae.Error)
		}
		return fmt.Errorf("lode agent: %s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decoding the agent's answer to %s %s: %w", method, path, err)
		}
	}
	return nil
}

func newAgentMountCmd(socket *string) *cobra.Command {
	return &cobra.Command{
		Use:   "mount NAME DIR",
		Short: "Ask the agent daemon to mount an image read-only at DIR",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			var st servedStatus
			req := mountRequest{Image: args[0], Tenant: global.tenant, Dir: dir}
			if err := newAgentClient(*socket).call(cmd.Context(), http.MethodPost, "/v1/mounts", req, &st); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s%s/%s at %s (%d bytes, loop %s)\n", mountedLine, st.Tenant, st.Image, st.Dir, st.Stats.ImageSize, st.Loop)
			return nil
		},
	}
}

func newAgentUmountCmd(socket *string) *cobra.Command {
	return &cobra.Command{
		Use:   "umount DIR",
		Short: "Ask the agent daemon to unmount DIR",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			var st servedStatus
			if err := newAgentClient(*socket).call(cmd.Context(), http.MethodDelete, "/v1/mounts?dir="+url.QueryEscape(dir), nil, &st); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "unmounted %s (%s/%s)\n", st.Dir, st.Tenant, st.Image)
			return nil
		},
	}
}

func newAgentExportCmd(socket *string) *cobra.Command {
	var req exportRequest
	cmd := &cobra.Command{
		Use:   "export NAME --listen ADDR|unix:PATH",
		Short: "Ask the agent daemon to export an image over NBD",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Image, req.Tenant = args[0], global.tenant
			var st servedStatus
			if err := newAgentClient(*socket).call(cmd.Context(), http.MethodPost, "/v1/exports", req, &st); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "exporting %s/%s (%d bytes) as %q on %s\n", st.Tenant, st.Image, st.Stats.ImageSize, st.Export, st.Listen)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Listen, "listen", "", "address to listen on: HOST:PORT or unix:PATH")
	f.StringVar(&req.Export, "export", "", "export name (default: the image name)")
	f.StringVar(&req.Overlay, "overlay", "", "copy-on-write file for writes (makes the export writable)")
	cmd.MarkFlagRequired("listen")
	return cmd
}

func newAgentUnexportCmd(socket *string) *cobra.Command {
	return &cobra.Command{
		Use:   "unexport ADDR",
		Short: "Ask the agent daemon to stop the NBD export listening on ADDR",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var st servedStatus
			if err := newAgentClient(*socket).call(cmd.Context(), http.MethodDelete, "/v1/exports?listen="+url.QueryEscape(args[0]), nil, &st); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "stopped exporting %s/%s on %s\n", st.Tenant, st.Image, st.Listen)
			return nil
		},
	}
}

func newAgentStatusCmd(socket *string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what the agent daemon serves and what each image read",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var st agentStatus
			if err := newAgentClient(*socket).call(cmd.Context(), http.MethodGet, "/v1/status", nil, &st); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printAgentStatus(stdout, st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

func printAgentStatus(out io.Writer, st agentStatus) {
	fmt.Fprintf(out, "memory cache %s, disk cache %s in %d chunks\n",
		humanize.IBytes(uint64(st.MemCacheBytes)), humanize.IBytes(uint64(st.DiskCacheBytes)), st.DiskCacheFiles)
	line := func(kind, where string, s servedStatus) {
		var tiers []string
		for _, t := range s.Stats.Tiers {
			tiers = append(tiers, fmt.Sprintf("%s %d", t.Tier, t.Hits))
		}
		fmt.Fprintf(out, "%s %s: %s/%s (root %s) read %s, %.2f%% of %s; chunk reads: memory %d, %s; %d errors\n",
			kind, where, s.Tenant, s.Image, strings.Join(s.Roots, ","), humanize.IBytes(uint64(s.Stats.BytesRead)),
			100*float64(s.Stats.DistinctBytesRead)/float64(max(1, s.Stats.ImageSize)), humanize.IBytes(uint64(s.Stats.ImageSize)),
			s.Stats.MemHits, strings.Join(tiers, ", "), s.Stats.FetchErrors)
	}
	for _, s := range st.Mounts {
		line("mount", s.Dir, s)
	}
	for _, s := range st.Exports {
		line("export", s.Listen, s)
	}
	if len(st.Mounts)+len(st.Exports) == 0 {
		fmt.Fprintln(out, "no mounts or exports")
	}
	printSnapshots(out, st.Snapshots)
}

// Takeover: a new agent takes a running one's mounts and exports, so an
// upgrade does not unmount anything (docs/operations.md, "Upgrades").
//
// The new agent sends POST /v1/takeover on the old one's socket; the old
// one answers 101 and the connection becomes a sequence of length-prefixed
// JSON messages (fuse.WriteMessage): hello (new → old), plan (old → new),
// one fuse.HandOver per mount (the /dev/fuse descriptor travels with it,
// the new side acknowledges), then done (old → new) with the exports the
// new agent restarts once the old one has stopped them and released the
// socket.

const takeoverProtocol = "lode-takeover/1"

type takeoverHello struct {
	Version int `json:"version"`
	PID     int `json:"pid"`
}

type takeoverPlan struct {
	Mounts int `json:"mounts"`
}

// takeoverMount travels with each mount: what the new agent needs to
// reopen the same image.
type takeoverMount struct {
	Tenant   string    `json:"tenant"`
	Image    string    `json:"image"`
	Manifest string    `json:"manifest"`
	Roots    []string  `json:"roots"`
	Since    time.Time `json:"since"`
}

type takeoverDone struct {
	Handed  int             `json:"handed"`
	Failed  []string        `json:"failed,omitempty"` // dirs the old agent unmounts as it exits
	Exports []exportRequest `json:"exports"`
}

// afterTakenOver returns nil, at once or (--after-takeover=wait) when ctx
// ends; nothing is unmounted either way.
func (d *daemon) afterTakenOver(ctx context.Context) error {
	if d.o.afterTakeover == "wait" {
		d.log.Info("taken over by a new agent: waiting for a signal to exit (nothing is unmounted)")
		<-ctx.Done()
	}
	d.log.Info("taken over by a new agent: exiting without unmounting")
	return nil
}

// socketAnswers reports whether something accepts on the unix socket path.
func socketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// postTakeover is the old agent's side: it refuses new work, switches the
// connection to the takeover protocol and hands everything over.
func (d *daemon) postTakeover(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		writeError(w, http.StatusConflict, errors.New("the agent is shutting down or already being taken over"))
		return
	}
	d.closing = true // no new mounts, exports or unmounts from here on
	d.mu.Unlock()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		d.reopen()
		writeError(w, http.StatusInternalServerError, fmt.Errorf("taking the connection over: %w", err))
		return
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		conn.Close()
		d.reopen()
		return
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + takeoverProtocol + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		uc.Close()
		d.reopen()
		return
	}
	go d.handOver(uc)
}

// reopen takes requests again after a takeover that did not happen.
func (d *daemon) reopen() {
	d.mu.Lock()
	d.closing = false
	d.mu.Unlock()
}

// handOver runs the old agent's side of the takeover protocol on c.
func (d *daemon) handOver(c *net.UnixConn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	var hello takeoverHello
	if err := fuse.ReadMessage(c, &hello); err != nil {
		d.log.Warn("takeover: no hello from the new agent", slog.Any("err", err))
		d.reopen()
		return
	}
	c.SetDeadline(time.Time{})
	d.log.Info("handing everything over to a new agent", slog.Int("pid", hello.PID))
	d.mu.Lock()
	var ms, es []*served
	for _, s := range d.mounts {
		if s.im != nil && s.mount != nil {
			ms = append(ms, s)
		}
	}
	for _, s := range d.exports {
		if s.im != nil && s.nbdDone != nil {
			es = append(es, s)
		}
	}
	d.mu.Unlock()
	if err := fuse.WriteMessage(c, takeoverPlan{Mounts: len(ms)}); err != nil {
		d.log.Warn("takeover: the new agent went away", slog.Any("err", err))
		d.reopen()
		return
	}
	done := takeoverDone{Exports: []exportRequest{}}
	for _, s := range ms {
		meta := takeoverMount{Tenant: s.tenant, Image: s.image, Manifest: s.manifestID, Since: s.since}
		for _, r := range s.attached() {
			meta.Roots = append(meta.Roots, string(r))
		}
		if err := s.mount.HandOver(ctx, c, meta); err != nil {
			d.log.Error("takeover: handing a mount over failed; it is unmounted when this agent exits",
				slog.String("dir", s.dir), slog.String("image", s.name()), slog.Any("err", err))
			done.Failed = append(done.Failed, s.dir)
			continue
		}
		done.Handed++
		d.log.Info("mount handed over", slog.String("dir", s.dir), slog.String("image", s.name()))
	}
	if len(ms) > 0 && done.Handed == 0 {
		// The new agent took nothing (gone, or refusing): keep serving.
		d.log.Error("takeover: no mount was taken over; serving on")
		d.reopen()
		return
	}
	// NBD is stateless between requests: stop the exports so that the new
	// agent can listen on their addresses; clients reconnect.
	for _, s := range es {
		done.Exports = append(done.Exports, exportRequest{Image: s.image, Tenant: s.tenant, Listen: s.listen, Export: s.export, Overlay: s.overlay})
		d.release(d.exports, s.listen, s)
		s.close()
	}
	d.apiStopped.Store(true)
	if d.stopAPI != nil {
		d.stopAPI() // unlinks the socket: the new agent listens on it next
	}
	if err := fuse.WriteMessage(c, done); err != nil {
		d.log.Error("takeover: telling the new agent it is done", slog.Any("err", err))
	}
	d.log.Info("taken over", slog.Int("mounts", done.Handed), slog.Int("failed", len(done.Failed)), slog.Int("exports", len(done.Exports)))
	close(d.takenOver)
}

// takeOver is the new agent's side: it takes every mount of the agent
// serving on the socket and returns the exports to restart once it
// listens there itself.
func (d *daemon) takeOver(ctx context.Context) ([]exportRequest, error) {
	fail := func(err error) ([]exportRequest, error) {
		return nil, fmt.Errorf("taking over from the agent on %s: %w", d.o.socket, err)
	}
	conn, err := net.DialTimeout("unix", d.o.socket, 5*time.Second)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	c := conn.(*net.UnixConn)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "POST /v1/takeover HTTP/1.1\r\nHost: lode-agent\r\nContent-Length: 0\r\n\r\n"); err != nil {
		return fail(err)
	}
	// The old agent sends nothing after its answer until our hello, so
	// the buffered reader cannot swallow a descriptor.
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fail(fmt.Errorf("reading its answer: %w", err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		var ae apiError
		if json.Unmarshal(b, &ae) == nil && ae.Error != "" {
			return fail(errors.New(ae.Error))
		}
		return fail(fmt.Errorf("%s (an agent that predates takeover: drain and stop it first)", resp.Status))
	}
	if br.Buffered() > 0 {
		return fail(errors.New("unexpected bytes after the switch"))
	}
	c.SetDeadline(time.Time{})
	if err := fuse.WriteMessage(c, takeoverHello{Version: 1, PID: os.Getpid()}); err != nil {
		return fail(err)
	}
	var plan takeoverPlan
	if err := fuse.ReadMessage(c, &plan); err != nil {
		return fail(err)
	}
	tctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	adopted := 0
	for range plan.Mounts {
		h, err := fuse.ReceiveHandover(tctx, c)
		if err != nil && adopted > 0 {
			// Keep what was adopted: failing would unmount it.
			d.log.Error("takeover broke off", slog.Int("adopted", adopted), slog.Any("err", err))
			return nil, nil
		}
		if err != nil {
			return fail(err)
		}
		if err := d.adopt(tctx, h); err != nil {
			d.log.Error("takeover: adopting a mount failed; the old agent unmounts it", slog.String("dir", h.Dir()), slog.Any("err", err))
			continue
		}
		adopted++
	}
	var done takeoverDone
	if err := fuse.ReadMessage(c, &done); err != nil {
		if adopted > 0 {
			d.log.Error("takeover broke off", slog.Int("adopted", adopted), slog.Any("err", err))
			return nil, nil
		}
		return fail(err)
	}
	d.log.Info("took over", slog.Int("mounts", done.Handed), slog.Any("failed", done.Failed), slog.Int("exports", len(done.Exports)))
	return done.Exports, nil
}

// adopt serves one mount handed over by the old agent, reading the same
// image (same manifest) through this agent.
func (d *daemon) adopt(ctx context.Context, h *fuse.Handover) error {
	var meta takeoverMount
	if err := json.Unmarshal(h.Meta(), &meta); err != nil || meta.Image == "" {
		err = fmt.Errorf("decoding the mount's image: %v", err)
		h.Reject(err)
		return err
	}
	s, err := d.open(ctx, meta.Tenant, meta.Image)
	if err != nil {
		h.Reject(err)
		return err
	}
	if s.manifestID != meta.Manifest {
		s.close()
		err := fmt.Errorf("image %s now names manifest %s, the mount serves %s", s.name(), s.manifestID, meta.Manifest)
		h.Reject(err)
		return err
	}
	mo := fuse.MountOptions{StateDir: d.o.stateDir}
	mo.Log = d.base
	m, err := h.Adopt(s.im, mo)
	if err != nil {
		s.close()
		return err
	}
	s.dir, s.mount = h.Dir(), m
	if !meta.Since.IsZero() {
		s.since = meta.Since
	}
	d.mu.Lock()
	d.mounts[s.dir] = s
	d.mu.Unlock()
	d.watchMount(s)
	d.log.Info("mount taken over", slog.String("dir", s.dir), slog.String("image", s.name()), slog.String("loop", m.Loop()))
	return nil
}

// restartExports starts the exports the old agent stopped, on the same
// addresses.
func (d *daemon) restartExports(ctx context.Context, exports []exportRequest) {
	for _, req := range exports {
		s, err := d.startExport(ctx, req)
		if err != nil {
			d.log.Error("takeover: restarting an export", slog.String("image", req.Tenant+"/"+req.Image), slog.String("listen", req.Listen), slog.Any("err", err))
			continue
		}
		d.mu.Lock()
		d.exports[req.Listen] = s
		d.mu.Unlock()
		d.log.Info("export restarted", slog.String("image", s.name()), slog.String("listen", s.listen))
	}
}
