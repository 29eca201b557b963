// Package lint holds checks of the code base that run as Go tests: the
// allowed internal imports of each package (deps_test.go), so the layering
// of STYLE.md 3.1 cannot erode silently.
package lint
