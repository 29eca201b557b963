package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/lode-dev/lode/internal/demo"
	"github.com/lode-dev/lode/internal/lodetest"
)

// TestContainerdStartBench is not a test: bench/containerd.sh runs it with
// LODE_CONTAINERD_BENCH=1 (it returns at once otherwise). It pushes the demo
// image (1 GiB payload, LODE_CONTAINERD_BENCH_PAYLOAD bytes if set) to a
// local registry, builds it with lode, and measures, caches cold, the time
// from `crictl pull` to the container's first output line through CRI:
// once with containerd's overlayfs snapshotter (full pull and unpack), once
// with the lode snapshotter, each on a fresh containerd (empty content
// store) and, for lode, a fresh agent (empty caches). It prints one line
// per run with the bytes read from the registry and from lode's store.
func TestContainerdStartBench(t *testing.T) {
	if os.Getenv("LODE_CONTAINERD_BENCH") == "" {
		return
	}
	requireMount(t)
	lodetest.Require(t, lodetest.Containerd, lodetest.DockerRegistry, lodetest.Crictl)
	payload := int64(1 << 30)
	if v := os.Getenv("LODE_CONTAINERD_BENCH_PAYLOAD"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		payload = n
	}
	c := newCLI(t)
	if err := c.execLode(t, "keys", "create"); err != nil {
		t.Fatal(err)
	}
	reg := lodetest.StartRegistry(t, lodetest.RegistryOptions{})
	layoutDir := filepath.Join(t.TempDir(), "demo")
	src, err := demo.WriteSample(context.Background(), layoutDir, demo.Options{PayloadBytes: payload})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(layoutDir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/demo:1"
	push(t, ref, img)
	push(t, reg.Host+"/pause:1", ociImage(t, []string{"/bin/sleep", "3600"}, busyboxLayer(t)))
	if err := c.execLode(t, "build", src, "--name", "demo"); err != nil {
		t.Fatalf("lode build: %v\n%s", err, c.stderr.String())
	}
	for _, mode := range []string{"overlayfs", "lode"} {
		t.Run(mode, func(t *testing.T) {
			e := &containerdEnv{c: c, reg: reg, registry: reg.Host}
			dir, err := os.MkdirTemp("", "lsn-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			e.dir, e.sock, e.ns = dir, filepath.Join(dir, "sn.sock"), "k8s.io"
			cfg := lodetest.ContainerdConfig{Registries: []string{reg.Host}, SandboxImage: reg.Host + "/pause:1"}
			if mode == "lode" {
				cfg.Snapshotter = e.sock
			}
			e.ctrd = lodetest.StartContainerd(t, cfg)
			if mode == "lode" {
				e.snRoot = filepath.Join(t.TempDir(), "containerd")
				saved := c.home
				c.home = t.TempDir() // a fresh disk cache (workerOpts)
				os.Symlink(filepath.Join(saved, "store"), filepath.Join(c.home, "store"))
				os.Symlink(filepath.Join(saved, "keyring.json"), filepath.Join(c.home, "keyring.json"))
				e.agent = e.startAgent(t, false)
				c.home = saved
			}
			logDir := t.TempDir()
			pod := filepath.Join(logDir, "pod.json")
			os.WriteFile(pod, []byte(`{"metadata":{"name":"bench","namespace":"default","uid":"bench-`+mode+`","attempt":1},
  "log_directory":"`+logDir+`","linux":{"security_context":{"namespace_options":{"network":2}}}}`), 0o644)
			ctrCfg := filepath.Join(logDir, "ctr.json")
			os.WriteFile(ctrCfg, []byte(`{"metadata":{"name":"demo"},"image":{"image":"`+ref+`"},"log_path":"demo.log","linux":{}}`), 0o644)
			podID := e.crictl(t, "runp", pod) // the sandbox is not timed
			exec.Command("sync").Run()
			if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
				t.Logf("dropping page caches: %v", err)
			}
			logStart := fileSize(reg.LogFile)
			start := time.Now()
			e.crictl(t, "pull", ref)
			pulled := time.Since(start)
			id := e.crictl(t, "create", podID, ctrCfg, pod)
			e.crictl(t, "start", id)
			logPath := filepath.Join(logDir, "demo.log")
			var first time.Duration
			for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(2 * time.Millisecond) {
				if fileSize(logPath) > 0 {
					first = time.Since(start)
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("no output from the container within 5 minutes")
				}
			}
			regBytes := registryBytes(t, reg.LogFile, logStart)
			var storeBytes int64
			if e.agent != nil {
				for _, m := range e.agent.status(t).Mounts {
					storeBytes += m.Stats.FetchedBytes
				}
			}
			line := fmt.Sprintf("%s: crictl pull → first output %.2fs (pull %.2fs); registry %d bytes; lode store %d bytes",
				mode, first.Seconds(), pulled.Seconds(), regBytes, storeBytes)
			fmt.Println("RESULT " + line)
			t.Log(line)
			e.crictl(t, "stopp", podID)
			e.crictl(t, "rmp", podID)
		})
	}
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// accessLine matches a registry access-log line's request and size.
var accessLine = regexp.MustCompile(`"GET [^"]*" \d{3} (\d+) `)

// registryBytes sums the bytes of the GET answers the registry logged after
// offset.
func registryBytes(t *testing.T, logFile string, offset int64) int64 {
	t.Helper()
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Seek(offset, 0)
	var n int64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if m := accessLine.FindStringSubmatch(sc.Text()); m != nil {
			v, _ := strconv.ParseInt(m[1], 10, 64)
			n += v
		}
	}
	return n
}
