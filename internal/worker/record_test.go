package worker

import (
	"strings"
	"testing"
	"time"
)

func TestFirstWrite(t *testing.T) {
	var sb strings.Builder
	f := NewFirstWrite(&sb)
	if f.Since() != 0 {
		t.Errorf("Since() before any write = %v, want 0", f.Since())
	}
	f.Write(nil)
	time.Sleep(time.Millisecond)
	f.Write([]byte("a"))
	first := f.Since()
	f.Write([]byte("b"))
	if first <= 0 || f.Since() != first || sb.String() != "ab" {
		t.Errorf("Since() = %v then %v, wrote %q; want > 0, unchanged, %q", first, f.Since(), sb.String(), "ab")
	}
}
