package agent

import (
	"bytes"
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/trace"
)

// TestTraceRecordsFetchesAndReads reads a span of two missing chunks, then
// a chunk again, and checks what the fetch trace says of them: each fetch
// asked for by the read that waited on it, at its offset, served by the
// origin, and the read naming the fetches it blocked on; the cached chunk's
// read waits on none.
func TestTraceRecordsFetchesAndReads(t *testing.T) {
	ti := stdImage(t)
	var buf bytes.Buffer
	tr := trace.New(&buf)
	// The two fetches meet before either returns, so that they overlap in
	// time however the machine schedules them (the trace's chain counts
	// fetches that started after another ended).
	origin := &meetTier{Tier: NewOrigin(ti.st, testRoot), n: 2, met: make(chan struct{})}
	im := openImage(t, ti, Config{Mem: NewMemCache(1 << 30), Tiers: []Tier{origin}, Trace: tr})
	ctx := context.Background()
	p := make([]byte, cs)
	off := int64(cs/2) + 7*int64(cs) // chunks 7 and 8
	if _, err := im.ReadAt(ctx, p, off); err != nil {
		t.Fatal(err)
	}
	if _, err := im.ReadAt(ctx, p[:100], off); err != nil {
		t.Fatal(err)
	}
	tr.Mark("exit")
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	evs, err := trace.Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	var reads, fetches []trace.Event
	for _, e := range evs {
		switch e.Kind {
		case trace.KindRead:
			reads = append(reads, e)
		case trace.KindFetch:
			fetches = append(fetches, e)
		}
	}
	if len(reads) != 2 || len(fetches) != 2 {
		t.Fatalf("trace has %d reads and %d fetches, want 2 and 2:\n%v", len(reads), len(fetches), evs)
	}
	r := reads[0]
	if r.Off != off || r.Len != int64(cs) || r.First != 7 || r.Last != 8 || len(r.Waited) != 2 {
		t.Errorf("first read = %+v, want off %d len %d chunks 7-8 waiting on 2 fetches", r, off, cs)
	}
	if len(reads[1].Waited) != 0 {
		t.Errorf("second read waited on %v, want nothing (memory cache)", reads[1].Waited)
	}
	var chunks []int
	for _, f := range fetches {
		chunks = append(chunks, f.Chunk)
		if f.Why != trace.WhyRead || f.Read != r.ID || f.Off != off || f.Tier != "origin" || f.Bytes == 0 ||
			!slices.Equal(f.Waited, []uint64{r.ID}) || f.Done < f.Started || f.Started < f.Asked || !slices.Contains(r.Waited, f.ID) {
			t.Errorf("fetch %+v: want why read by read %d at %d from origin, waited on by it", f, r.ID, off)
		}
	}
	slices.Sort(chunks)
	if !slices.Equal(chunks, []int{7, 8}) {
		t.Errorf("fetched chunks %v, want [7 8]", chunks)
	}
	if a := trace.Analyze(evs, "exit"); len(a.Chain) != 1 || a.Blocking != 2 {
		t.Errorf("Analyze: chain %d, blocking %d; want 1 (the two fetches ran in parallel), 2", len(a.Chain), a.Blocking)
	}
}

// TestReadAheadIgnoresPrefetchedChunks: sequential reads of chunks the
// start set's prefetch put in the memory cache start no read-ahead (it
// would fetch past the end of the prefetched file for nothing), while the
// same reads cold do.
func TestReadAheadIgnoresPrefetchedChunks(t *testing.T) {
	ti := stdImage(t) // holes at 2, 5, 6, 10
	for _, prefetched := range []bool{true, false} {
		origin := counting(NewOrigin(ti.st, testRoot))
		im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{origin}, ReadAhead: 3})
		ctx := context.Background()
		if prefetched {
			if _, err := im.Prefetch(ctx, []uint32{7, 8, 9}, 3); err != nil {
				t.Fatal(err)
			}
		}
		for _, i := range []int{7, 8, 9} {
			if _, err := im.ReadAt(ctx, make([]byte, 4096), int64(i)*cs); err != nil {
				t.Fatal(err)
			}
			im.quiesce()
		}
		got := origin.count(ti.m.Names[11])
		if want := map[bool]int{true: 0, false: 1}[prefetched]; got != want {
			t.Errorf("prefetched %v: chunk 11 fetched %d times after reading 7, 8, 9; want %d", prefetched, got, want)
		}
	}
}

// meetTier holds the first n fetches until all n have started (at most 10
// s), then serves every fetch from Tier.
type meetTier struct {
	Tier
	n       int64
	arrived atomic.Int64
	met     chan struct{}
}

func (m *meetTier) Fetch(ctx context.Context, name chunk.Name, dst []byte) ([]byte, error) {
	if a := m.arrived.Add(1); a == m.n {
		close(m.met)
	} else if a < m.n {
		select {
		case <-m.met:
		case <-time.After(10 * time.Second):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return m.Tier.Fetch(ctx, name, dst)
}
