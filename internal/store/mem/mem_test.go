package mem_test

import (
	"testing"

	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
	"github.com/lode-dev/lode/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return mem.New() })
}

func TestOpenSharesByName(t *testing.T) {
	a, b, c := mem.Open("shared-test"), mem.Open("shared-test"), mem.Open("other-test")
	if err := a.Put(t.Context(), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	got, err := b.Get(t.Context(), "k", nil)
	if err != nil || string(got) != "v" {
		t.Errorf("Open(shared-test).Get(k) = %q, %v, want \"v\"", got, err)
	}
	if _, err := c.Get(t.Context(), "k", nil); err == nil {
		t.Errorf("Open(other-test).Get(k) succeeded, want ErrNotFound")
	}
	if a.String() != "mem://shared-test" {
		t.Errorf("String() = %q, want mem://shared-test", a.String())
	}
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) store.Store { return mem.New() })
}
