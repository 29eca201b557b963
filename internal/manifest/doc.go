// Package manifest owns the manifest of a built image: its versioned binary
// format, its envelope encryption (public part authenticated, secret part
// encrypted under a per-image data key that the tenant's key wraps), and the
// Keyring that holds tenants' keys (a file keyring by default; the interface
// admits a real KMS).
//
// It implements DESIGN.md, "Formats" (Manifest). The codec is hand-written
// with encoding/binary: the format must be byte-exact, versioned and
// parseable without keys, which no general serialization library guarantees.
package manifest
