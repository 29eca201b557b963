package cachefleet

import (
	"crypto/sha256"
	"encoding/binary"
	"sort"

	"github.com/lode-dev/lode/internal/chunk"
)

// Place returns the nodes that hold chunk n's shards, in shard order: shard i
// lives on Place(n, nodes, k)[i]. It is rendezvous (highest random weight)
// hashing: every node scores SHA-256(node ‖ 0x00 ‖ name) (first 8 bytes, big
// endian), and the k highest scores win, highest first; ties, which need a
// 64-bit collision, fall back to the node string. Adding or removing one of N
// nodes changes the set of only those chunks whose top k includes that node
// (k/N of them), and each by one member. Positions shift with the set, which
// is why readers ask each node for every shard it holds of a chunk rather
// than for shard i (see Client.Fetch).
//
// Place is pure: the result depends only on its arguments, not on the order
// of nodes. Duplicate nodes count once. When fewer than k distinct nodes
// exist, all of them are returned (see Client for how shards wrap around).
func Place(n chunk.Name, nodes []string, k int) []string {
	if k <= 0 || len(nodes) == 0 {
		return nil
	}
	type scored struct {
		node  string
		score uint64
	}
	s := make([]scored, 0, len(nodes))
	seen := make(map[string]bool, len(nodes))
	for _, node := range nodes {
		if seen[node] {
			continue
		}
		seen[node] = true
		s = append(s, scored{node, score(node, n)})
	}
	sort.Slice(s, func(i, j int) bool {
		if s[i].score != s[j].score {
			return s[i].score > s[j].score
		}
		return s[i].node < s[j].node
	})
	if k > len(s) {
		k = len(s)
	}
	out := make([]string, k)
	for i := range out {
		out[i] = s[i].node
	}
	return out
}

// score is the rendezvous weight of node for chunk n. The 0x00 separator
// keeps node "ab" + name "c…" distinct from node "a" + name "bc…".
func score(node string, n chunk.Name) uint64 {
	h := sha256.New()
	h.Write([]byte(node))
	h.Write([]byte{0})
	h.Write(n[:])
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}
