package oci

import (
	"errors"
	"testing"
)

// FuzzParseRemote: parsing a docker:// reference and a --platform value
// (both from the command line or a caller's config) never panics, fails only
// with ErrUnsupported, and a parsed reference prints to a form that parses
// to the same reference.
func FuzzParseRemote(f *testing.F) {
	for _, s := range [][2]string{
		{"docker://127.0.0.1:5000/team/app:v1", ""},
		{"docker://registry.example/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "linux/arm64/v8"},
		{"docker://busybox", "linux/amd64"},
		{"docker://[::1]:5000/a/b/c:tag", "windows/amd64"},
		{"docker://UPPER/Case:x", "linux"},
		{"oci:dir", ""},
		{"docker://", "/"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, source, platform string) {
		rr, err := ParseRemote(source, platform, []string{"127.0.0.1:5000"})
		if err != nil {
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("ParseRemote(%q, %q) = %v, want ErrUnsupported", source, platform, err)
			}
			return
		}
		if rr.Platform.OS == "" || rr.Platform.Architecture == "" {
			t.Fatalf("ParseRemote(%q, %q) platform = %+v", source, platform, rr.Platform)
		}
		again, err := ParseRemote(rr.String(), "", nil)
		if err != nil {
			t.Fatalf("ParseRemote(%q) of its own String() = %v", rr.String(), err)
		}
		if again.Ref.Name() != rr.Ref.Name() {
			t.Fatalf("round trip: %q → %q", rr.Ref.Name(), again.Ref.Name())
		}
	})
}
