package vm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ErrNoKernel: no kernel image matched where FindKernel looked.
var ErrNoKernel = errors.New("no kernel found")

// Kernel is a kernel image and the directory of modules built for it.
type Kernel struct {
	// Image is the bootable image (/boot/vmlinuz-VERSION).
	Image string
	// Version is the release the modules are built for (uname -r).
	Version string
	// ModulesDir holds modules.dep and the modules (/lib/modules/VERSION).
	ModulesDir string
}

// DefaultKernelGlob matches the Debian cloud kernels: small, with the
// virtio drivers as modules, and what the microVM recipe was checked with.
const DefaultKernelGlob = "/boot/vmlinuz-*-cloud-amd64"

// FindKernel returns the newest kernel whose image matches glob (by
// version, compared with digit runs as numbers), with its modules under
// modulesRoot (normally /lib/modules).
func FindKernel(glob, modulesRoot string) (Kernel, error) {
	images, err := filepath.Glob(glob)
	if err != nil {
		return Kernel{}, fmt.Errorf("finding kernels %s: %w", glob, err)
	}
	if len(images) == 0 {
		return Kernel{}, fmt.Errorf("finding kernels %s: %w (apt-get install linux-image-cloud-amd64)", glob, ErrNoKernel)
	}
	sort.Slice(images, func(i, j int) bool { return versionLess(images[i], images[j]) })
	return KernelAt(images[len(images)-1], modulesRoot)
}

// KernelAt describes the kernel image at p, named vmlinuz-VERSION, with its
// modules in modulesRoot/VERSION.
func KernelAt(p, modulesRoot string) (Kernel, error) {
	version, ok := strings.CutPrefix(filepath.Base(p), "vmlinuz-")
	if !ok || version == "" {
		return Kernel{}, fmt.Errorf("reading the version of kernel %s: the name is not vmlinuz-VERSION", p)
	}
	k := Kernel{Image: p, Version: version, ModulesDir: filepath.Join(modulesRoot, version)}
	if _, err := os.Stat(p); err != nil {
		return Kernel{}, fmt.Errorf("opening kernel %s: %w", p, err)
	}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.dep")); err != nil {
		return Kernel{}, fmt.Errorf("opening the modules of kernel %s: %w", version, err)
	}
	return k, nil
}

// versionLess orders strings by their digit runs as numbers and the rest
// bytewise, so 6.1.0-10 sorts after 6.1.0-9.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		if da && db {
			na, ra := digitRun(a)
			nb, rb := digitRun(b)
			na, nb = strings.TrimLeft(na, "0"), strings.TrimLeft(nb, "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func digitRun(s string) (run, rest string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

// DefaultModules are what a Debian cloud kernel needs as modules to read
// a virtio-mmio block device and lay a tmpfs over it: the virtio-mmio
// transport, the block driver, and overlayfs. ext4 is built in.
var DefaultModules = []string{"virtio_mmio", "virtio_blk", "overlay"}

// moduleName is the name a module file is loaded under: its base name
// without .ko (and a compression suffix), dashes as underscores.
func moduleName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// parseModulesDep reads modules.dep: one "path: dep dep…" line per module,
// dependencies listed so that the last must be loaded first. It returns
// each module's path and dependency paths by module name.
func parseModulesDep(r io.Reader) (map[string][]string, error) {
	deps := map[string][]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		if !ok || mod == "" {
			return nil, fmt.Errorf("parsing modules.dep line %d: no \"module:\"", line)
		}
		deps[moduleName(mod)] = append([]string{mod}, strings.Fields(rest)...)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parsing modules.dep: %w", err)
	}
	return deps, nil
}

// resolveModules returns the module files (relative to the modules
// directory) that loading names needs, in load order, each once. Modules
// listed in builtin (modules.builtin's names) are skipped.
func resolveModules(deps map[string][]string, builtin map[string]bool, names []string) ([]string, error) {
	var order []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			order = append(order, p)
		}
	}
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		if builtin[n] {
			continue
		}
		d, ok := deps[n]
		if !ok {
			return nil, fmt.Errorf("resolving module %s: not in modules.dep nor built in", n)
		}
		for i := len(d) - 1; i >= 1; i-- {
			add(d[i])
		}
		add(d[0])
	}
	for _, p := range order {
		if !strings.HasSuffix(p, ".ko") {
			return nil, fmt.Errorf("resolving module %s: compressed modules are not supported (busybox insmod loads plain .ko files)", p)
		}
	}
	return order, nil
}

// builtinModules reads modules.builtin (one path a line) if present.
func builtinModules(dir string) (map[string]bool, error) {
	f, err := os.Open(filepath.Join(dir, "modules.builtin"))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" {
			out[moduleName(t)] = true
		}
	}
	return out, sc.Err()
}

// Modules returns the module files of k that loading names needs, in load
// order, relative to k.ModulesDir.
func (k Kernel) Modules(names []string) ([]string, error) {
	f, err := os.Open(filepath.Join(k.ModulesDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("reading the modules of kernel %s: %w", k.Version, err)
	}
	defer f.Close()
	deps, err := parseModulesDep(f)
	if err != nil {
		return nil, fmt.Errorf("reading the modules of kernel %s: %w", k.Version, err)
	}
	builtin, err := builtinModules(k.ModulesDir)
	if err != nil {
		return nil, fmt.Errorf("reading the built-in modules of kernel %s: %w", k.Version, err)
	}
	return resolveModules(deps, builtin, names)
}
