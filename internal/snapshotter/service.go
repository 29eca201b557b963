package snapshotter

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// Server serves a snapshotter's snapshots v1 API (what containerd's
// [proxy_plugins] entry with type "snapshot" calls) on a unix socket.
type Server struct {
	path string
	srv  *grpc.Server
	l    net.Listener
	done chan error
}

// Serve listens on the unix socket path (mode 0600, replacing a stale
// socket) and serves sn until Stop.
func Serve(path string, sn snapshots.Snapshotter) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the directory of containerd socket %s: %w", path, err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("listening on containerd socket %s: something serves there already", path)
	}
	os.Remove(path)
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on containerd socket %s: %w", path, err)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	s := &Server{path: path, srv: srv, l: l, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(l) }()
	return s, nil
}

// Stop finishes the calls in flight (at most until ctx ends), closes the
// socket and removes it.
func (s *Server) Stop(ctx context.Context) {
	stopped := make(chan struct{})
	go func() { s.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-ctx.Done():
		s.srv.Stop()
	}
	<-s.done
	os.Remove(s.path)
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
