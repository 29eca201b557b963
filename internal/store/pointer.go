package store

import (
	"encoding/json"
	"fmt"
	"time"
)

// Pointer is the content of images/<tenant>/<name>: where the image's
// current manifest lives. It is small JSON so operators can read it with any
// S3 client. It holds no secret: the manifest it names is sealed.
type Pointer struct {
	Root     RootID    `json:"root"`
	Manifest string    `json:"manifest"` // manifest id (hex SHA-256 of the sealed bytes)
	Created  time.Time `json:"created"`
	// Deleted marks an image that is no longer live (lode images delete);
	// the garbage collector stops copying it forward.
	Deleted bool `json:"deleted,omitempty"`
}

// MarshalPointer encodes p.
func MarshalPointer(p Pointer) []byte {
	b, _ := json.Marshal(p) // a struct of strings and a time cannot fail
	return append(b, '\n')
}

// UnmarshalPointer decodes and checks an image pointer read from key.
func UnmarshalPointer(key string, b []byte) (Pointer, error) {
	var p Pointer
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("image pointer %s: %w", key, err)
	}
	if err := ValidName("root", string(p.Root)); err != nil {
		return p, fmt.Errorf("image pointer %s: %w", key, err)
	}
	if len(p.Manifest) != 64 {
		return p, fmt.Errorf("image pointer %s: manifest id %q is not 64 hex digits", key, p.Manifest)
	}
	return p, nil
}
