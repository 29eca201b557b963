package cachefleet

import (
	"container/list"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/lode-dev/lode/internal/chunk"
)

// shardKey identifies one stored shard.
type shardKey struct {
	name chunk.Name
	idx  uint8
}

func (k shardKey) fileName() string { return k.name.String() + "." + strconv.Itoa(int(k.idx)) }

// parseFileName is the inverse of fileName; ok is false for anything else
// (temporary files, strays).
func parseFileName(s string) (shardKey, bool) {
	hexName, idx, ok := strings.Cut(s, ".")
	if !ok {
		return shardKey{}, false
	}
	n, err := chunk.ParseName(hexName)
	if err != nil || hexName != n.String() {
		return shardKey{}, false
	}
	i, err := strconv.Atoi(idx)
	if err != nil || i < 0 || i >= MaxShards || strconv.Itoa(i) != idx {
		return shardKey{}, false
	}
	return shardKey{n, uint8(i)}, true
}

// entryOverhead approximates the bookkeeping bytes of one entry (map slot,
// list element, struct), so that a budget of tiny shards is still honoured.
const entryOverhead = 128

// Memory segments of the segmented LRU.
const (
	probation = iota // first touch: evicted first
	protected        // hit at least twice
)

type memEntry struct {
	key    shardKey
	data   []byte // never modified once stored
	seg    int
	onDisk bool // an identical copy is in the disk tier
}

type diskEntry struct {
	key  shardKey
	size int64
}

// nodeStore holds shards under byte budgets: a segmented LRU in memory and,
// when a directory is configured, a plain LRU on disk that memory evictions
// are demoted to.
//
// Scan resistance: a new shard enters the probation segment; a second hit
// promotes it to the protected segment, which may fill up to protectedShare
// of the memory budget. Eviction takes the probation tail first, so a scan
// that touches many cold shards once only churns probation and leaves the
// hot, protected set in memory (a two-segment LRU, the simplest member of the
// LRU-k / 2Q family; DESIGN.md "Tiers").
//
// Disk writes and unlinks happen under the store's lock (simple and correct;
// a node's throughput bound is the network, see docs/fleet.md); disk reads
// happen outside it and treat a vanished file as a miss.
type nodeStore struct {
	log *slog.Logger
	m   *ServerMetrics

	mu                   sync.Mutex
	memBudget            int64
	protBudget           int64
	mem                  map[shardKey]*list.Element // of *memEntry
	seg                  [2]*list.List
	segBytes             [2]int64
	dir                  string
	diskBudget, diskUsed int64
	disk                 map[shardKey]*list.Element // of *diskEntry
	diskLRU              *list.List
}

// protectedShare is the part of the memory budget the protected segment may
// hold; the rest is the minimum room new shards get.
const protectedShare = 0.8

func newNodeStore(memBytes int64, dir string, diskBytes int64, log *slog.Logger, m *ServerMetrics) (*nodeStore, error) {
	s := &nodeStore{
		log:        log,
		m:          m,
		memBudget:  memBytes,
		protBudget: int64(float64(memBytes) * protectedShare),
		mem:        make(map[shardKey]*list.Element),
		seg:        [2]*list.List{list.New(), list.New()},
		dir:        dir,
		diskBudget: diskBytes,
		disk:       make(map[shardKey]*list.Element),
		diskLRU:    list.New(),
	}
	if dir != "" {
		if err := s.scanDisk(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// scanDisk rebuilds the disk index from the directory, oldest file least
// recently used, and removes leftovers of interrupted writes.
func (s *nodeStore) scanDisk() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("creating cache directory %s: %w", s.dir, err)
	}
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("scanning cache directory %s: %w", s.dir, err)
	}
	type found struct {
		key   shardKey
		size  int64
		mtime int64
	}
	var fs []found
	for _, de := range des {
		p := filepath.Join(s.dir, de.Name())
		if strings.HasPrefix(de.Name(), ".tmp-") {
			os.Remove(p)
			continue
		}
		k, ok := parseFileName(de.Name())
		if !ok || !de.Type().IsRegular() {
			continue
		}
		fi, err := de.Info()
		if err != nil || fi.Size() < HeaderSize || fi.Size() > MaxShardSize {
			continue
		}
		fs = append(fs, found{k, fi.Size(), fi.ModTime().UnixNano()})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].mtime < fs[j].mtime })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range fs {
		s.disk[f.key] = s.diskLRU.PushFront(&diskEntry{f.key, f.size})
		s.diskUsed += f.size + entryOverhead
	}
	s.evictDiskLocked()
	s.updateGaugesLocked()
	s.log.Info("reusing cache directory", slog.String("dir", s.dir), slog.Int("shards", len(s.disk)), slog.Int64("bytes", s.diskUsed))
	return nil
}

// get returns a stored shard; the slice must not be modified.
func (s *nodeStore) get(k shardKey) ([]byte, bool) {
	s.mu.Lock()
	if el, ok := s.mem[k]; ok {
		e := el.Value.(*memEntry)
		s.touchLocked(el, e)
		s.mu.Unlock()
		s.m.hits.WithLabelValues("memory").Inc()
		return e.data, true
	}
	del, ok := s.disk[k]
	if !ok {
		s.mu.Unlock()
		s.m.misses.Inc()
		return nil, false
	}
	s.diskLRU.MoveToFront(del)
	s.mu.Unlock()

	data, err := os.ReadFile(filepath.Join(s.dir, k.fileName()))
	if err == nil {
		var h ShardHeader
		h, _, err = ParseShard(data)
		if err == nil && (h.Name != k.name || h.Index != int(k.idx)) {
			err = fmt.Errorf("shard file %s holds chunk %s shard %d: %w", k.fileName(), h.Name, h.Index, ErrBadShard)
		}
	}
	if err != nil {
		s.mu.Lock()
		if cur, ok := s.disk[k]; ok && cur == del {
			s.dropDiskLocked(del)
		}
		s.updateGaugesLocked()
		s.mu.Unlock()
		if !os.IsNotExist(err) {
			s.log.Warn("dropping unreadable shard file", slog.String("chunk", k.name.String()), slog.Int("shard", int(k.idx)), slog.Any("err", err))
		}
		s.m.misses.Inc()
		return nil, false
	}
	s.m.hits.WithLabelValues("disk").Inc()
	// Bring it back to memory on probation; the disk copy stays, so a later
	// eviction needs no write.
	s.mu.Lock()
	if _, ok := s.mem[k]; !ok {
		if cur, ok := s.disk[k]; ok && cur == del {
			s.insertLocked(k, data, true)
		}
	}
	s.updateGaugesLocked()
	s.mu.Unlock()
	return data, true
}

// getAll returns every shard of chunk n the node holds, in index order.
func (s *nodeStore) getAll(n chunk.Name) [][]byte {
	var present []shardKey
	s.mu.Lock()
	for i := 0; i < MaxShards; i++ {
		k := shardKey{n, uint8(i)}
		_, inMem := s.mem[k]
		_, onDisk := s.disk[k]
		if inMem || onDisk {
			present = append(present, k)
		}
	}
	s.mu.Unlock()
	var out [][]byte
	for _, k := range present {
		if d, ok := s.get(k); ok {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		s.m.misses.Inc()
	}
	return out
}

// has reports whether a shard is stored, without touching recency.
func (s *nodeStore) has(k shardKey) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.mem[k]; ok {
		return len(el.Value.(*memEntry).data), true
	}
	if el, ok := s.disk[k]; ok {
		return int(el.Value.(*diskEntry).size), true
	}
	return 0, false
}

// put stores (or replaces) a shard. The store keeps data; the caller must
// not modify it afterwards.
func (s *nodeStore) put(k shardKey, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.mem[k]; ok {
		s.removeMemLocked(el)
	}
	if el, ok := s.disk[k]; ok {
		s.dropDiskLocked(el) // stale now: the new bytes may differ
	}
	s.insertLocked(k, data, false)
	s.updateGaugesLocked()
}

func (s *nodeStore) insertLocked(k shardKey, data []byte, onDisk bool) {
	e := &memEntry{key: k, data: data, seg: probation, onDisk: onDisk}
	s.mem[k] = s.seg[probation].PushFront(e)
	s.segBytes[probation] += memSize(e)
	for s.segBytes[probation]+s.segBytes[protected] > s.memBudget {
		victim := s.seg[probation].Back()
		if victim == nil {
			victim = s.seg[protected].Back()
		}
		if victim == nil {
			break
		}
		s.evictMemLocked(victim)
	}
}

func memSize(e *memEntry) int64 { return int64(len(e.data)) + entryOverhead }

// touchLocked records a hit: probation → protected, protected → its front.
func (s *nodeStore) touchLocked(el *list.Element, e *memEntry) {
	if e.seg == protected {
		s.seg[protected].MoveToFront(el)
		return
	}
	s.seg[probation].Remove(el)
	s.segBytes[probation] -= memSize(e)
	e.seg = protected
	s.mem[e.key] = s.seg[protected].PushFront(e)
	s.segBytes[protected] += memSize(e)
	// Overflow of the protected segment goes back on probation, not out.
	for s.segBytes[protected] > s.protBudget && s.seg[protected].Len() > 1 {
		tail := s.seg[protected].Back()
		te := tail.Value.(*memEntry)
		s.seg[protected].Remove(tail)
		s.segBytes[protected] -= memSize(te)
		te.seg = probation
		s.mem[te.key] = s.seg[probation].PushFront(te)
		s.segBytes[probation] += memSize(te)
	}
}

func (s *nodeStore) removeMemLocked(el *list.Element) *memEntry {
	e := el.Value.(*memEntry)
	s.seg[e.seg].Remove(el)
	s.segBytes[e.seg] -= memSize(e)
	delete(s.mem, e.key)
	return e
}

// evictMemLocked drops a memory entry, demoting it to disk when there is a
// disk tier and no copy there yet.
func (s *nodeStore) evictMemLocked(el *list.Element) {
	e := s.removeMemLocked(el)
	s.m.evictions.WithLabelValues("memory").Inc()
	if s.dir == "" || e.onDisk || s.diskBudget <= 0 {
		return
	}
	if int64(len(e.data))+entryOverhead > s.diskBudget {
		return
	}
	if err := writeFileAtomic(s.dir, e.key.fileName(), e.data); err != nil {
		s.log.Warn("demoting shard to disk", slog.String("chunk", e.key.name.String()), slog.Int("shard", int(e.key.idx)), slog.Any("err", err))
		return
	}
	s.disk[e.key] = s.diskLRU.PushFront(&diskEntry{e.key, int64(len(e.data))})
	s.diskUsed += int64(len(e.data)) + entryOverhead
	s.m.demotions.Inc()
	s.evictDiskLocked()
}

func (s *nodeStore) evictDiskLocked() {
	for s.diskUsed > s.diskBudget {
		el := s.diskLRU.Back()
		if el == nil {
			return
		}
		s.dropDiskLocked(el)
		s.m.evictions.WithLabelValues("disk").Inc()
	}
}

func (s *nodeStore) dropDiskLocked(el *list.Element) {
	d := el.Value.(*diskEntry)
	s.diskLRU.Remove(el)
	delete(s.disk, d.key)
	s.diskUsed -= d.size + entryOverhead
	if me, ok := s.mem[d.key]; ok {
		me.Value.(*memEntry).onDisk = false
	}
	if err := os.Remove(filepath.Join(s.dir, d.key.fileName())); err != nil && !os.IsNotExist(err) {
		s.log.Warn("removing shard file", slog.String("chunk", d.key.name.String()), slog.Int("shard", int(d.key.idx)), slog.Any("err", err))
	}
}

func (s *nodeStore) updateGaugesLocked() {
	s.m.bytes.WithLabelValues("memory").Set(float64(s.segBytes[probation] + s.segBytes[protected]))
	s.m.bytes.WithLabelValues("disk").Set(float64(s.diskUsed))
	s.m.shards.WithLabelValues("memory").Set(float64(len(s.mem)))
	s.m.shards.WithLabelValues("disk").Set(float64(len(s.disk)))
}

// stats is a snapshot for tests.
type storeStats struct {
	MemShards, DiskShards, Protected int
	MemBytes, DiskBytes              int64
}

func (s *nodeStore) stats() storeStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return storeStats{
		MemShards: len(s.mem), DiskShards: len(s.disk), Protected: s.seg[protected].Len(),
		MemBytes: s.segBytes[probation] + s.segBytes[protected], DiskBytes: s.diskUsed,
	}
}

// writeFileAtomic writes dir/name via a temporary file and rename, so a
// reader or a restart never sees a torn shard.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("creating temporary file for %s: %w", name, err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}
