package run

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/lode-dev/lode/internal/manifest"
)

// Sentinel errors.
var (
	// ErrNoCommand: neither the image nor the options give a command to run.
	ErrNoCommand = errors.New("no command to run")
	// ErrUserNotFound: the user name is not in the image's /etc/passwd.
	ErrUserNotFound = errors.New("user not found in image")
	// ErrGroupNotFound: the group name is not in the image's /etc/group.
	ErrGroupNotFound = errors.New("group not found in image")
	// ErrUnsafePath: a path inside the image cannot be resolved safely (a
	// symlink loop, or not a regular file where one is needed).
	ErrUnsafePath = errors.New("unsafe path in image")
	// ErrBadOptions: the options are inconsistent (see the message).
	ErrBadOptions = errors.New("bad run options")
)

// Network modes.
const (
	NetworkHost = "host" // share the host's network namespace (default)
	NetworkNone = "none" // a fresh network namespace with only a loopback device
)

// DefaultPath is the PATH a container gets when its image's env has none
// (the value docker and containerd use).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// defaultCaps is docker's default capability set: what images are written to
// expect from `docker run`. (`runc spec` gives only AUDIT_WRITE, KILL and
// NET_BIND_SERVICE, which breaks images whose entrypoint runs as root and
// then chowns files or drops privileges.)
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// Argv returns the process arguments for an image config and the overrides
// of `docker run [--entrypoint E] IMAGE [ARGS]`:
//
//   - entrypoint nil: the image's Entrypoint is kept; args, when non-empty,
//     replace the image's Cmd;
//   - entrypoint non-nil (possibly empty, docker's --entrypoint ""): it
//     replaces the image's Entrypoint and the image's Cmd is dropped; args
//     follow it.
//
// An empty result is ErrNoCommand.
func Argv(c manifest.Config, entrypoint, args []string) ([]string, error) {
	ep, cmd := c.Entrypoint, c.Cmd
	if entrypoint != nil {
		ep, cmd = entrypoint, nil
	}
	if len(args) > 0 {
		cmd = args
	}
	argv := make([]string, 0, len(ep)+len(cmd))
	argv = append(argv, ep...)
	argv = append(argv, cmd...)
	if len(argv) == 0 {
		return nil, ErrNoCommand
	}
	return argv, nil
}

// mergeEnv returns base with each KEY=VAL of extra replacing base's KEY (in
// place) or appended. Entries without "=" name a variable with an empty
// value. Later duplicates win, keeping the first position.
func mergeEnv(base []string, extra ...[]string) []string {
	var out []string
	idx := map[string]int{}
	add := func(kv string) {
		k, _, ok := strings.Cut(kv, "=")
		if !ok {
			kv += "="
		}
		if i, dup := idx[k]; dup {
			out[i] = kv
			return
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	for _, kv := range base {
		add(kv)
	}
	for _, e := range extra {
		for _, kv := range e {
			add(kv)
		}
	}
	return out
}

// processEnv is the container's environment: the image's env, PATH, HOSTNAME,
// HOME and TERM defaults where the image has none, then o.Env overriding.
func processEnv(o Options, u User) []string {
	env := mergeEnv(o.Config.Env)
	has := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		has[k] = true
	}
	var defaults []string
	if !has["PATH"] {
		defaults = append(defaults, "PATH="+DefaultPath)
	}
	if !has["HOSTNAME"] && o.Hostname != "" {
		defaults = append(defaults, "HOSTNAME="+o.Hostname)
	}
	if !has["HOME"] {
		defaults = append(defaults, "HOME="+u.Home)
	}
	if o.TTY && !has["TERM"] {
		defaults = append(defaults, "TERM=xterm")
	}
	return mergeEnv(env, defaults, o.Env)
}

// Spec returns the OCI runtime config (config.json) for running o's image
// with rootfs as the container's root: the process from the image config and
// overrides, the user resolved in o.Lower (the pristine image), the default
// mounts, namespaces and masked paths of `runc spec`, docker's default
// capabilities, and the network per o.Network. o must carry its defaults
// (Run fills them; a zero Network means host).
func Spec(o Options, rootfs string) (*specs.Spec, error) {
	argv, err := Argv(o.Config, o.Entrypoint, o.Args)
	if err != nil {
		return nil, err
	}
	u, err := ResolveUser(o.Lower, o.Config.User)
	if err != nil {
		return nil, err
	}
	cwd := o.Config.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	cwd = path.Clean("/" + cwd)
	network := o.Network
	if network == "" {
		network = NetworkHost
	}
	if network != NetworkHost && network != NetworkNone {
		return nil, fmt.Errorf("%w: network %q (want %q or %q)", ErrBadOptions, o.Network, NetworkHost, NetworkNone)
	}

	caps := &specs.LinuxCapabilities{Bounding: defaultCaps}
	if u.UID == 0 {
		// As docker: a non-root process keeps the bounding set only; the
		// kernel would drop effective and permitted at its exec anyway.
		caps.Effective, caps.Permitted = defaultCaps, defaultCaps
	}

	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Terminal: o.TTY,
			User: specs.User{
				UID:            u.UID,
				GID:            u.GID,
				AdditionalGids: u.AdditionalGIDs,
			},
			Args:            argv,
			Env:             processEnv(o, u),
			Cwd:             cwd,
			Capabilities:    caps,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: rootfs, Readonly: false},
		Hostname: o.Hostname,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	switch network {
	case NetworkNone:
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	case NetworkHost:
		for _, f := range []string{"/etc/resolv.conf", "/etc/hosts"} {
			if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() {
				continue // nothing to share; the image's own file stays
			}
			s.Mounts = append(s.Mounts, specs.Mount{
				Destination: f, Type: "bind", Source: f,
				Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec", "rprivate"},
			})
		}
	}
	return s, nil
}
