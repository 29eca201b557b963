package blockdev

import "errors"

// Sentinel errors callers branch on.
var (
	// ErrOutOfRange reports an access before 0 or, for writes, past Size.
	ErrOutOfRange = errors.New("blockdev: offset out of range")
	// ErrOverlayMismatch reports an overlay whose persisted bitmap does
	// not describe the base it is opened over (other size or block size).
	ErrOverlayMismatch = errors.New("blockdev: overlay does not match base device")
	// ErrClosed reports use of a closed overlay.
	ErrClosed = errors.New("blockdev: closed")
)
