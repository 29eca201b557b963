package main

// profile.go: startup profiles (issue #8). `lode run --record` stores the
// chunks a start read, in order, as the manifest's hints; later runs
// prefetch them in parallel from the moment the image is opened.

import (
	"fmt"

	"github.com/lode-dev/lode/internal/manifest"
)

// compressionFlag parses build --compress.
func compressionFlag(s string) (uint8, error) {
	switch s {
	case "", "none":
		return manifest.CompressionNone, nil
	case "zstd":
		return manifest.CompressionZstd, nil
	}
	return 0, fmt.Errorf("--compress %q: want none or zstd", s)
}
