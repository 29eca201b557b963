package cachenode

import (
	"container/list"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/prometheus/client_golang/prometheus"
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
	if err != nil || i < 0 || i >= fleetproto.MaxShards || strconv.Itoa(i) != idx {
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
	onDisk bool      // an identical copy is in the disk tier
	used   time.Time // inserted or last hit
}

type diskEntry struct {
	key  shardKey
	size int64
	// lastHit is the time of the last disk hit, if hit; a second hit soon
	// after brings the shard back into memory (nodeStore.promoteLocked).
	lastHit time.Time
	hit     bool
	// open is the shard's file kept open for the fast path (nil: none);
	// openIdx is its place in nodeStore.openFiles.
	open    *sharedFile
	openIdx int
}

// sharedFile is a checked shard file kept open and shared by concurrent
// responses, which send it with sendfile at explicit offsets (never moving
// its file position). The store holds one reference while the file is
// cached, each response one more; the last release closes it.
type sharedFile struct {
	f    *os.File
	refs atomic.Int32
}

func (sf *sharedFile) release() {
	if sf.refs.Add(-1) == 0 {
		sf.f.Close()
	}
}

// nodeStore holds shards under byte budgets: a segmented LRU in memory and,
// when a directory is configured, an LRU on disk that memory evictions are
// demoted to, behind a frequency-based admission test.
//
// Scan resistance, in both tiers (DESIGN.md "Tiers"; W-TinyLFU's structure,
// with memory's probation segment as the window):
//   - Memory: a new shard enters the probation segment; a second hit
//     promotes it to the protected segment, which may fill up to
//     protectedShare of the memory budget. Eviction takes the probation tail
//     first, so a scan that touches many cold shards once only churns
//     probation and leaves the hot, protected set in memory (a two-segment
//     LRU, of the LRU-k / 2Q family).
//   - Disk: a shard evicted from memory is written to disk only if the disk
//     has room, or if it was asked for more often recently than the disk's
//     least recently used shard, which it then evicts (TinyLFU admission;
//     freqSketch counts every GET and PUT). A scan's shards, asked for once
//     or twice, are dropped instead of flushing shards that are re-read
//     (TestNodeStoreScanAcrossTiers: a scan of 8× the node's capacity keeps
//     the hot set resident; a plain LRU disk kept 8 of 50).
//
// A shard held only on disk is served from its file (open, header and length
// checked, then copied with sendfile by net/http) and is read back into
// memory only on a second disk hit soon after the first (promoteLocked): a
// one-off disk hit neither copies the shard nor evicts another.
//
// Disk writes and unlinks happen under the store's lock (simple and correct;
// a node's throughput bound is the network, see docs/fleet.md); disk reads
// happen outside it and treat a vanished file as a miss. A file being served
// stays readable after an eviction unlinks it.
type nodeStore struct {
	log *slog.Logger
	m   *ServerMetrics
	now func() time.Time // time.Now; tests replace it

	memHits, diskHits prometheus.Counter // m.hits' series, resolved once

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
	// openFiles are the disk entries whose files are kept open, at most
	// maxOpen (random replacement; nginx's open_file_cache, for the fast
	// path: a hit then costs no open, fstat, header read or close).
	openFiles []*diskEntry
	maxOpen   int
	// freq estimates how often each shard was asked for recently (GETs,
	// hits or misses, and PUTs): the disk tier's admission test.
	freq *freqSketch
}

// protectedShare is the part of the memory budget the protected segment may
// hold; the rest is the minimum room new shards get.
const protectedShare = 0.8

func newNodeStore(memBytes int64, dir string, diskBytes int64, log *slog.Logger, m *ServerMetrics) (*nodeStore, error) {
	s := &nodeStore{
		log:        log,
		m:          m,
		now:        time.Now,
		memHits:    m.hits.WithLabelValues("memory"),
		diskHits:   m.hits.WithLabelValues("disk"),
		memBudget:  memBytes,
		protBudget: int64(float64(memBytes) * protectedShare),
		mem:        make(map[shardKey]*list.Element),
		seg:        [2]*list.List{list.New(), list.New()},
		dir:        dir,
		diskBudget: diskBytes,
		disk:       make(map[shardKey]*list.Element),
		diskLRU:    list.New(),
		maxOpen:    maxOpenFiles(),
		freq:       newFreqSketch(int((memBytes + max(diskBytes, 0)) / (16 << 10))),
	}
	if dir != "" {
		if err := s.scanDisk(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// maxOpenFiles bounds the shard files kept open: a quarter of the file
// descriptor limit, at most 4096.
func maxOpenFiles() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return int(min(rl.Cur/4, 4096))
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
		if err != nil || fi.Size() < fleetproto.HeaderSize || fi.Size() > fleetproto.MaxShardSize {
			continue
		}
		fs = append(fs, found{k, fi.Size(), fi.ModTime().UnixNano()})
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].mtime < fs[j].mtime })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range fs {
		s.disk[f.key] = s.diskLRU.PushFront(&diskEntry{key: f.key, size: f.size})
		s.diskUsed += f.size + entryOverhead
	}
	s.evictDiskLocked()
	s.updateGaugesLocked()
	s.log.Info("reusing cache directory", slog.String("dir", s.dir), slog.Int("shards", len(s.disk)), slog.Int64("bytes", s.diskUsed))
	return nil
}

// shardRef is a shard ready to be served: bytes in memory, or an open shard
// file whose header and length were checked. Close it after use.
type shardRef struct {
	data []byte   // a memory hit; never modified
	file *os.File // a disk hit, streamed from the file
	size int64
	// shared is set when file is the store's cached descriptor: read it
	// only at explicit offsets; close releases it.
	shared *sharedFile
}

// writeTo writes the whole shard to w. A file is copied through an
// io.LimitedReader, which net/http hands to sendfile(2) when w is (or wraps)
// a response on a TCP connection.
func (r shardRef) writeTo(w io.Writer) (int64, error) {
	if r.file == nil {
		n, err := w.Write(r.data)
		return int64(n), err
	}
	if r.shared != nil {
		return io.Copy(w, io.NewSectionReader(r.file, 0, r.size))
	}
	return io.Copy(w, io.LimitReader(r.file, r.size))
}

func (r shardRef) close() {
	switch {
	case r.shared != nil:
		r.shared.release()
	case r.file != nil:
		r.file.Close()
	}
}

// diskPromoteWindow bounds how close two disk hits of a shard must be for
// the second to bring it back into memory.
const diskPromoteWindow = time.Minute

// open returns a stored shard. A memory hit counts as a touch (probation →
// protected). A shard held only on disk is served from its file without
// reading it into memory, unless this is its second disk hit within the
// promotion window (see promoteLocked): then it is read and put back into
// memory on probation, its file kept. A file that is missing, or whose
// header or length is wrong, is dropped from the index and is a miss.
func (s *nodeStore) open(k shardKey) (shardRef, bool) { return s.openRef(k, false) }

// openShared is open for the fast path: a disk shard comes as the store's
// cached descriptor (opened and checked on first use), to be read at
// explicit offsets only.
func (s *nodeStore) openShared(k shardKey) (shardRef, bool) { return s.openRef(k, true) }

func (s *nodeStore) openRef(k shardKey, share bool) (shardRef, bool) {
	s.mu.Lock()
	s.freq.add(k)
	if el, ok := s.mem[k]; ok {
		e := el.Value.(*memEntry)
		s.touchLocked(el, e)
		s.mu.Unlock()
		s.memHits.Inc()
		return shardRef{data: e.data, size: int64(len(e.data))}, true
	}
	del, ok := s.disk[k]
	if !ok {
		s.mu.Unlock()
		s.m.misses.Inc()
		return shardRef{}, false
	}
	s.diskLRU.MoveToFront(del)
	de := del.Value.(*diskEntry)
	now := s.now()
	promote := s.promoteLocked(de, now)
	de.hit, de.lastHit = true, now
	if share && !promote && de.open != nil {
		sf := de.open
		sf.refs.Add(1)
		s.mu.Unlock()
		s.diskHits.Inc()
		return shardRef{file: sf.f, size: de.size, shared: sf}, true
	}
	s.mu.Unlock()

	if promote {
		return s.readIntoMemory(k, del)
	}
	ref, err := s.openFile(k, de.size)
	if err != nil {
		s.dropBadFile(k, del, err)
		return shardRef{}, false
	}
	if share && s.maxOpen > 0 {
		s.mu.Lock()
		if cur, ok := s.disk[k]; ok && cur == del && de.open == nil {
			s.cacheFileLocked(de, ref.file)
			de.open.refs.Add(1)
			ref.shared = de.open
		}
		s.mu.Unlock()
	}
	s.diskHits.Inc()
	return ref, true
}

// closeFiles closes the cached descriptors (responses still sending one
// keep it until they release it).
func (s *nodeStore) closeFiles() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.openFiles) > 0 {
		s.uncacheFileLocked(s.openFiles[len(s.openFiles)-1])
	}
}

// cacheFileLocked keeps f open as de's shared file, closing a random other
// one if maxOpen are open.
func (s *nodeStore) cacheFileLocked(de *diskEntry, f *os.File) {
	if len(s.openFiles) >= s.maxOpen {
		s.uncacheFileLocked(s.openFiles[rand.IntN(len(s.openFiles))])
	}
	de.open = &sharedFile{f: f}
	de.open.refs.Store(1)
	de.openIdx = len(s.openFiles)
	s.openFiles = append(s.openFiles, de)
}

// uncacheFileLocked drops de's shared file, if any; responses still
// sending it keep it open until they release it.
func (s *nodeStore) uncacheFileLocked(de *diskEntry) {
	if de.open == nil {
		return
	}
	last := s.openFiles[len(s.openFiles)-1]
	s.openFiles[de.openIdx] = last
	last.openIdx = de.openIdx
	s.openFiles[len(s.openFiles)-1] = nil
	s.openFiles = s.openFiles[:len(s.openFiles)-1]
	de.open.release()
	de.open = nil
}

// promoteLocked decides whether a disk hit at now brings the shard back into
// memory: only a second hit within diskPromoteWindow of the previous one,
// and, when memory is full, only if that gap is shorter than the time memory
// keeps an untouched shard (the age of its least recently used entry, which
// the promotion would evict). A shard reused less often than that would be
// evicted again before its next hit: promoting it only costs a read into
// memory and evicts another shard, so it keeps being served from its file.
func (s *nodeStore) promoteLocked(de *diskEntry, now time.Time) bool {
	if !de.hit || de.size+entryOverhead > s.memBudget {
		return false
	}
	gap := now.Sub(de.lastHit)
	if gap > diskPromoteWindow {
		return false
	}
	if s.segBytes[probation]+s.segBytes[protected]+de.size+entryOverhead <= s.memBudget {
		return true // room without evicting anything
	}
	tail := s.seg[probation].Back()
	if tail == nil {
		tail = s.seg[protected].Back()
	}
	return tail != nil && gap < now.Sub(tail.Value.(*memEntry).used)
}

// openFile opens k's file and checks its header and total length (the
// payload can only be checked by the client, by rebuilding and hashing).
func (s *nodeStore) openFile(k shardKey, size int64) (shardRef, error) {
	f, err := os.Open(filepath.Join(s.dir, k.fileName()))
	if err != nil {
		return shardRef{}, err
	}
	err = checkShardFile(f, k, size)
	if err != nil {
		f.Close()
		return shardRef{}, err
	}
	return shardRef{file: f, size: size}, nil
}

func checkShardFile(f *os.File, k shardKey, size int64) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != size {
		return fmt.Errorf("shard file %s has %d bytes, indexed with %d: %w", k.fileName(), fi.Size(), size, fleetproto.ErrBadShard)
	}
	var hb [fleetproto.HeaderSize]byte
	if _, err := f.ReadAt(hb[:], 0); err != nil {
		return fmt.Errorf("reading header of shard file %s: %w", k.fileName(), err)
	}
	h, err := fleetproto.ParseHeader(hb[:])
	if err == nil {
		err = h.CheckSize(size)
	}
	if err == nil && (h.Name != k.name || h.Index != int(k.idx)) {
		err = fmt.Errorf("shard file %s holds chunk %s shard %d: %w", k.fileName(), h.Name, h.Index, fleetproto.ErrBadShard)
	}
	return err
}

// readIntoMemory reads k's file, checks it, and puts it back into memory on
// probation (the file stays, so a later eviction needs no write).
func (s *nodeStore) readIntoMemory(k shardKey, del *list.Element) (shardRef, bool) {
	data, err := os.ReadFile(filepath.Join(s.dir, k.fileName()))
	if err == nil {
		var h fleetproto.ShardHeader
		h, _, err = fleetproto.ParseShard(data)
		if err == nil && (h.Name != k.name || h.Index != int(k.idx)) {
			err = fmt.Errorf("shard file %s holds chunk %s shard %d: %w", k.fileName(), h.Name, h.Index, fleetproto.ErrBadShard)
		}
	}
	if err != nil {
		s.dropBadFile(k, del, err)
		return shardRef{}, false
	}
	s.diskHits.Inc()
	s.mu.Lock()
	if _, ok := s.mem[k]; !ok {
		if cur, ok := s.disk[k]; ok && cur == del && int64(len(data)) == cur.Value.(*diskEntry).size {
			s.insertLocked(k, data, true)
			s.m.promotions.Inc()
		}
	}
	s.updateGaugesLocked()
	s.mu.Unlock()
	return shardRef{data: data, size: int64(len(data))}, true
}

// dropBadFile forgets k's disk entry (if it is still del) after its file
// could not be served, and counts a miss.
func (s *nodeStore) dropBadFile(k shardKey, del *list.Element, err error) {
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
}

// openAll returns every shard of chunk n the node holds, in index order.
func (s *nodeStore) openAll(n chunk.Name) []shardRef { return s.openAllInto(nil, n, false) }

// openAllInto is openAll appending to out, with openShared's disk refs if
// share.
func (s *nodeStore) openAllInto(out []shardRef, n chunk.Name, share bool) []shardRef {
	var buf [fleetproto.MaxShards]shardKey
	present := buf[:0]
	s.mu.Lock()
	for i := 0; i < fleetproto.MaxShards; i++ {
		k := shardKey{n, uint8(i)}
		_, inMem := s.mem[k]
		_, onDisk := s.disk[k]
		if inMem || onDisk {
			present = append(present, k)
		}
	}
	s.mu.Unlock()
	for _, k := range present {
		if r, ok := s.openRef(k, share); ok {
			out = append(out, r)
		}
	}
	if len(present) == 0 {
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
	s.freq.add(k)
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
	e := &memEntry{key: k, data: data, seg: probation, onDisk: onDisk, used: s.now()}
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
	e.used = s.now()
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
	if !s.admitDiskLocked(e.key, int64(len(e.data))+entryOverhead) {
		s.m.rejections.Inc()
		return
	}
	if err := writeFileAtomic(s.dir, e.key.fileName(), e.data); err != nil {
		s.log.Warn("demoting shard to disk", slog.String("chunk", e.key.name.String()), slog.Int("shard", int(e.key.idx)), slog.Any("err", err))
		return
	}
	s.disk[e.key] = s.diskLRU.PushFront(&diskEntry{key: e.key, size: int64(len(e.data))})
	s.diskUsed += int64(len(e.data)) + entryOverhead
	s.m.demotions.Inc()
	s.evictDiskLocked()
}

// admitDiskLocked decides whether a shard of size bytes (with overhead)
// evicted from memory enters the disk tier: always when it fits without
// evicting, else only if it was asked for more often recently than every
// shard it would evict, least recently used first (TinyLFU admission). Ties
// keep the incumbent, so shards seen once cannot displace each other either.
func (s *nodeStore) admitDiskLocked(k shardKey, size int64) bool {
	need := s.diskUsed + size - s.diskBudget
	if need <= 0 {
		return true
	}
	f := s.freq.estimate(k)
	for el := s.diskLRU.Back(); el != nil && need > 0; el = el.Prev() {
		d := el.Value.(*diskEntry)
		if f <= s.freq.estimate(d.key) {
			return false
		}
		need -= d.size + entryOverhead
	}
	return true
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
	s.uncacheFileLocked(d)
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
