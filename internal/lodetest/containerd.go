package lodetest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ContainerdConfig configures a containerd started by Containerd.
type ContainerdConfig struct {
	// Snapshotter is the socket of a remote snapshotter registered as the
	// proxy plugin "lode" and made CRI's snapshotter ("" : overlayfs).
	Snapshotter string
	// Registries are host:port of plain-HTTP registries, written as
	// certs.d/HOST/hosts.toml under HostsDir (CRI's registry config_path).
	Registries []string
	// SandboxImage is CRI's sandbox (pause) image.
	SandboxImage string
}

// ContainerdDaemon is a running containerd.
type ContainerdDaemon struct {
	Socket   string // its gRPC socket
	Root     string
	HostsDir string // certs.d: hosts.toml per registry host
	log      *bytes.Buffer
	logMu    *sync.Mutex
}

// Log returns what containerd logged so far.
func (c *ContainerdDaemon) Log() string {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	return c.log.String()
}

// Containerd requires containerd (Debian's package, 1.6), runc and root.
func Containerd() error {
	for _, r := range []Requirement{Root, Tool("containerd"), Tool("containerd-shim-runc-v2"), Tool("runc"), Tool("ctr")} {
		if err := r(); err != nil {
			return err
		}
	}
	return nil
}

// StartContainerd starts containerd with a temporary root, state and
// config, its CRI plugin on (host-network pods only: no CNI), and stops it
// (and unmounts what it left) when t ends.
func StartContainerd(t testing.TB, cfg ContainerdConfig) *ContainerdDaemon {
	t.Helper()
	Require(t, Containerd)
	// Short paths: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &ContainerdDaemon{Socket: filepath.Join(dir, "c.sock"), Root: filepath.Join(dir, "root"),
		HostsDir: filepath.Join(dir, "certs.d"), log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	for _, h := range cfg.Registries {
		hd := filepath.Join(c.HostsDir, h)
		os.MkdirAll(hd, 0o755)
		toml := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", h, h)
		if err := os.WriteFile(filepath.Join(hd, "hosts.toml"), []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version = 2\nroot = %q\nstate = %q\n", c.Root, filepath.Join(dir, "state"))
	fmt.Fprintf(&b, "disabled_plugins = [\"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\"]\n")
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n", c.Socket)
	fmt.Fprintf(&b, "[ttrpc]\n  address = %q\n", filepath.Join(dir, "t.sock"))
	fmt.Fprintf(&b, "[debug]\n  level = \"info\"\n")
	snap := "overlayfs"
	if cfg.Snapshotter != "" {
		snap = "lode"
		fmt.Fprintf(&b, "[proxy_plugins]\n  [proxy_plugins.lode]\n    type = \"snapshot\"\n    address = %q\n", cfg.Snapshotter)
	}
	cri := `[plugins."io.containerd.grpc.v1.cri"]`
	// restrict_oom_score_adj: sandboxes ask for -998, which a process
	// without CAP_SYS_RESOURCE (as in some CI sandboxes) may not set.
	fmt.Fprintf(&b, "%s\n  restrict_oom_score_adj = true\n  sandbox_image = %q\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n", cri, cfg.SandboxImage)
	fmt.Fprintf(&b, "  [%s.containerd]\n    snapshotter = %q\n    disable_snapshot_annotations = false\n", strings.Trim(cri, "[]"), snap)
	fmt.Fprintf(&b, "  [%s.registry]\n    config_path = %q\n", strings.Trim(cri, "[]"), c.HostsDir)
	fmt.Fprintf(&b, "  [%s.cni]\n    bin_dir = %q\n    conf_dir = %q\n", strings.Trim(cri, "[]"), filepath.Join(dir, "cni"), filepath.Join(dir, "cni"))
	conf := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("containerd", "--config", conf)
	cmd.Stdout, cmd.Stderr = lockedWriterOf(c.log, c.logMu), lockedWriterOf(c.log, c.logMu)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting containerd: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		// Shims outlive containerd: end those of this root, then unmount
		// what containers and snapshots left.
		killShims(c.Socket)
		unmountUnder(dir)
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if conn, err := net.Dial("unix", c.Socket); err == nil {
			conn.Close()
			break
		}
		select {
		case <-done:
			t.Fatalf("containerd exited at start:\n%s", c.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not serve on %s within 20s:\n%s", c.Socket, c.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c
}

// killShims kills the runc shims containerd started with the given socket
// (they outlive containerd by design), found by their command lines.
func killShims(socket string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.HasSuffix(args[0], "containerd-shim-runc-v2") && slices.Contains(args, socket) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder lazily unmounts every mount below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mps = append(mps, f[4])
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		syscall.Unmount(mps[i], syscall.MNT_DETACH)
	}
}

func lockedWriterOf(b *bytes.Buffer, mu *sync.Mutex) *lockedBuffer {
	return &lockedBuffer{b: b, mu: mu}
}

type lockedBuffer struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Crictl requires crictl, built by scripts/setup.sh into ~/.cache/lode-tools.
func Crictl() error {
	_, err := CrictlPath()
	return err
}

// CrictlPath finds crictl: on PATH, else in ~/.cache/lode-tools.
func CrictlPath() (string, error) {
	if p, err := exec.LookPath("crictl"); err == nil {
		return p, nil
	}
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, ".cache", "lode-tools", "crictl")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("needs crictl (scripts/setup.sh builds it into %s): %w", p, err)
	}
	return p, nil
}
