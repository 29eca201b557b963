package s3

import (
	"fmt"
	"strings"

	"github.com/lode-dev/lode/internal/store"
)

// validPrefix accepts "" or any string that can begin a valid key.
// (The same check is in store/file and store/s3; it belongs in store/keys.go.)
func validPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := store.ValidKey(prefix + "x"); err != nil {
		return fmt.Errorf("prefix %q: %w", prefix, store.ErrInvalidKey)
	}
	return nil
}

// validDirPrefix accepts "" or a valid prefix ending in "/".
func validDirPrefix(prefix string) error {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		return fmt.Errorf("directory prefix %q does not end in \"/\": %w", prefix, store.ErrInvalidKey)
	}
	return validPrefix(prefix)
}
