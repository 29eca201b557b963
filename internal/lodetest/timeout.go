package lodetest

import (
	"flag"
	"time"
)

// BeforeTimeout runs fn margin before the test binary's -test.timeout
// (default 10m) would kill it, for work that must happen before the
// process dies: a TestMain calls it before m.Run. The returned function
// cancels it. Nothing is scheduled without a timeout or with one shorter
// than margin.
func BeforeTimeout(margin time.Duration, fn func()) (stop func()) {
	if !flag.Parsed() {
		flag.Parse()
	}
	f := flag.Lookup("test.timeout")
	if f == nil {
		return func() {}
	}
	d, err := time.ParseDuration(f.Value.String())
	if err != nil || d <= margin {
		return func() {}
	}
	t := time.AfterFunc(d-margin, fn)
	return func() { t.Stop() }
}
