package vm

import "strings"

// DefaultPath is the PATH a guest gets when its image's env has none (the
// same as a container's).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Env is a guest command's environment: the image's env, PATH and HOME
// defaults where it has none, then overrides. Each KEY appears once, at
// its first position, with its last value; an entry without "=" names an
// empty variable.
func Env(image, overrides []string) []string {
	var out []string
	idx := map[string]int{}
	add := func(kv string) {
		k, _, ok := strings.Cut(kv, "=")
		if k == "" {
			return
		}
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
	for _, kv := range image {
		add(kv)
	}
	if _, ok := idx["PATH"]; !ok {
		add("PATH=" + DefaultPath)
	}
	if _, ok := idx["HOME"]; !ok {
		add("HOME=/root")
	}
	for _, kv := range overrides {
		add(kv)
	}
	return out
}
