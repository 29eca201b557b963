package snapshotter

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"google.golang.org/grpc"
)

// Runner opens the snapshotter when the daemon starts serving and closes it
// when it stops, so that across a takeover the old process has closed the
// metadata (bolt holds a file lock) before the new one opens it. Its Serve
// and Status plug into worker.Service.
type Runner struct {
	cfg Config

	mu sync.Mutex
	sn *Snapshotter
}

// NewRunner returns a Runner for cfg.
func NewRunner(cfg Config) *Runner { return &Runner{cfg: cfg} }

// Serve opens the snapshotter and serves its snapshots API on l until ctx
// ends, then finishes the calls in flight and closes it.
func (r *Runner) Serve(ctx context.Context, l net.Listener) error {
	sn, err := New(ctx, r.cfg)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.sn = sn
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.sn = nil
		r.mu.Unlock()
		sn.Close()
	}()
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			srv.GracefulStop()
		case <-stopped:
		}
	}()
	err = srv.Serve(l)
	close(stopped)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Status is the snapshots with their kinds and the lines lode agent status
// prints for them.
func (r *Runner) Status(ctx context.Context) (any, string) {
	r.mu.Lock()
	sn := r.sn
	r.mu.Unlock()
	if sn == nil {
		return []SnapshotStatus{}, ""
	}
	st, err := sn.Status(ctx)
	if err != nil {
		return []SnapshotStatus{}, fmt.Sprintf("containerd snapshots: %v\n", err)
	}
	return st, FormatStatus(st)
}

// FormatStatus prints snapshots by kind, then each one that is not local.
func FormatStatus(sns []SnapshotStatus) string {
	kinds := map[string]int{}
	for _, s := range sns {
		kinds[s.Kind]++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "containerd snapshots: %d remote, %d remote-lower, %d materialized, %d local\n",
		kinds[KindRemote], kinds[KindRemoteLower], kinds[KindMaterialized], kinds[KindLocal])
	for _, s := range sns {
		if s.Kind == KindLocal {
			continue
		}
		fmt.Fprintf(&b, "snapshot %s: %s %s", s.Name, s.State, s.Kind)
		if s.Image != "" {
			fmt.Fprintf(&b, " image %s", s.Image)
		}
		if s.Mount != "" {
			fmt.Fprintf(&b, " mounted at %s", s.Mount)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// SnapshotStatus is one snapshot as lode agent status shows it.
type SnapshotStatus struct {
	Name   string `json:"name"`
	Parent string `json:"parent,omitempty"`
	State  string `json:"state"` // active, committed or view (containerd's kinds)
	Kind   string `json:"kind"`  // KindLocal, KindRemote, KindRemoteLower, KindMaterialized
	Image  string `json:"image,omitempty"`
	Mount  string `json:"mount,omitempty"` // where a remote top chain's image is mounted
}

// Status lists the snapshots with their kinds, sorted by name.
func (s *Snapshotter) Status(ctx context.Context) ([]SnapshotStatus, error) {
	out := []SnapshotStatus{}
	err := s.inner.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		st := SnapshotStatus{Name: info.Name, Parent: info.Parent, State: strings.ToLower(info.Kind.String()), Kind: KindLocal, Image: info.Labels[labelImage]}
		if k := info.Labels[labelKind]; k != "" {
			st.Kind = k
		}
		s.mu.Lock()
		t := s.tops[info.Name]
		s.mu.Unlock()
		if t != nil {
			t.mu.Lock()
			if t.mounted {
				st.Mount = t.dir
			}
			t.mu.Unlock()
		}
		out = append(out, st)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}
