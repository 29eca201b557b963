package fleetproto

import (
	"strings"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
)

func FuzzParseLeaseRequest(f *testing.F) {
	n := chunk.Name{1, 2, 3}
	f.Add(LeasePath(n, time.Second))
	f.Add("/v1/leases/" + n.String())
	f.Add("/v1/leases/" + n.String() + "?ttl_ms=0")
	f.Add("/v1/leases/" + n.String() + "?ttl_ms=-1")
	f.Add("/v1/leases/x?ttl_ms=99999999999999999999")
	f.Fuzz(func(t *testing.T, target string) {
		path, query, _ := strings.Cut(target, "?")
		got, ttl, err := ParseLeaseRequest(path, query)
		if err != nil {
			return
		}
		if ttl < 10*time.Millisecond || ttl > 10*time.Second {
			t.Fatalf("%q: ttl %v outside 10ms..10s", target, ttl)
		}
		// What parses has one spelling, and LeasePath writes it back.
		p2, q2, _ := strings.Cut(LeasePath(got, ttl), "?")
		again, ttl2, err := ParseLeaseRequest(p2, q2)
		if err != nil || again != got || ttl2 != ttl {
			t.Fatalf("%q: round trip gave %s %v %v", target, again, ttl2, err)
		}
	})
}
