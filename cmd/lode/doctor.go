package main

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/worker"
)

// doctor.go is `lode doctor`: it finds what a crashed lode process left
// behind (issue #9) and, with --fix, cleans it.

func init() { extraCommands = append(extraCommands, newDoctorCmd) }

type doctorOptions struct {
	fix       bool
	stateDirs []string
	socket    string
	cacheDir  string
	minAge    time.Duration
}

func newDoctorCmd() *cobra.Command {
	var o doctorOptions
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Find (and with --fix clean) what crashed lode processes left behind",
		Long: `Doctor looks for leftovers of lode processes that died without cleaning up:

  stale mount     a lode mount whose serving process is gone (reads give EIO)
  stale loop      a loop device over a lode FUSE file with no live server
  stale fuse      a FUSE mount under the state dir with no live server
  stale socket    a unix socket nobody accepts on (agent or NBD)
  stale run dir   a lode run container dir under $LODE_HOME/run with no live mount
  cache temp      a disk-cache temporary file older than --min-age

It prints one line per finding. With --fix it tears stale mounts down (as
lode umount does), detaches the loop devices, unmounts the FUSE mounts and
removes the files, then looks again. The exit status is 0 when nothing is
left to fix and 1 otherwise. Mounts with a live server are never touched.`,
		Example: `  lode doctor
  lode doctor --fix`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDoctor(cmd.Context(), o, stdout)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.fix, "fix", false, "clean what is found")
	f.StringSliceVar(&o.stateDirs, "state-dir", []string{fuse.DefaultStateDir}, "mount state dirs to check (as given to lode mount/agent)")
	f.StringVar(&o.socket, "socket", envOr("LODE_AGENT_SOCKET", worker.DefaultSocket), "the agent's control socket; sockets next to it are checked too")
	f.StringVar(&o.cacheDir, "cache-dir", "", "disk cache to check for temporary files (default $LODE_HOME/cache)")
	f.DurationVar(&o.minAge, "min-age", 10*time.Minute, "only report run dirs and temporary files older than this (younger ones may be in use)")
	return cmd
}

// runDoctor wires lode doctor (worker.Doctor) to the home's run and cache
// dirs; problems left exit 1.
func runDoctor(ctx context.Context, o doctorOptions, out io.Writer) error {
	if o.cacheDir == "" {
		o.cacheDir = filepath.Join(global.home, "cache")
	}
	err := worker.Doctor(ctx, worker.DoctorOptions{
		Fix: o.fix, StateDirs: o.stateDirs, Socket: o.socket, RunDir: filepath.Join(global.home, "run"),
		CacheDir: o.cacheDir, MinAge: o.minAge,
	}, out)
	if errors.Is(err, worker.ErrProblems) {
		return &exitError{code: 1}
	}
	return err
}
