package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/metrics"
)

// globalOptions are the flags every subcommand shares. Each has an
// environment variable so daemons can be configured without flags.
type globalOptions struct {
	home      string // LODE_HOME: where the default store, keyring and caches live
	storeURL  string // LODE_STORE
	keyring   string // LODE_KEYRING
	tenant    string // LODE_TENANT
	logLevel  string
	logFormat string
	cpuProf   string
	execTrace string
}

var global globalOptions

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// defaultHome is $LODE_HOME, else $XDG_DATA_HOME/lode, else ~/.local/share/lode.
func defaultHome() string {
	if v := os.Getenv("LODE_HOME"); v != "" {
		return v
	}
	if v := os.Getenv("XDG_DATA_HOME"); v != "" {
		return filepath.Join(v, "lode")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "lode")
	}
	return filepath.Join(os.TempDir(), "lode")
}

func (g *globalOptions) storeLocation() string {
	if g.storeURL != "" {
		return g.storeURL
	}
	return "file://" + filepath.Join(g.home, "store")
}

func (g *globalOptions) keyringPath() string {
	if g.keyring != "" {
		return g.keyring
	}
	return filepath.Join(g.home, "keyring.json")
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "lode",
		Short: "Start containers from large images without downloading them first",
		Long: `lode flattens container images into deterministic ext4 images, cuts them into
512 KiB chunks, encrypts them convergently, deduplicates them across images and
tenants in an object store, and serves them on demand to workers through a
local cache and an erasure-coded cache fleet.

Defaults need no flags: the store is a directory under $LODE_HOME (default
~/.local/share/lode/store), the keyring is $LODE_HOME/keyring.json, and the
tenant is "default". Run "lode demo" for a tour.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if err := setupLogging(cmd); err != nil {
				return err
			}
			var err error
			stopProfiles, err = metrics.StartProfiles(global.cpuProf, global.execTrace)
			return err
		},
		PersistentPostRun: func(cmd *cobra.Command, args []string) { stopProfiles() },
	}
	f := root.PersistentFlags()
	f.StringVar(&global.home, "home", defaultHome(), "lode's data directory (env LODE_HOME)")
	f.StringVar(&global.storeURL, "store", os.Getenv("LODE_STORE"), "object store: file:///DIR, s3://BUCKET/PREFIX?endpoint=…, mem://NAME (env LODE_STORE; default file://$LODE_HOME/store)")
	f.StringVar(&global.keyring, "keyring", os.Getenv("LODE_KEYRING"), "keyring file (env LODE_KEYRING; default $LODE_HOME/keyring.json)")
	f.StringVar(&global.tenant, "tenant", envOr("LODE_TENANT", "default"), "tenant whose images and key to use (env LODE_TENANT)")
	f.StringVar(&global.logLevel, "log-level", envOr("LODE_LOG_LEVEL", "warn"), "log level: debug, info, warn, error")
	f.StringVar(&global.logFormat, "log-format", envOr("LODE_LOG_FORMAT", "text"), "log format: text or json")
	f.StringVar(&global.cpuProf, "cpuprofile", "", "write a CPU profile (go tool pprof) to this file")
	f.MarkHidden("cpuprofile")
	f.StringVar(&global.execTrace, "exectrace", "", "write a Go execution trace (go tool trace) to this file")
	f.MarkHidden("exectrace")

	root.AddCommand(newBuildCmd(), newImagesCmd(), newInspectCmd(), newKeysCmd(), newServeNBDCmd(), newMountCmd(), newUmountCmd(), newRunCmd(), newDemoCmd(), newCacheCmd())
	for _, add := range extraCommands {
		root.AddCommand(add())
	}
	return root
}

// extraCommands lets subcommand files register themselves without editing
// this file.
var extraCommands []func() *cobra.Command

var logger = slog.New(slog.DiscardHandler)

func setupLogging(cmd *cobra.Command) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(global.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: %w", global.logLevel, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(global.logFormat) {
	case "text":
		logger = slog.New(slog.NewTextHandler(stderr, opts))
	case "json":
		logger = slog.New(slog.NewJSONHandler(stderr, opts))
	default:
		return fmt.Errorf("--log-format %q: want text or json", global.logFormat)
	}
	return nil
}

// stopProfiles ends --cpuprofile and --exectrace (main calls it too: cobra
// skips PersistentPostRun when a command fails).
var stopProfiles = func() {}
