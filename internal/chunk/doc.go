// Package chunk owns the unit of storage: cutting a filesystem image into
// fixed-size chunks, recognising all-zero chunks (holes), convergent
// encryption of a chunk (Seal) and its verified decryption (Open).
//
// It implements DESIGN.md, "Formats": chunk size, holes, convergent
// encryption and integrity. It does no I/O beyond reading the image it is
// given and knows nothing of stores, manifests or tiers.
//
// The construction is hand-written on the standard library (crypto/sha256,
// crypto/hmac, crypto/aes, crypto/cipher) because it is a few lines of
// composition of primitives that the standard library already provides and
// accelerates (SHA-NI, AES-NI).
package chunk
