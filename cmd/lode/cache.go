package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/lode-dev/lode/internal/cachenode"
	"github.com/lode-dev/lode/internal/certs"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/lode-dev/lode/internal/worker"
	"github.com/spf13/cobra"
)

// newCacheCmd is `lode cache`: the shared cache fleet (docs/fleet.md).
func newCacheCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Run a node of the shared, erasure-coded chunk cache fleet",
	}
	var listen, mem, disk, diskSize string
	var tlsFiles certs.Files
	var insecure bool
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Serve shards over HTTP (GET/PUT/HEAD /v1/shards/..., /healthz, /metrics)",
		Long: `Serve a cache node: shards of chunk ciphertext under a memory budget and,
with --disk, a disk budget that memory evictions are demoted to. A node
restarted with the same --disk directory reuses its contents. Sizes accept
units (512MiB, 20GB) or plain bytes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			memBytes, err := humanize.ParseBytes(mem)
			if err != nil {
				return fmt.Errorf("parsing --mem %q: %w", mem, err)
			}
			worker.LimitMemory(int64(memBytes), logger)
			var diskBytes uint64
			if diskSize != "" {
				if diskBytes, err = humanize.ParseBytes(diskSize); err != nil {
					return fmt.Errorf("parsing --disk-size %q: %w", diskSize, err)
				}
			}
			sc := cachenode.ServerConfig{
				MemBytes: int64(memBytes), DiskDir: disk, DiskBytes: int64(diskBytes),
				Log: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)), Registry: metrics.NewRegistry(),
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return cachenode.ListenAndServe(ctx, listen, sc, tlsFiles, insecure)
		},
	}
	f := serve.Flags()
	f.StringVar(&listen, "listen", fmt.Sprintf("127.0.0.1:%d", fleetproto.DefaultPort), "address to serve on (another than loopback needs --tls-cert/--tls-key/--tls-ca or --insecure-no-tls)")
	f.StringVar(&tlsFiles.Cert, "tls-cert", "", "the node's certificate (`lode cache certs --node NAME`): every client must then present a worker certificate from --tls-ca")
	f.StringVar(&tlsFiles.Key, "tls-key", "", "the --tls-cert key")
	f.StringVar(&tlsFiles.CA, "tls-ca", "", "the fleet CA that workers' certificates must chain to")
	f.BoolVar(&insecure, "insecure-no-tls", false, "serve a non-loopback address without TLS: anyone who can connect can replace shards and take origin leases")
	f.StringVar(&mem, "mem", "1GiB", "memory budget for shards")
	f.StringVar(&disk, "disk", "", "directory for shards evicted from memory (optional)")
	f.StringVar(&diskSize, "disk-size", "", "disk budget (required with --disk)")
	cmd.AddCommand(serve, newCacheCertsCmd())
	return cmd
}

// newCacheCertsCmd is `lode cache certs`: the fleet CA and certificates.
func newCacheCertsCmd() *cobra.Command {
	var dir, node, worker, nbd string
	var hosts []string
	var validity time.Duration
	cmd := &cobra.Command{
		Use:   "certs --dir DIR (--node NAME --hosts H,… | --worker NAME | --nbd NAME)",
		Short: "Issue fleet certificates: a CA (made on first use) and node, worker or NBD certificates",
		Long: `Certs writes NAME.crt and NAME.key (mode 0600) into --dir, signed by the CA
there (ca.crt, ca.key; created on first use). Node certificates (role lode-node,
server auth) go to lode cache serve --tls-cert; worker certificates (role
lode-worker, client auth) to the workers' --fleet-tls-cert; NBD certificates
(role lode-nbd) to serve-nbd --tls-cert and its clients. To rotate, issue again
and replace the files: running nodes and workers pick them up at their next
handshake. docs/fleet.md gives the equivalent openssl commands.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var name string
			var role certs.Role
			switch {
			case node != "" && worker == "" && nbd == "":
				name, role = node, certs.RoleNode
			case worker != "" && node == "" && nbd == "":
				name, role = worker, certs.RoleWorker
			case nbd != "" && node == "" && worker == "":
				name, role = nbd, certs.RoleNBD
			default:
				return errors.New("give exactly one of --node, --worker, --nbd")
			}
			f, err := certs.Issue(dir, name, role, hosts, validity)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s %s: %s %s (CA %s)\n", role, name, f.Cert, f.Key, f.CA)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory of the CA and certificates")
	f.StringVar(&node, "node", "", "issue a cache node certificate with this name")
	f.StringVar(&worker, "worker", "", "issue a worker certificate with this name")
	f.StringVar(&nbd, "nbd", "", "issue an NBD server/client certificate with this name")
	f.StringSliceVar(&hosts, "hosts", nil, "IP addresses and DNS names the certificate serves (nodes, NBD servers)")
	f.DurationVar(&validity, "validity", 90*24*time.Hour, "how long the certificate is valid")
	cmd.MarkFlagRequired("dir")
	return cmd
}
