// Package lodetest holds helpers shared by tests: Require, which skips a test
// whose prerequisites (root, /dev/fuse, loop devices, tools) are missing — or
// fails it when LODE_TEST_NO_SKIP=1, as CI sets — and builders of test inputs.
// It is imported only from _test.go files.
package lodetest
