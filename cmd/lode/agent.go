package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/worker"
)

// agent.go is `lode agent` (internal/worker.Daemon) and its clients.

func init() { extraCommands = append(extraCommands, newAgentCmd) }

// agentOptions are the flags of lode agent.
type agentOptions struct {
	d          worker.DaemonConfig
	containerd containerdOptions
}

func newAgentCmd() *cobra.Command {
	var o agentOptions
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
			return runAgent(cmd.Context(), o, nil)
		},
	}
	cmd.PersistentFlags().StringVar(&o.d.Socket, "socket", envOr("LODE_AGENT_SOCKET", worker.DefaultSocket), "control socket of the daemon (env LODE_AGENT_SOCKET)")
	f := cmd.Flags()
	f.StringVar(&o.d.MetricsListen, "metrics-listen", "", "also serve Prometheus /metrics and /healthz on this TCP address")
	f.StringVar(&o.d.StateDir, "state-dir", fuse.DefaultStateDir, "where mount state lives (lode umount and lode doctor read it)")
	f.DurationVar(&o.d.Refresh, "refresh", time.Minute, "how often to re-read the pointers and root states of served images (0 disables)")
	f.IntVar(&o.d.MaxStarts, "max-starts", 64, "mounts and exports starting at once: a start holds its slot until its first reads are over (250 ms without a read, at most --start-window); past it a request waits --start-wait, then fails with \"too many starts in flight\" (0: unbounded)")
	f.DurationVar(&o.d.StartWait, "start-wait", 2*time.Second, "how long a start waits for a slot before it is refused")
	f.DurationVar(&o.d.StartWindow, "start-window", 10*time.Second, "for this long after a mount or export, its reads count as a start's: starts share at most three quarters of --max-fetches, so running containers' reads keep the rest (0: no distinction)")
	f.DurationVar(&o.d.ResolveTTL, "resolve-ttl", time.Second, "how long a start reuses an image's pointer read by an earlier start (a new build or a delete is seen within it); up to --resolve-stale a start uses the pointer it has while one background read refreshes it; negative: read the pointer at every start")
	f.DurationVar(&o.d.ResolveStale, "resolve-stale", 30*time.Second, "oldest pointer a start uses while refreshing it in the background")
	f.Int64Var(&o.d.ManifestCache, "manifest-cache-size", 256<<20, "bytes of opened manifests kept for new starts (content-addressed, never stale)")
	f.Int64Var(&o.d.WarmMemory, "warm-memory", 64<<20, "bytes of chunk buffers written ahead of cold starts, at start and again when starts used them up and the agent is quiet (at most --mem-cache-size; 0 disables): a start then does not pay the first write of new memory (docs/coldstart.md)")
	f.BoolVar(&o.d.Takeover, "takeover", true, "if another agent serves on --socket, take its mounts and exports over (it then exits 0) instead of failing")
	f.StringVar(&o.d.AfterTakeover, "after-takeover", "exit", `once taken over by a new agent: "exit" 0 at once, or "wait" for SIGTERM first (for supervisors that restart a process that exits, e.g. a Kubernetes pod being replaced)`)
	bindWorker(f, &o.d.Worker)
	bindFill(f, &o.d.Fill)
	o.containerd.bind(f)
	cmd.AddCommand(newAgentMountCmd(&o.d.Socket), newAgentUmountCmd(&o.d.Socket), newAgentStatusCmd(&o.d.Socket),
		newAgentExportCmd(&o.d.Socket), newAgentUnexportCmd(&o.d.Socket))
	return cmd
}

// runAgent wires lode agent: the daemon over the store and keyring the
// global flags name, serving until ctx ends. ready, if not nil, is closed
// once the control socket serves.
func runAgent(ctx context.Context, o agentOptions, ready chan<- struct{}) error {
	st, err := openStore(ctx)
	if err != nil {
		return err
	}
	kr, err := openKeyring()
	if err != nil {
		return err
	}
	c := o.d
	c.Worker = workerDefaults(c.Worker)
	c.Store, c.Keyring, c.Tenant, c.Log = st, kr, global.tenant, logger
	d, err := worker.NewDaemon(ctx, c)
	if err != nil {
		return err
	}
	addSnapshotter(d, o.containerd, st, global.tenant)
	return d.Run(ctx, ready)
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
			st, err := worker.NewClient(*socket).Mount(cmd.Context(), worker.MountRequest{Image: args[0], Tenant: global.tenant, Dir: dir})
			if err != nil {
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
			st, err := worker.NewClient(*socket).Unmount(cmd.Context(), dir)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "unmounted %s (%s/%s)\n", st.Dir, st.Tenant, st.Image)
			return nil
		},
	}
}

func newAgentExportCmd(socket *string) *cobra.Command {
	var req worker.ExportRequest
	cmd := &cobra.Command{
		Use:   "export NAME --listen ADDR|unix:PATH",
		Short: "Ask the agent daemon to export an image over NBD",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Image, req.Tenant = args[0], global.tenant
			st, err := worker.NewClient(*socket).Export(cmd.Context(), req)
			if err != nil {
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
			st, err := worker.NewClient(*socket).Unexport(cmd.Context(), args[0])
			if err != nil {
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
			st, err := worker.NewClient(*socket).Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			worker.WriteStatus(stdout, st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}
