package run

import (
	"errors"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/lode-dev/lode/internal/manifest"
)

func TestArgv(t *testing.T) {
	img := manifest.Config{Entrypoint: []string{"/ep", "-x"}, Cmd: []string{"default", "cmd"}}
	cmdOnly := manifest.Config{Cmd: []string{"/bin/sh", "-c", "true"}}
	tests := []struct {
		name       string
		cfg        manifest.Config
		entrypoint []string
		args       []string
		want       []string
		wantErr    error
	}{
		{name: "image entrypoint and cmd", cfg: img, want: []string{"/ep", "-x", "default", "cmd"}},
		{name: "args replace cmd, keep entrypoint", cfg: img, args: []string{"a", "b"}, want: []string{"/ep", "-x", "a", "b"}},
		{name: "cmd only", cfg: cmdOnly, want: []string{"/bin/sh", "-c", "true"}},
		{name: "args replace cmd-only image", cfg: cmdOnly, args: []string{"/bin/echo", "hi"}, want: []string{"/bin/echo", "hi"}},
		{name: "entrypoint override drops image cmd", cfg: img, entrypoint: []string{"/other"}, want: []string{"/other"}},
		{name: "entrypoint override with args", cfg: img, entrypoint: []string{"/other"}, args: []string{"z"}, want: []string{"/other", "z"}},
		{name: "empty entrypoint override with args", cfg: img, entrypoint: []string{}, args: []string{"/bin/true"}, want: []string{"/bin/true"}},
		{name: "empty entrypoint override alone", cfg: img, entrypoint: []string{}, wantErr: ErrNoCommand},
		{name: "nothing at all", cfg: manifest.Config{}, wantErr: ErrNoCommand},
		{name: "entrypoint only", cfg: manifest.Config{Entrypoint: []string{"/ep"}}, want: []string{"/ep"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Argv(tc.cfg, tc.entrypoint, tc.args)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Argv() error = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Argv() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSpecEnv(t *testing.T) {
	root := writeUserDB(t, testPasswd, testGroup)
	tests := []struct {
		name     string
		imageEnv []string
		extra    []string
		user     string
		tty      bool
		want     []string
	}{
		{
			name: "defaults added",
			want: []string{"PATH=" + DefaultPath, "HOSTNAME=h", "HOME=/root"},
		},
		{
			name:     "image PATH and HOME kept",
			imageEnv: []string{"PATH=/opt/bin", "HOME=/data", "A=1"},
			want:     []string{"PATH=/opt/bin", "HOME=/data", "A=1", "HOSTNAME=h"},
		},
		{
			name:     "extra overrides in place and appends",
			imageEnv: []string{"A=1", "B=2"},
			extra:    []string{"B=3", "C=4", "PATH=/x"},
			want:     []string{"A=1", "B=3", "PATH=/x", "HOSTNAME=h", "HOME=/root", "C=4"},
		},
		{
			name:     "duplicate image keys: last wins, first position",
			imageEnv: []string{"A=1", "PATH=/p", "A=2"},
			want:     []string{"A=2", "PATH=/p", "HOSTNAME=h", "HOME=/root"},
		},
		{
			name: "home from the user's passwd entry",
			user: "app",
			want: []string{"PATH=" + DefaultPath, "HOSTNAME=h", "HOME=/home/app"},
		},
		{
			name:     "tty adds TERM; bare key is empty value",
			imageEnv: []string{"EMPTY"},
			tty:      true,
			want:     []string{"EMPTY=", "PATH=" + DefaultPath, "HOSTNAME=h", "HOME=/root", "TERM=xterm"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{
				Lower:    root,
				Config:   manifest.Config{Cmd: []string{"/x"}, Env: tc.imageEnv, User: tc.user},
				Env:      tc.extra,
				Hostname: "h",
				TTY:      tc.tty,
			}
			s, err := Spec(o, "/rootfs")
			if err != nil {
				t.Fatalf("Spec: %v", err)
			}
			if diff := cmp.Diff(tc.want, s.Process.Env); diff != "" {
				t.Errorf("Spec().Process.Env mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSpecProcessAndNamespaces(t *testing.T) {
	root := writeUserDB(t, testPasswd, testGroup)
	base := Options{
		Lower:    root,
		Config:   manifest.Config{Entrypoint: []string{"/probe"}, Cmd: []string{"x"}, WorkingDir: "srv/../data", User: "app"},
		Args:     []string{"y"},
		Hostname: "box",
	}
	s, err := Spec(base, "/state/rootfs")
	if err != nil {
		t.Fatalf("Spec: %v", err)
	}
	if diff := cmp.Diff([]string{"/probe", "y"}, s.Process.Args); diff != "" {
		t.Errorf("Args mismatch (-want +got):\n%s", diff)
	}
	if s.Process.Cwd != "/data" {
		t.Errorf("Cwd = %q, want /data", s.Process.Cwd)
	}
	if diff := cmp.Diff(specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{10, 29}}, s.Process.User); diff != "" {
		t.Errorf("User mismatch (-want +got):\n%s", diff)
	}
	if len(s.Process.Capabilities.Effective) != 0 || len(s.Process.Capabilities.Bounding) == 0 {
		t.Errorf("non-root capabilities = %+v, want bounding only", s.Process.Capabilities)
	}
	if s.Process.Terminal {
		t.Errorf("Terminal = true without TTY")
	}
	if s.Root.Path != "/state/rootfs" || s.Root.Readonly {
		t.Errorf("Root = %+v, want writable /state/rootfs", s.Root)
	}
	if s.Hostname != "box" {
		t.Errorf("Hostname = %q, want box", s.Hostname)
	}

	nsTypes := func(s *specs.Spec) []specs.LinuxNamespaceType {
		var out []specs.LinuxNamespaceType
		for _, ns := range s.Linux.Namespaces {
			out = append(out, ns.Type)
		}
		return out
	}
	mountDests := func(s *specs.Spec) []string {
		var out []string
		for _, m := range s.Mounts {
			out = append(out, m.Destination)
		}
		return out
	}
	std := []string{"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"}
	if diff := cmp.Diff([]specs.LinuxNamespaceType{"pid", "ipc", "uts", "mount"}, nsTypes(s)); diff != "" {
		t.Errorf("host network namespaces mismatch (-want +got):\n%s", diff)
	}
	wantHost := std
	for _, f := range []string{"/etc/resolv.conf", "/etc/hosts"} {
		if _, err := os.Stat(f); err == nil {
			wantHost = append(wantHost[:len(wantHost):len(wantHost)], f)
		}
	}
	if diff := cmp.Diff(wantHost, mountDests(s)); diff != "" {
		t.Errorf("host network mounts mismatch (-want +got):\n%s", diff)
	}

	none := base
	none.Network = NetworkNone
	s, err = Spec(none, "/state/rootfs")
	if err != nil {
		t.Fatalf("Spec(network none): %v", err)
	}
	if diff := cmp.Diff([]specs.LinuxNamespaceType{"pid", "ipc", "uts", "mount", "network"}, nsTypes(s)); diff != "" {
		t.Errorf("network none namespaces mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(std, mountDests(s)); diff != "" {
		t.Errorf("network none mounts mismatch (-want +got):\n%s", diff)
	}

	rootUser := base
	rootUser.Config.User = ""
	s, err = Spec(rootUser, "/r")
	if err != nil {
		t.Fatalf("Spec(root): %v", err)
	}
	if len(s.Process.Capabilities.Effective) == 0 {
		t.Errorf("root process has no effective capabilities")
	}
}

func TestSpecErrors(t *testing.T) {
	root := writeUserDB(t, testPasswd, testGroup)
	tests := []struct {
		name string
		o    Options
		want error
	}{
		{"no command", Options{Lower: root}, ErrNoCommand},
		{"unknown user", Options{Lower: root, Config: manifest.Config{Cmd: []string{"x"}, User: "ghost"}}, ErrUserNotFound},
		{"bad network", Options{Lower: root, Config: manifest.Config{Cmd: []string{"x"}}, Network: "bridge"}, ErrBadOptions},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Spec(tc.o, "/r"); !errors.Is(err, tc.want) {
				t.Errorf("Spec() error = %v, want %v", err, tc.want)
			}
		})
	}
}
