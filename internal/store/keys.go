package store

import (
	"fmt"
	"strings"

	"github.com/lode-dev/lode/internal/chunk"
)

// The object layout (DESIGN.md, "Object store layout"), the same in a
// directory and in a bucket:
//
//	roots/<root>/STATE                 the root's lifecycle state
//	roots/<root>/chunks/<name>         ciphertext of one chunk
//	roots/<root>/manifests/<id>        a sealed manifest
//	roots/<root>/profiles/<id>/...     learned startup profiles of manifest id
//	                                   (internal/profile: merged, starts/<n>)
//	images/<tenant>/<image-name>       pointer: the image's current root and manifest id
//
// Every key is built here and nowhere else.

// RootID names a root: a self-contained namespace of manifests and chunks.
type RootID string

const (
	rootsPrefix  = "roots/"
	imagesPrefix = "images/"
)

// RootsPrefix is the prefix under which every root lives (for ListDirs).
func RootsPrefix() string { return rootsPrefix }

// RootPrefix is the prefix of everything in root r.
func RootPrefix(r RootID) string { return rootsPrefix + string(r) + "/" }

// StateKey is the key of root r's state object.
func StateKey(r RootID) string { return RootPrefix(r) + "STATE" }

// ChunksPrefix is the prefix of root r's chunks.
func ChunksPrefix(r RootID) string { return RootPrefix(r) + "chunks/" }

// ChunkKey is the key of chunk n in root r.
func ChunkKey(r RootID, n chunk.Name) string { return ChunksPrefix(r) + n.String() }

// ManifestsPrefix is the prefix of root r's manifests.
func ManifestsPrefix(r RootID) string { return RootPrefix(r) + "manifests/" }

// ManifestKey is the key of manifest id in root r.
func ManifestKey(r RootID, id string) string { return ManifestsPrefix(r) + id }

// ProfilesPrefix is the prefix of the learned startup profiles of manifest
// id in root r (internal/profile names the objects below it).
func ProfilesPrefix(r RootID, id string) string { return RootPrefix(r) + "profiles/" + id + "/" }

// ImagesPrefix is the prefix of every image pointer of tenant.
func ImagesPrefix(tenant string) string { return imagesPrefix + tenant + "/" }

// TenantsPrefix is the prefix below which each tenant is a directory.
func TenantsPrefix() string { return imagesPrefix }

// ImageKey is the key of the pointer of image name of tenant.
func ImageKey(tenant, name string) string { return ImagesPrefix(tenant) + name }

// ValidName reports an error unless s can be a tenant, image or root name:
// 1–128 characters from [A-Za-z0-9._:@+-], not starting with '.'. Names never
// contain '/', so they cannot reach outside their place in the layout.
func ValidName(kind, s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%s name %q: must be 1 to 128 characters: %w", kind, s, ErrInvalidKey)
	}
	if s[0] == '.' {
		return fmt.Errorf("%s name %q: must not start with '.': %w", kind, s, ErrInvalidKey)
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._:@+-", c)
		if !ok {
			return fmt.Errorf("%s name %q: character %q not allowed (use A-Z a-z 0-9 . _ : @ + -): %w", kind, s, c, ErrInvalidKey)
		}
	}
	return nil
}

// ValidKey reports an error unless key is a usable object key: non-empty,
// relative, slash-separated segments that are neither empty, "." nor "..".
// Backends call it on every key so a bad key never reaches a filesystem path.
func ValidKey(key string) error {
	if key == "" || len(key) > 1024 {
		return fmt.Errorf("key %q: %w", key, ErrInvalidKey)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("key %q: %w", key, ErrInvalidKey)
		}
	}
	return nil
}

// ValidPrefix reports an error unless prefix is "" or can begin a valid key
// (List takes such prefixes).
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidKey(prefix + "x"); err != nil {
		return fmt.Errorf("prefix %q: %w", prefix, ErrInvalidKey)
	}
	return nil
}

// ValidDirPrefix reports an error unless prefix is "" or a valid prefix
// ending in "/" (ListDirs takes such prefixes).
func ValidDirPrefix(prefix string) error {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		return fmt.Errorf("directory prefix %q does not end in \"/\": %w", prefix, ErrInvalidKey)
	}
	return ValidPrefix(prefix)
}

// AlarmKey is the key of root r's alarm marker: while it exists the garbage
// collector does not delete r (see internal/gc).
func AlarmKey(r RootID) string { return RootPrefix(r) + "ALARM" }
