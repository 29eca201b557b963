package fuse

import "sync"

// live holds the mount directories of the files this process serves.
var live sync.Map // string → struct{}

// AbortAll aborts the FUSE connection of every file this process serves
// (through fusectl) and returns how many it aborted: readers get errors
// at once instead of waiting. It is for a process that must exit now with
// mounts still served, above all a test binary about to be killed by its
// timeout: a process that exits while it holds a file open on a mount it
// serves itself waits forever in the kernel for the answer to its own
// FLUSH, and then nothing can reap it.
func AbortAll() int {
	n := 0
	live.Range(func(k, _ any) bool {
		dir := k.(string)
		if m, ok := findMount(dir); ok && abortFUSE(dir, m) == nil {
			n++
		}
		return true
	})
	return n
}
