package oci

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Errors returned by Open and Flatten wrap one of them (callers test with errors.Is);
// errors about one layer or one tar entry are *EntryError values that say which.
var (
	// ErrUnsafeEntry: the image contains something lode refuses to build: a path that is absolute or
	// escapes the root, a relative symlink that escapes the root, a hard link to a missing target, a
	// directory or itself, a device node or setuid/setgid file when not allowed, or a limit exceeded.
	ErrUnsafeEntry = errors.New("unsafe image entry")
	// ErrUnsupported: a tar entry type other than regular file, directory, symlink, hard link,
	// character or block device, or FIFO; or an image source lode cannot read.
	ErrUnsupported = errors.New("unsupported image content")
	// ErrCorrupt: a truncated or corrupt tar or compressed stream, or bytes that do not match their digest.
	ErrCorrupt = errors.New("corrupt image")
)

// EntryError reports a problem with one layer of an image or one entry in it.
// It unwraps to its sentinel (Err) and to the underlying cause, if any.
type EntryError struct {
	Layer  int    // index of the layer, 0 = base layer (as in the image's manifest)
	Digest string // the layer's digest ("sha256:…"), if known
	Path   string // the entry's name as written in the tar; "" for errors about the whole layer
	Reason string // what is wrong, in words
	Err    error  // ErrUnsafeEntry, ErrUnsupported or ErrCorrupt
	Cause  error  // underlying error, if any (e.g. from archive/tar or a decompressor)
}

func (e *EntryError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "layer %d", e.Layer)
	if e.Digest != "" {
		fmt.Fprintf(&b, " (%s)", shortDigest(e.Digest))
	}
	if e.Path != "" {
		fmt.Fprintf(&b, ": %q", e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	if e.Cause != nil {
		b.WriteString(": ")
		b.WriteString(e.Cause.Error())
	}
	return b.String()
}

// Unwrap returns the sentinel and the cause, so errors.Is works for both.
func (e *EntryError) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Cause}
}

// shortDigest abbreviates "sha256:<64 hex>" to "sha256:<12 hex>…" for messages.
func shortDigest(d string) string {
	alg, hex, ok := strings.Cut(d, ":")
	if !ok || len(hex) <= 12 {
		return d
	}
	return alg + ":" + hex[:12] + "…"
}
