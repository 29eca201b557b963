// Package manifest owns the manifest of a built image: its versioned binary
// format, its envelope encryption (public part authenticated, secret part
// encrypted under a per-image data key that the tenant's key wraps), and the
// Keyring that holds tenants' keys: a file keyring, whose entries are either
// a tenant's key or the name of its key in a KMS (kms.go: each image's data
// key generated and unwrapped by the KMS, bound to tenant and image by the
// encryption context). A builder's keyring holds the store secret; a
// worker's (FileKeyring.Export) does not (DESIGN.md, "Who holds which key").
//
// It implements DESIGN.md, "Formats" (Manifest). The codec is hand-written
// with encoding/binary: the format must be byte-exact, versioned and
// parseable without keys, which no general serialization library guarantees.
package manifest
