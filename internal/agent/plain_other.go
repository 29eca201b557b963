//go:build !linux

package agent

func prefault([]byte) bool { return false }
