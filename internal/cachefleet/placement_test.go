package cachefleet

import (
	"crypto/sha256"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lode-dev/lode/internal/chunk"
)

func testNodes(n int) []string {
	nodes := make([]string, n)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("http://10.0.0.%d:7431", i+1)
	}
	return nodes
}

func nameOf(s string) chunk.Name { return chunk.Name(sha256.Sum256([]byte(s))) }

// TestPlaceGolden pins the placement function: changing it moves every
// chunk in every running fleet, so it must only change on purpose.
func TestPlaceGolden(t *testing.T) {
	nodes := testNodes(7)
	node := func(i int) string { return nodes[i-1] }
	tests := []struct {
		chunk string // name = SHA-256 of this string
		k     int
		want  []string
	}{
		{"a", 5, []string{node(2), node(3), node(4), node(7), node(5)}},
		{"b", 5, []string{node(2), node(4), node(6), node(1), node(5)}},
		{"c", 5, []string{node(3), node(4), node(7), node(2), node(5)}},
		{"d", 5, []string{node(7), node(3), node(5), node(6), node(1)}},
		{"d", 2, []string{node(7), node(3)}},
		{"d", 9, []string{node(7), node(3), node(5), node(6), node(1), node(2), node(4)}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/k=%d", tt.chunk, tt.k), func(t *testing.T) {
			got := Place(nameOf(tt.chunk), nodes, tt.k)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Place(%s, 7 nodes, %d) mismatch (-want +got):\n%s", tt.chunk, tt.k, diff)
			}
		})
	}
}

func TestPlaceIsPure(t *testing.T) {
	nodes := testNodes(6)
	rev := slices.Clone(nodes)
	slices.Reverse(rev)
	dup := append(slices.Clone(nodes), nodes[0], nodes[3])
	for i := 0; i < 100; i++ {
		n := nameOf(fmt.Sprint(i))
		want := Place(n, nodes, 5)
		if got := Place(n, rev, 5); !slices.Equal(got, want) {
			t.Fatalf("Place(reversed nodes) = %v, want %v", got, want)
		}
		if got := Place(n, dup, 5); !slices.Equal(got, want) {
			t.Fatalf("Place(duplicated nodes) = %v, want %v", got, want)
		}
	}
	if got := Place(nameOf("x"), nil, 5); got != nil {
		t.Errorf("Place(no nodes) = %v, want nil", got)
	}
}

// TestPlaceBalance checks every node gets close to its share of shards.
func TestPlaceBalance(t *testing.T) {
	const chunks, n, k = 20000, 10, 5
	nodes := testNodes(n)
	count := map[string]int{}
	for i := 0; i < chunks; i++ {
		for _, node := range Place(nameOf(fmt.Sprint(i)), nodes, k) {
			count[node]++
		}
	}
	want := float64(chunks * k / n)
	for _, node := range nodes {
		if dev := math.Abs(float64(count[node])-want) / want; dev > 0.05 {
			t.Errorf("node %s holds %d shards, want %.0f ± 5%%", node, count[node], want)
		}
	}
}

// TestPlaceMovement checks that adding or removing one of N nodes changes
// about 1/N of the (chunk, node) pairs (rendezvous hashing's minimal
// disruption): the changed node enters or leaves a chunk's top-k with
// probability k/N, and then displaces one of its k members.
func TestPlaceMovement(t *testing.T) {
	const chunks, n, k = 5000, 10, 5
	nodes := testNodes(n + 1)
	before, added := nodes[:n], nodes
	removed := slices.Delete(slices.Clone(before), 3, 4)
	tests := []struct {
		name     string
		from, to []string
		want     float64 // expected share of (chunk, shard) slots that move
	}{
		{"add", before, added, 1 / float64(n+1)},
		{"remove", before, removed, 1 / float64(n)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			moved := 0
			for i := 0; i < chunks; i++ {
				nm := nameOf(fmt.Sprint(i))
				a, b := Place(nm, tt.from, k), Place(nm, tt.to, k)
				// Reads ask every node of the set for whatever shards it
				// holds, so only set membership matters, not position.
				for _, node := range a {
					if !slices.Contains(b, node) {
						moved++
					}
				}
			}
			share := float64(moved) / float64(chunks*k)
			if share > tt.want*1.15 || share < tt.want*0.85 {
				t.Errorf("%s one node: %.3f of shard slots left their node set, want ≈ %.3f", tt.name, share, tt.want)
			}
		})
	}
}

func BenchmarkPlace_5of10(b *testing.B) {
	nodes := testNodes(10)
	n := nameOf("bench")
	b.ReportAllocs()
	for b.Loop() {
		Place(n, nodes, 5)
	}
}
