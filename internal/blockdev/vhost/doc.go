// Package vhost serves a blockdev.Device as a vhost-user-blk backend, so
// QEMU attaches the image as a virtio-blk disk whose queues this process
// processes directly in the guest's shared memory: no NBD hop, no copy
// through QEMU.
//
// It owns: the vhost-user control protocol on a unix socket (messages
// with a 12-byte header, file descriptors passed with SCM_RIGHTS) as far
// as QEMU's vhost-user-blk front-end uses it — GET/SET_FEATURES,
// GET/SET_PROTOCOL_FEATURES (MQ, REPLY_ACK, CONFIG), SET_OWNER,
// RESET_OWNER, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, SET_MEM_TABLE (each
// region's memfd mapped shared), SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR/
// ENABLE, GET_VRING_BASE (stops the queue after its requests complete),
// GET_CONFIG (struct virtio_blk_config) and SET_CONFIG (refused); every
// other request is acked as failed when the front-end asks for an ack and
// ignored otherwise. It owns the split virtqueue (descriptor table,
// available and used rings; no indirect descriptors, no event index, no
// packed rings) and virtio-blk requests: IN, OUT, FLUSH, GET_ID and, when
// writable, WRITE_ZEROES; anything else is VIRTIO_BLK_S_UNSUPP. A device
// that is not a blockdev.WritableDevice (or Config.ReadOnly) is offered
// with VIRTIO_BLK_F_RO and writes fail with VIRTIO_BLK_S_IOERR. One queue;
// its requests are served concurrently by a bounded pool (Config.Workers),
// since a read may wait on a fetch. The logical block size is 512 bytes
// with a 4 KiB physical block hint (VIRTIO_BLK_F_TOPOLOGY): a 4 KiB
// logical block would make ext4 file systems with 1 KiB blocks unmountable.
//
// It does not own the device (blockdev, the agent behind it), the socket's
// path or listener, nor QEMU's command line (internal/vm).
//
// Guest memory is untrusted: every address and length the guest or the
// front-end gives is translated through the memory table and must lie
// within one region (walkChain, guestMemory), indexes are bounded by the
// queue size, chains by the queue size and seg_max. The message parser
// (parseMessage) and the chain walker are pure functions with fuzz targets
// (FuzzParseMessage, FuzzDescChain). The rings' index words are read and
// written with 32-bit atomics, which assumes a little-endian host.
//
// DESIGN.md: "The data path" (one more frontend on an agent Image).
//
// Hand-written from QEMU's docs/interop/vhost-user.rst and the virtio 1.1
// specification (2.6 split virtqueues, 5.2 block device): there is no
// maintained Go vhost-user backend library (the Rust vhost-user-backend
// crate and C libvhost-user are the references), and the subset a block
// device needs is a few hundred lines.
package vhost
