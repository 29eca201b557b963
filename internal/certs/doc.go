// Package certs owns lode's TLS identities: a fleet CA, certificates for
// cache nodes and workers (and NBD servers and clients), TLS configurations
// that require and check them, and reloading them from files when they
// rotate, without a restart.
//
// Roles. Every certificate lode issues carries its role in the subject's
// organizational unit (OU "lode-node", "lode-worker", "lode-nbd") and in its
// extended key usage (nodes: server auth; workers: client auth). A node's
// TLS configuration accepts only client certificates signed by the fleet CA
// whose role is worker, during the handshake: a request without one never
// reaches HTTP, so no byte of its body is read. A worker accepts only a
// node certificate from the same CA.
//
// Rotation. Reloader re-reads a certificate and key (and CA) when the
// files' modification time or size changes, checked at most once a second
// at handshakes: replacing the files rotates the identity of a running
// process. Keys are written 0600.
//
// Written over crypto/tls and crypto/x509 of the standard library; the
// certificate generator (Issue) covers what `lode cache certs` needs, and
// docs/fleet.md gives the equivalent openssl commands.
package certs
