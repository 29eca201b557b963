package main

import (
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/lode-dev/lode/internal/worker"
)

// The origin limiter order the flags and docs/scale.md state is the one
// worker.NewStack builds (stack.go): Limit(Retry(RateLimit(origin))).
func TestOriginLimiterOrderDocumented(t *testing.T) {
	const order = "Limit(Retry(RateLimit(origin)))"
	f := pflag.NewFlagSet("x", pflag.ContinueOnError)
	bindWorker(f, &worker.Options{})
	for _, name := range []string{"origin-concurrency", "origin-rate"} {
		if u := f.Lookup(name).Usage; !strings.Contains(u, order) {
			t.Errorf("--%s help %q does not state the limiter order %s", name, u, order)
		}
	}
	doc, err := os.ReadFile("../../docs/scale.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(doc), "\n## The mechanisms")
	table, _, _ = strings.Cut(table, "\n## ")
	if !strings.Contains(table, "`"+order+"`") {
		t.Errorf("docs/scale.md's table of limits does not state %s", order)
	}
	src, err := os.ReadFile("../../internal/worker/stack.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), "agent.Limit(agent.Retry(agent.RateLimit(origin,") {
		t.Errorf("internal/worker/stack.go no longer composes %s: update the flags and docs/scale.md", order)
	}
}
