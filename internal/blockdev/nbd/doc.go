// Package nbd serves blockdev.Devices over the Network Block Device protocol
// (fixed newstyle), so a VM or qemu-img can read an image, and with a
// copy-on-write blockdev.Overlay also write to it without touching the base.
//
// It owns: the handshake and option haggling (NBD_OPT_EXPORT_NAME, GO, INFO
// with NBD_INFO_EXPORT, NAME, DESCRIPTION and BLOCK_SIZE, LIST, ABORT; every
// other option, structured replies included, gets NBD_REP_ERR_UNSUP), and the
// transmission phase with simple replies (READ, WRITE, FLUSH, TRIM,
// WRITE_ZEROES, DISC). Requests on one connection run concurrently; replies
// are serialized. It does not own the device (blockdev), the agent behind it,
// TLS, or block-status/meta contexts.
//
// It implements the "frontend" box of DESIGN.md, "The data path".
//
// The protocol code is hand-written from the NBD protocol document
// (doc/proto.md in the NetworkBlockDevice/nbd repository): there is no
// maintained Go NBD server library, and the subset we need is a few hundred
// lines. Every parser of client bytes is a pure function with a fuzz target
// (FuzzParseRequest, FuzzParseInfoRequest, and FuzzHandshake which drives a
// whole server connection over net.Pipe).
//
// Error mapping (NBD errno values on the wire): a Device error is EIO for that
// request only; a read past the end is EINVAL, a write past the end ENOSPC; a
// write to a read-only export EPERM; a read longer than Config.MaxRequest is
// EOVERFLOW and a longer write EINVAL (its payload is discarded, the
// connection survives); an unknown command EINVAL. A bad request magic or a
// malformed handshake closes the connection.
package nbd
