package worker

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/lodetest"
)

// A service registered with AddService serves on its socket while the
// daemon runs and stops (its context ends, its socket closes) when the
// daemon does.
func TestDaemonService(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	home := t.TempDir()
	var log syncBuffer
	d, err := NewDaemon(context.Background(), testDaemonConfig(home, w, &log))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(home, "svc.sock")
	stopped := make(chan struct{})
	d.AddService(Service{Name: "echo", Socket: sock, Serve: func(ctx context.Context, l net.Listener) error {
		defer close(stopped)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "echo "+r.URL.Path) })}
		go func() { <-ctx.Done(); srv.Close() }()
		return srv.Serve(l)
	}})
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx, ready) }()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("Run returned before serving: %v", err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://svc/hi")
	if err != nil {
		t.Fatalf("the service does not answer on %s: %v", sock, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "echo /hi" {
		t.Errorf("the service answered %q", b)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("service socket mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("Run = %v after cancel", err)
	}
	select {
	case <-stopped:
	default:
		t.Errorf("the service still serves after the daemon returned")
	}
}

// MountImage mounts an image through the daemon (it shows in the status and
// reads the built bytes), and release unmounts it.
func TestDaemonMountImage(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.FUSE, lodetest.Loop)
	w := imagetest.NewWorld(t, "default")
	img := w.Build(t, "default", "demo", 2, 6, 64<<10)
	home := t.TempDir()
	var log syncBuffer
	d, err := NewDaemon(context.Background(), testDaemonConfig(home, w, &log))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	dir := filepath.Join(home, "mnt")
	release, err := d.MountImage(context.Background(), "", "demo", dir)
	if err != nil {
		t.Fatalf("MountImage: %v\n%s", err, log.String())
	}
	st := d.status()
	if len(st.Mounts) != 1 || st.Mounts[0].Dir != dir || st.Mounts[0].Image != img.Name {
		t.Errorf("status mounts = %+v, want demo at %s", st.Mounts, dir)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "data"))
	if err != nil || len(ents) != 6 {
		t.Errorf("the mount lists %d files in data/, %v; want 6", len(ents), err)
	}
	if err := release(); err != nil {
		t.Fatalf("release: %v", err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+dir+" ") {
		t.Errorf("%s is still mounted after release", dir)
	}
	if err := release(); err == nil {
		t.Errorf("a second release = nil, want an error")
	}
}

// Mount with a Source refuses an image whose manifest records another
// source digest, and mounts nothing (the containerd snapshotter's guard);
// with the recorded one it mounts. Unmount releases a mount by directory.
func TestDaemonMountSource(t *testing.T) {
	lodetest.Require(t, lodetest.Root, lodetest.FUSE, lodetest.Loop)
	w := imagetest.NewWorld(t, "default")
	img := w.Build(t, "default", "demo", 3, 4, 64<<10)
	home := t.TempDir()
	var log syncBuffer
	d, err := NewDaemon(context.Background(), testDaemonConfig(home, w, &log))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	dir := filepath.Join(home, "mnt")
	wrong := "sha256:" + strings.Repeat("0", 64)
	if _, err := d.Mount(context.Background(), MountRequest{Image: "demo", Dir: dir, Source: wrong}); !errors.Is(err, ErrSourceMismatch) {
		t.Fatalf("Mount with source %s = %v, want ErrSourceMismatch", wrong, err)
	}
	if st := d.status(); len(st.Mounts) != 0 {
		t.Errorf("a refused mount shows in the status: %+v", st.Mounts)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+dir+" ") {
		t.Errorf("%s is mounted after a refused mount", dir)
	}
	if _, err := d.Mount(context.Background(), MountRequest{Image: "demo", Dir: dir, Source: img.M.SourceDigest}); err != nil {
		t.Fatalf("Mount with the recorded source %s: %v", img.M.SourceDigest, err)
	}
	if err := d.Unmount(dir); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), " "+dir+" ") {
		t.Errorf("%s is still mounted after Unmount", dir)
	}
}
