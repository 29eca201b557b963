package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	snpkg "github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/snapshotter"
	"github.com/lode-dev/lode/internal/worker"
)

// tarLayer is an OCI gzip layer of files (name → body; a body starting
// with "->" makes a symlink to the rest).
func tarLayer(t *testing.T, files map[string][]byte) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	for _, n := range names {
		for d := filepath.Dir(n); d != "."; d = filepath.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: time.Unix(0, 0)})
			}
		}
		b := files[n]
		if target, ok := bytes.CutPrefix(b, []byte("->")); ok {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: n, Linkname: string(target), Mode: 0o777, ModTime: time.Unix(0, 0)})
			continue
		}
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o755, Size: int64(len(b)), ModTime: time.Unix(0, 0)})
		tw.Write(b)
	}
	tw.Close()
	raw := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// busyboxLayer is a base layer: /bin/busybox (static, from the host) and
// the applets the tests call.
func busyboxLayer(t *testing.T) v1.Layer {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("needs busybox-static (scripts/setup.sh): %v", err)
	}
	files := map[string][]byte{"bin/busybox": bb, "tmp/.keep": nil}
	for _, a := range []string{"sh", "cat", "echo", "sleep", "ls", "mv", "rm"} {
		files["bin/"+a] = []byte("->busybox")
	}
	return tarLayer(t, files)
}

// ociImage assembles an OCI image of layers with cmd.
func ociImage(t *testing.T, cmd []string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.Config(img, v1.Config{Cmd: cmd, Env: []string{"PATH=/bin"}}); err != nil {
		t.Fatal(err)
	}
	return img
}

// push writes img to the registry as ref (plain HTTP).
func push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
}

// buildFrom builds img with "lode build oci:…" as name: the lode image
// records img's manifest digest as its source.
func (c *cli) buildFrom(t *testing.T, img v1.Image, imageName string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "img"})); err != nil {
		t.Fatal(err)
	}
	if err := c.execLode(t, "build", "oci:"+dir+":img", "--name", imageName); err != nil {
		t.Fatalf("lode build: %v\n%s", err, c.stderr.String())
	}
}

// containerdEnv is a lode agent serving containerd's snapshots API, a
// containerd using it, and a registry.
type containerdEnv struct {
	c        *cli
	agent    *runningAgent
	ctrd     *lodetest.ContainerdDaemon
	reg      *lodetest.Registry
	registry string // host:port
	snRoot   string
	dir      string // short directory for the sockets
	sock     string // the snapshotter's socket
	ns       string // containerd namespace (runc's state is per namespace, machine-wide)
}

// startAgent runs "lode agent --containerd-socket …" in the background
// until the test ends; with takeover it takes over from the running one.
func (e *containerdEnv) startAgent(t *testing.T, takeover bool) *runningAgent {
	t.Helper()
	a := &runningAgent{socket: filepath.Join(e.dir, "agent.sock"), stateDir: filepath.Join(e.c.home, "mounts"), errc: make(chan error, 1)}
	o := agentOptions{d: worker.DaemonConfig{Socket: a.socket, StateDir: a.stateDir, Worker: e.c.workerOpts(), Takeover: takeover, AfterTakeover: "exit",
		ResolveTTL: -1}, // a rebuild is seen by the next mount
		containerd: containerdOptions{socket: e.sock, root: e.snRoot, hostsDir: e.ctrd.HostsDir}}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	ready := make(chan struct{})
	go func() { a.errc <- runAgent(ctx, o, ready) }()
	select {
	case <-ready:
	case err := <-a.errc:
		t.Fatalf("lode agent returned before serving: %v", err)
	}
	// Registered after containerd's cleanup, so it runs first: the agent
	// unmounts while containerd still runs, then containerd stops.
	t.Cleanup(func() { a.stop(t) })
	a.client = worker.NewClient(a.socket)
	return a
}

func newContainerdEnv(t *testing.T, sandboxImage func(registry string) string) *containerdEnv {
	t.Helper()
	requireMount(t)
	lodetest.Require(t, lodetest.Containerd, lodetest.DockerRegistry)
	e := &containerdEnv{c: newCLI(t)}
	if err := e.c.execLode(t, "keys", "create"); err != nil {
		t.Fatal(err)
	}
	e.reg = lodetest.StartRegistry(t, lodetest.RegistryOptions{})
	e.registry = e.reg.Host
	dir, err := os.MkdirTemp("", "lsn-") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sn.sock")
	sandbox := ""
	if sandboxImage != nil {
		sandbox = sandboxImage(e.registry)
	}
	e.ctrd = lodetest.StartContainerd(t, lodetest.ContainerdConfig{Snapshotter: sock, Registries: []string{e.registry}, SandboxImage: sandbox})
	e.snRoot = filepath.Join(e.c.home, "containerd")
	e.dir, e.sock, e.ns = dir, sock, "lode-test-"+filepath.Base(dir)
	e.agent = e.startAgent(t, false)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lode agent log:\n%s%s", e.c.log.String(), e.c.stderr.String())
			t.Logf("containerd log:\n%s", e.ctrd.Log())
		}
	})
	return e
}

func (e *containerdEnv) ctr(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", e.ctrd.Socket, "--namespace", e.ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ctrRunWant runs `ctr run --rm --snapshotter lode REF ID [CMD...]` and
// fails the test (naming the container as what) unless it printed want.
// ctr can exit before it has copied the container's last output
// (containerd's task I/O: the exit can beat the copy of the output FIFO's
// tail; seen once under CI load, with "no-ls" lost from the end): an
// output that is a proper prefix of want is that race, not a wrong result,
// so the container runs again, under a new ID, at most twice more. Any
// other output fails at once.
func (e *containerdEnv) ctrRunWant(t *testing.T, want, what, ref, id string, cmd ...string) {
	t.Helper()
	run := func(id string) string {
		return e.ctr(t, append([]string{"run", "--rm", "--snapshotter", "lode", ref, id}, cmd...)...)
	}
	out := run(id)
	for try := 1; try <= 2 && out != want && strings.HasPrefix(want, out); try++ {
		t.Logf("%s printed %q, a prefix of %q (ctr lost its tail): running it again", what, out, want)
		out = run(fmt.Sprintf("%s-again%d", id, try))
	}
	if out != want {
		t.Errorf("%s printed %q, want %q", what, out, want)
	}
}

func (e *containerdEnv) metric(t *testing.T, name string) string {
	t.Helper()
	text, err := e.agent.client.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, name) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// snapshots returns the snapshotter's part of the agent's status.
func (e *containerdEnv) snapshots(t *testing.T) []snapshotter.SnapshotStatus {
	t.Helper()
	for _, s := range e.agent.status(t).Services {
		if s.Name != "containerd snapshotter" {
			continue
		}
		b, _ := json.Marshal(s.Status)
		var out []snapshotter.SnapshotStatus
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	t.Fatal("no containerd snapshotter in the agent's status")
	return nil
}

// waitRemoved waits (20 s at most) until, after the removal named by what,
// containerd lists no snapshot, the agent serves no mount and the
// snapshotter's mounts/ directory (and snapshots/, with snapshotDirs) is
// empty.
func (e *containerdEnv) waitRemoved(t *testing.T, what string, snapshotDirs bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		sns, st := e.snapshots(t), e.agent.status(t)
		ents, _ := os.ReadDir(filepath.Join(e.snRoot, "mounts"))
		var snaps []os.DirEntry
		if snapshotDirs {
			snaps, _ = os.ReadDir(filepath.Join(e.snRoot, "snapshots"))
		}
		if len(sns) == 0 && len(st.Mounts) == 0 && len(ents) == 0 && len(snaps) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: snapshots %+v, %d agent mounts, mounts/ %v, snapshots/ %v", what, sns, len(st.Mounts), ents, snaps)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *containerdEnv) kinds(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, s := range e.snapshots(t) {
		if s.State == "committed" {
			// containerd names the snapshots it commits NAMESPACE/ID/CHAIN;
			// remote ones have the bare chain ID.
			out[s.Name[strings.LastIndex(s.Name, "/")+1:]] = s.Kind
		}
	}
	return out
}

func chainIDs(t *testing.T, img v1.Image) []string {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	chain := ""
	for _, d := range cf.RootFS.DiffIDs {
		if chain == "" {
			chain = d.String()
		} else {
			chain = digest.FromString(chain + " " + d.String()).String()
		}
		out = append(out, chain)
	}
	return out
}

// TestContainerdGoClient: containerd's Go client pulls a lode-built image
// with the lode snapshotter and the snapshot-label handler (as nerdctl
// does): no layer blob is downloaded, and `ctr run --snapshotter lode`
// runs it from the lode mount with an overlayfs upper layer. An image lode
// does not know, sharing the base, falls back (and materializes the base
// chain lode answered remotely). Removing both images releases everything.
func TestContainerdGoClient(t *testing.T) {
	e := newContainerdEnv(t, nil)
	base := busyboxLayer(t)
	app := ociImage(t, []string{"/bin/cat", "/hello.txt"}, base, tarLayer(t, map[string][]byte{"hello.txt": []byte("hello from lode\n")}))
	other := ociImage(t, []string{"/bin/cat", "/other.txt"}, base, tarLayer(t, map[string][]byte{"other.txt": []byte("not built by lode\n")}))
	appRef, otherRef := e.registry+"/app:1", e.registry+"/other:1"
	push(t, appRef, app)
	push(t, otherRef, other)
	e.c.buildFrom(t, app, "app")

	ctx := context.Background()
	cl, err := containerd.New(e.ctrd.Socket, containerd.WithDefaultNamespace(e.ns))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, config.HostOptions{HostDir: config.HostDirFromRoot(e.ctrd.HostsDir)})})
	pull := func(ref string) {
		t.Helper()
		if _, err := cl.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter("lode"), containerd.WithResolver(resolver),
			containerd.WithImageHandlerWrapper(snpkg.AppendInfoHandlerWrapper(ref))); err != nil {
			t.Fatalf("pulling %s: %v", ref, err)
		}
	}
	layerDigests := func(img v1.Image) []v1.Hash {
		ls, _ := img.Layers()
		var out []v1.Hash
		for _, l := range ls {
			d, _ := l.Digest()
			out = append(out, d)
		}
		return out
	}

	pull(appRef)
	if log, err := os.ReadFile(e.reg.LogFile); err != nil {
		t.Fatal(err)
	} else {
		for _, d := range layerDigests(app) {
			if strings.Contains(string(log), "\"GET /v2/app/blobs/"+d.String()) {
				t.Errorf("the registry served layer %s of the lode image", d)
			}
		}
	}
	for _, d := range layerDigests(app) {
		if _, err := cl.ContentStore().Info(ctx, digest.Digest(d.String())); !errdefs.IsNotFound(err) {
			t.Errorf("layer %s of the lode image is in containerd's content store (err %v): it was downloaded", d, err)
		}
	}
	appChains := chainIDs(t, app)
	want := map[string]string{appChains[0]: snapshotter.KindRemoteLower, appChains[1]: snapshotter.KindRemote}
	if got := e.kinds(t); !equalMaps(got, want) {
		t.Errorf("snapshot kinds after pulling the lode image = %v, want %v", got, want)
	}
	e.ctrRunWant(t, "hello from lode\nw\nno-ls\n", "ctr run on the lode image", appRef, "app1", "/bin/sh", "-c", "cat /hello.txt; echo w > /hello.txt; mv /hello.txt /moved; cat /moved; rm /bin/ls; test -e /bin/ls || echo no-ls")
	// Writes went to that container's upper layer only.
	e.ctrRunWant(t, "hello from lode\n", "a second container", appRef, "app2")

	// The unknown image builds on the base chain lode answered remotely.
	pull(otherRef)
	// The check above can fail: the unknown image's own layer is fetched.
	if log, _ := os.ReadFile(e.reg.LogFile); !strings.Contains(string(log), "\"GET /v2/other/blobs/"+layerDigests(other)[1].String()) {
		t.Errorf("the registry's log shows no GET of the unknown image's top layer")
	}
	e.ctrRunWant(t, "not built by lode\n", "ctr run on the unknown image", otherRef, "other1")
	if got := e.kinds(t)[appChains[0]]; got != snapshotter.KindMaterialized {
		t.Errorf("shared base chain kind = %q, want %q", got, snapshotter.KindMaterialized)
	}
	if got := e.metric(t, "lode_snapshotter_fallback_total{reason=\"unknown_image\"}"); !strings.HasSuffix(got, " 1") {
		t.Errorf("fallback metric: %q, want 1", got)
	}
	if log := e.c.stderr.String(); !strings.Contains(log, "image not built by lode") || !strings.Contains(log, otherRef) {
		t.Errorf("no fallback log line naming %s", otherRef)
	}
	// The lode image still runs from its mount, on the materialized base.
	e.ctrRunWant(t, "hello from lode\n", "the lode image after the fallback", appRef, "app3")

	// Removal: containerd's GC removes the snapshots; the mount goes.
	e.ctr(t, "image", "rm", "--sync", appRef, otherRef)
	e.waitRemoved(t, "image rm", true)
	// lode doctor finds nothing to clean: no stale mount, loop device,
	// socket or state file.
	before := e.c.stdout.String()
	if err := e.c.execLode(t, "doctor", "--state-dir", e.agent.stateDir, "--socket", e.agent.socket); err != nil {
		t.Errorf("lode doctor after removal: %v\n%s", err, strings.TrimPrefix(e.c.stdout.String(), before))
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// crictl runs crictl against e's containerd and returns its trimmed output.
func (e *containerdEnv) crictl(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := lodetest.CrictlPath()
	if err != nil {
		t.Fatal(err)
	}
	ep := "unix://" + e.ctrd.Socket
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "60s"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("crictl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// TestContainerdCRI: containerd's CRI plugin with snapshotter = "lode" and
// snapshot annotations on, driven by crictl as kubelet would: pull, a
// host-network pod (no CNI) whose sandbox image lode does not know,
// create/start/exec in a container of the lode image, then removal.
func TestContainerdCRI(t *testing.T) {
	lodetest.Require(t, lodetest.Crictl)
	base := busyboxLayer(t)
	pause := ociImage(t, []string{"/bin/sleep", "3600"}, base)
	e := newContainerdEnv(t, func(registry string) string { return registry + "/pause:1" })
	push(t, e.registry+"/pause:1", pause)
	app := ociImage(t, []string{"/bin/sleep", "3600"}, base, tarLayer(t, map[string][]byte{"hello.txt": []byte("hello from lode\n")}))
	appRef := e.registry + "/app:1"
	push(t, appRef, app)
	e.c.buildFrom(t, app, "app")

	e.crictl(t, "pull", appRef)
	if got := e.kinds(t)[chainIDs(t, app)[1]]; got != snapshotter.KindRemote {
		t.Errorf("the lode image's top chain is %q after crictl pull, want %q", got, snapshotter.KindRemote)
	}
	dir := t.TempDir()
	pod := filepath.Join(dir, "pod.json")
	os.WriteFile(pod, []byte(`{"metadata":{"name":"lode-pod","namespace":"default","uid":"lode-pod-uid","attempt":1},
  "log_directory":"`+dir+`","linux":{"security_context":{"namespace_options":{"network":2}}}}`), 0o644)
	ctrCfg := filepath.Join(dir, "ctr.json")
	os.WriteFile(ctrCfg, []byte(`{"metadata":{"name":"app"},"image":{"image":"`+appRef+`"},"log_path":"app.log","linux":{}}`), 0o644)
	podID := e.crictl(t, "runp", pod)
	id := e.crictl(t, "create", podID, ctrCfg, pod)
	e.crictl(t, "start", id)
	if out := e.crictl(t, "exec", id, "/bin/cat", "/hello.txt"); out != "hello from lode" {
		t.Errorf("crictl exec cat /hello.txt = %q", out)
	}
	if out := e.crictl(t, "exec", id, "/bin/sh", "-c", "echo new > /hello.txt && mv /hello.txt /tmp/h && cat /tmp/h"); out != "new" {
		t.Errorf("crictl exec (write, rename) = %q", out)
	}
	// The sandbox image (not built by lode) is the lode image's base: its
	// one chain exists as remote-lower, so it was materialized.
	if got := e.metric(t, "lode_snapshotter_fallback_total{reason=\"materialized\"}"); !strings.HasSuffix(got, " 1") {
		t.Errorf("fallback metric after the sandbox started: %q, want 1", got)
	}
	if got := e.kinds(t)[chainIDs(t, app)[0]]; got != snapshotter.KindMaterialized {
		t.Errorf("the shared base chain is %q, want %q", got, snapshotter.KindMaterialized)
	}
	e.crictl(t, "stopp", podID)
	e.crictl(t, "rmp", podID)
	e.crictl(t, "rmi", appRef, e.registry+"/pause:1")
	e.waitRemoved(t, "crictl rmi", false)
}

// TestContainerdTakeover: a new agent takes the running one over (an
// upgrade) while a container of a lode image reads its root; the container
// goes on reading, and containerd reconnects to the socket for new
// containers and for the removal.
func TestContainerdTakeover(t *testing.T) {
	e := newContainerdEnv(t, nil)
	app := ociImage(t, []string{"/bin/cat", "/hello.txt"}, busyboxLayer(t), tarLayer(t, map[string][]byte{"hello.txt": []byte("hello from lode\n")}))
	appRef := e.registry + "/app:1"
	push(t, appRef, app)
	e.c.buildFrom(t, app, "app")
	ctx := context.Background()
	cl, err := containerd.New(e.ctrd.Socket, containerd.WithDefaultNamespace(e.ns))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, config.HostOptions{HostDir: config.HostDirFromRoot(e.ctrd.HostsDir)})})
	if _, err := cl.Pull(ctx, appRef, containerd.WithPullUnpack, containerd.WithPullSnapshotter("lode"), containerd.WithResolver(resolver),
		containerd.WithImageHandlerWrapper(snpkg.AppendInfoHandlerWrapper(appRef))); err != nil {
		t.Fatal(err)
	}
	// A reader that fails (exits 1) on the first read error. It lists the
	// image's own directories, not /: under /proc the processes of the
	// test's ctr exec come and go, and ls -R fails on an entry that vanished.
	e.ctr(t, "run", "-d", "--snapshotter", "lode", appRef, "reader", "/bin/sh", "-c",
		"while :; do /bin/cat /hello.txt > /dev/null || exit 1; /bin/ls -R /bin /hello.txt > /dev/null || exit 1; sleep 0.05; done")
	old := e.agent
	e.agent = e.startAgent(t, true)
	select {
	case err := <-old.errc:
		old.cancel = nil
		if err != nil {
			t.Fatalf("the old agent returned %v after the takeover", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the old agent did not exit after the takeover")
	}
	time.Sleep(500 * time.Millisecond) // the reader goes on through the new agent
	if out := e.ctr(t, "task", "ls"); !strings.Contains(out, "RUNNING") {
		t.Errorf("the reader is not running after the takeover:\n%s", out)
	}
	if out := e.ctr(t, "task", "exec", "--exec-id", "x", "reader", "/bin/cat", "/hello.txt"); out != "hello from lode\n" {
		t.Errorf("exec in the reader after the takeover printed %q", out)
	}
	e.ctrRunWant(t, "hello from lode\n", "a new container after the takeover", appRef, "after")
	if got := e.agent.status(t); len(got.Mounts) != 1 {
		t.Errorf("the new agent serves %d mounts, want the one image mount", len(got.Mounts))
	}
	e.ctr(t, "task", "kill", "-s", "KILL", "reader")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.ctr(t, "task", "ls"), "STOPPED") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	e.ctr(t, "task", "rm", "reader")
	e.ctr(t, "container", "rm", "reader")
	e.ctr(t, "image", "rm", "--sync", appRef)
	e.waitRemoved(t, "image rm", false)
}

// TestContainerdSharedBaseUnknownFirst is the other order of
// TestContainerdGoClient's shared base: the image lode does not know is
// pulled (and unpacked) first; the lode image then builds its remote top
// chain on that local base, downloads none of its layers, and both run.
func TestContainerdSharedBaseUnknownFirst(t *testing.T) {
	e := newContainerdEnv(t, nil)
	base := busyboxLayer(t)
	app := ociImage(t, []string{"/bin/cat", "/hello.txt"}, base, tarLayer(t, map[string][]byte{"hello.txt": []byte("hello from lode\n")}))
	other := ociImage(t, []string{"/bin/cat", "/other.txt"}, base, tarLayer(t, map[string][]byte{"other.txt": []byte("not built by lode\n")}))
	appRef, otherRef := e.registry+"/app:1", e.registry+"/other:1"
	push(t, appRef, app)
	push(t, otherRef, other)
	e.c.buildFrom(t, app, "app")
	ctx := context.Background()
	cl, err := containerd.New(e.ctrd.Socket, containerd.WithDefaultNamespace(e.ns))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, config.HostOptions{HostDir: config.HostDirFromRoot(e.ctrd.HostsDir)})})
	for _, ref := range []string{otherRef, appRef} {
		if _, err := cl.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter("lode"), containerd.WithResolver(resolver),
			containerd.WithImageHandlerWrapper(snpkg.AppendInfoHandlerWrapper(ref))); err != nil {
			t.Fatalf("pulling %s: %v", ref, err)
		}
	}
	chains := chainIDs(t, app)
	want := map[string]string{chains[0]: snapshotter.KindLocal, chains[1]: snapshotter.KindRemote, chainIDs(t, other)[1]: snapshotter.KindLocal}
	if got := e.kinds(t); !equalMaps(got, want) {
		t.Errorf("snapshot kinds = %v, want %v", got, want)
	}
	ls, _ := app.Layers()
	top, _ := ls[1].Digest()
	if log, _ := os.ReadFile(e.reg.LogFile); strings.Contains(string(log), "\"GET /v2/app/blobs/"+top.String()) {
		t.Errorf("the registry served the lode image's top layer %s", top)
	}
	// The lode image named "app" is rebuilt from another source before its
	// first container: its manifest no longer records the digest containerd
	// pulled, so it is never mounted for that snapshot.
	e.c.buildFrom(t, other, "app")
	out, err := exec.Command("ctr", "--address", e.ctrd.Socket, "--namespace", e.ns, "run", "--rm", "--snapshotter", "lode", appRef, "app0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "records source") {
		t.Errorf("ctr run of a lode image rebuilt from another source = %v, %q; want a refusal", err, out)
	}
	if st := e.agent.status(t); len(st.Mounts) != 0 {
		t.Errorf("the agent mounted %+v for a mismatched source", st.Mounts)
	}
	e.c.buildFrom(t, app, "app")
	e.ctrRunWant(t, "hello from lode\n", "the lode image", appRef, "app1")
	e.ctrRunWant(t, "not built by lode\n", "the unknown image", otherRef, "other1")
}
