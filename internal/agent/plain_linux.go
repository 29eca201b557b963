package agent

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// prefault maps the whole pages inside b for writing (MADV_POPULATE_WRITE).
// It reports whether the kernel did; a refusal (older kernel) changes
// nothing but speed.
func prefault(b []byte) bool {
	const page = 4096
	if len(b) < page {
		return false
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	start := (p + page - 1) &^ (page - 1)
	end := (p + uintptr(len(b))) &^ (page - 1)
	if end <= start {
		return false
	}
	// The range is inside b, which the caller keeps alive (and Go's heap
	// does not move), so the madvise touches only memory b owns.
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_POPULATE_WRITE)
	return errno == 0
}
