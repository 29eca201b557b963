package build

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/ext4img"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/oci"
	"github.com/lode-dev/lode/internal/store"
)

// Options configure one build.
type Options struct {
	Source string // docker://REF, oci:DIR[:TAG], docker-archive:FILE[:TAG], rootfs:FILE
	Tenant string
	Name   string

	ChunkSize  int    // default chunk.DefaultSize
	SaltDomain string // optional placement domain mixed into the salt
	// Compression is manifest.CompressionNone (the zero value; lode build
	// defaults to DefaultCompression) or
	// manifest.CompressionZstd: every non-hole chunk is then sealed as one
	// zstd frame of its bytes (zstdLevel, no checksum: GCM authenticates),
	// whether or not that is smaller, under a salt of its own (ZstdSalt).
	Compression uint8
	// Uploads bounds concurrent seal+upload workers (default 4×GOMAXPROCS:
	// sealing is CPU-bound, uploads to a remote store are latency-bound).
	Uploads int
	TempDir string // where the ext4 image is staged (default os.TempDir())
	// KeepImage, when set, is a path where the built ext4 image is kept.
	KeepImage string
	// Timeout bounds how long a build may run after it resolved the active
	// root (default DefaultTimeout): the garbage collector expires a retired
	// root once it has been retired this long (its --build-timeout, which
	// must be the same), so a later pointer could name a deleted root.
	// Before it writes the pointer, a build past Timeout fails with
	// ErrDeadline, and one whose root is no longer active with
	// ErrRootNotActive; either writes no pointer and removes its manifest.
	Timeout time.Duration

	Flatten oci.FlattenOptions
	Ext4    ext4img.Options
	// Remote configures docker:// sources (platform, CA, insecure hosts,
	// credentials, timeout, download jobs and progress).
	Remote oci.RemoteOptions
	// Force rebuilds a docker:// source even when Name already points to an
	// image built from the same source manifest digest (with the same chunk
	// size and compression); otherwise such a build is a no-op that reads
	// only the registry's manifest and config (Result.Unchanged). Options
	// the manifest does not record (Flatten, Ext4.Align) need Force to take
	// effect on an unchanged source.
	Force bool
	// StartFiles are programs a start of the image runs, beside its
	// entrypoint (or cmd, or /bin/sh when it has neither): their files and
	// ELF closures join the build-time start set (ext4img.StartSet) stored
	// as the manifest's hints. NoStartSet stores no hints.
	StartFiles []string
	NoStartSet bool

	Log      *slog.Logger
	Progress Progress // may be nil
	Now      func() time.Time
}

// lode build's defaults (docs/decisions/20261203-build-defaults.md): zstd
// chunks and the chunk-aligned layout (Ext4.Align = the chunk size), which
// keep chunks shared when an early file changes size or layers are
// reordered and store no more than the old layout. Options' zero values
// are the old layout and raw chunks (lode build --align=false --compress
// none); images of either kind read the same way.
const (
	DefaultCompression = manifest.CompressionZstd
	DefaultAlign       = true
)

// DefaultTimeout is Options.Timeout's default, gc.DefaultConfig's BuildTimeout.
const DefaultTimeout = time.Hour

// Sentinel errors of the commit check (see Options.Timeout).
var (
	ErrDeadline      = errors.New("build ran past its deadline")
	ErrRootNotActive = errors.New("build's root is no longer active")
)

// Progress observes a build. Calls come from several goroutines.
type Progress interface {
	// Phase starts a phase; total is -1 when unknown.
	Phase(name string, total int64)
	// Add reports n more units of the current phase done.
	Add(n int64)
}

// Result summarises a build.
type Result struct {
	Tenant, Name string
	Root         store.RootID
	ManifestID   string
	SourceDigest string
	Source       oci.Source // the source record kept in the manifest
	Config       manifest.Config
	// Unchanged: Name already pointed to an image of the same docker://
	// source digest; nothing was downloaded or stored (see Options.Force).
	Unchanged bool
	// Pulled counts compressed bytes read from the registry.
	Pulled int64
	// DroppedDevices counts device nodes under /dev left out of the image
	// (oci.FlattenStats.DroppedDevices).
	DroppedDevices int

	InputBytes int64 // file content bytes in the flattened tree
	ImageSize  int64 // bytes of the ext4 image
	Chunks     int
	Holes      int
	New        int   // chunks uploaded by this build
	NewBytes   int64 // ciphertext bytes uploaded
	Dedup      int   // chunks already in the root or repeated within the image
	// StartChunks is the size of the build-time start set (manifest.Hints).
	StartChunks int
	// Early counts the chunks sealed speculatively (stagedImage): as the
	// image was written, or once it was complete, each chunk written in
	// full; the others (rewritten after their seal, partly written) are
	// sealed after the flatten.
	Early    int
	Duration time.Duration
}

// SharedShare is the share of non-hole chunks that were not uploaded.
func (r Result) SharedShare() float64 {
	if d := r.Chunks - r.Holes; d > 0 {
		return float64(r.Dedup) / float64(d)
	}
	return 0
}

// chunkSalt is the salt of o's chunks in root.
func chunkSalt(root store.RootID, o Options) []byte {
	salt := Salt(root, o.SaltDomain)
	if o.Compression == manifest.CompressionZstd {
		salt = ZstdSalt(salt)
	}
	return salt
}

// Salt returns the salt of chunks built into root within domain.
func Salt(root store.RootID, domain string) []byte {
	h := sha256.New()
	h.Write([]byte("lode/salt/v1\x00"))
	h.Write([]byte(root))
	h.Write([]byte{0})
	h.Write([]byte(domain))
	return h.Sum(nil)
}

// ZstdSalt returns the salt of zstd-compressed chunks, derived from salt (the
// uncompressed chunks' salt of the same root and domain). Compressed chunks
// never deduplicate with uncompressed ones anyway (their sealed bytes
// differ); a salt of their own also keeps an uncompressed chunk whose bytes
// happen to be a zstd frame from ever having the same name and key as a
// compressed chunk, which readers would decode differently.
func ZstdSalt(salt []byte) []byte {
	h := sha256.New()
	h.Write([]byte("lode/salt/zstd/v1\x00"))
	h.Write(salt)
	return h.Sum(nil)
}

// zstdLevel is the one compression level of zstd chunks. It is part of
// their convergence: the same bytes compressed at another level (or by
// another version of the encoder, if its output changes) get other names,
// so every builder of one store must use the same. SpeedFastest (about zstd
// level 1) since zstd became lode build's default (issue #22,
// docs/decisions/20261203-build-defaults.md): on the Debian rootfs it
// compressed 2.2× faster than SpeedDefault (level 3, the level before) for
// 5% more bytes. Chunks of images built at level 3 read the same; they no
// longer dedup with new builds.
const zstdLevel = zstd.SpeedFastest

func (o *Options) setDefaults() error {
	if o.Compression != manifest.CompressionNone && o.Compression != manifest.CompressionZstd {
		return fmt.Errorf("compression %d: want none (%d) or zstd (%d)", o.Compression, manifest.CompressionNone, manifest.CompressionZstd)
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = chunk.DefaultSize
	}
	if err := chunk.ValidSize(o.ChunkSize); err != nil {
		return err
	}
	if o.Uploads <= 0 {
		o.Uploads = 4 * runtime.GOMAXPROCS(0)
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = nopProgress{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Flatten == (oci.FlattenOptions{}) {
		o.Flatten = oci.DefaultFlattenOptions()
	}
	if o.Flatten.TempDir == "" {
		o.Flatten.TempDir = o.TempDir
	}
	if o.Remote.TempDir == "" {
		o.Remote.TempDir = o.TempDir
	}
	if err := store.ValidName("tenant", o.Tenant); err != nil {
		return err
	}
	return store.ValidName("image", o.Name)
}

// Build runs the whole pipeline for one image. storeSecret is the
// convergent-encryption secret of the store (manifest.FileKeyring.StoreSecret);
// kr wraps the manifest's data key for o.Tenant.
func Build(ctx context.Context, st store.Store, kr manifest.Keyring, storeSecret []byte, o Options) (Result, error) {
	start := time.Now()
	if err := o.setDefaults(); err != nil {
		return Result{}, err
	}
	sealer, err := chunk.NewSealer(storeSecret)
	if err != nil {
		return Result{}, err
	}
	// Check the tenant key before doing any work: a missing key is the most
	// common mistake and should not cost a whole flatten.
	// A key in KMS is checked by asking for a data key, which also finds
	// an unreachable KMS before the flatten.
	if ik, ok := kr.(manifest.ImageKeyring); ok && ik.BindsImages(o.Tenant) {
		dk, _, err := ik.GenerateDataKey(ctx, o.Tenant, o.Name)
		if err != nil {
			return Result{}, fmt.Errorf("checking key of tenant %s: %w", o.Tenant, err)
		}
		clear(dk)
	} else if _, err := kr.Wrap(ctx, o.Tenant, make([]byte, 32)); err != nil {
		return Result{}, fmt.Errorf("checking key of tenant %s: %w", o.Tenant, err)
	}
	res := Result{Tenant: o.Tenant, Name: o.Name}

	im, err := oci.OpenWith(ctx, o.Source, o.Remote)
	if err != nil {
		return res, err
	}
	defer im.Close()
	res.SourceDigest = im.Digest()
	res.Source = im.Source()
	if res.Source.Remote && !o.Force {
		if done, err := unchanged(ctx, st, &res, o); done || err != nil {
			res.Duration = time.Since(start)
			return res, err
		}
	}
	c := im.Config()
	res.Config = manifest.Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User}

	// When the store has an active root, the chunks' salt is known before
	// the flatten, and chunks are sealed and stored while the image is
	// written (stagedImage). A store without one gets its first root only
	// once the flatten succeeded, so a failed first build leaves nothing;
	// that build seals after the flatten.
	resolved := o.Now()
	root, rerr := store.ActiveRoot(ctx, st, false, resolved)
	if rerr != nil && !errors.Is(rerr, store.ErrNoActiveRoot) {
		return res, rerr
	}
	var withRoot *store.RootID
	if rerr == nil {
		withRoot = &root
	}
	o.Log.Info("flattening", "source", o.Source, "layers", im.Layers(), "image", o.Tenant+"/"+o.Name)
	// A single-layer image is first flattened in one read (oci.FlattenOnce);
	// one whose layer is not in stream order, or that fails, is staged
	// again and flattened in two. A layer with a stated digest is checked
	// only at the end of that one read, so it is read once only when no
	// chunk of it can be stored before: no root yet (sealed after the
	// flatten), or a store that batches (nothing visible before Commit).
	// A rootfs tar states none (its digest is learned).
	_, batches := st.(store.Batcher)
	once := im.Layers() == 1 && (im.Digest() == "" || withRoot == nil || batches)
	stg, fs, err := flattenAttempt(ctx, im, st, sealer, withRoot, once, o)
	if errors.Is(err, oci.ErrTwoPasses) {
		o.Log.Info("flattening again in two passes", "image", o.Tenant+"/"+o.Name)
		stg.discard()
		stg, fs, err = flattenAttempt(ctx, im, st, sealer, withRoot, false, o)
	}
	if stg != nil {
		defer stg.discard()
	}
	if err != nil {
		return res, err
	}
	img, simg, cs := stg.img, stg.simg, stg.cs
	res.InputBytes = fs.Bytes
	res.Pulled = im.Pulled()
	// A rootfs tar's digest is known once the flatten read it.
	res.SourceDigest, res.Source = im.Digest(), im.Source()
	if res.DroppedDevices = fs.DroppedDevices; fs.DroppedDevices > 0 {
		o.Log.Info("dropped device nodes under /dev (runtimes mount their own; --allow-devices keeps them)",
			"image", o.Tenant+"/"+o.Name, "count", fs.DroppedDevices)
	}
	size, err := img.Seek(0, io.SeekEnd)
	if err != nil {
		return res, fmt.Errorf("sizing staged image: %w", err)
	}
	res.ImageSize = size
	var hints []uint32
	if !o.NoStartSet {
		hints = startSet(img, size, res.Config, o)
		res.StartChunks = len(hints)
	}

	if cs == nil {
		resolved = o.Now()
		if root, err = store.ActiveRoot(ctx, st, true, resolved); err != nil {
			return res, err
		}
		if cs, err = newChunkSealer(ctx, st, sealer, chunkSalt(root, o), root, simg, o); err != nil {
			return res, err
		}
		stg.cs = cs // released by stg.discard
	}
	res.Root = root

	m := &manifest.Manifest{
		Root:         string(root),
		Compression:  o.Compression,
		ChunkSize:    o.ChunkSize,
		ImageSize:    size,
		FSType:       ext4img.FSType,
		SourceDigest: res.SourceDigest,
		Config:       res.Config,
		Hints:        hints,

		SourceRef:         res.Source.Ref,
		SourceIndexDigest: res.Source.IndexDigest,
		DiffIDs:           res.Source.DiffIDs,
	}
	n := chunk.Count(size, o.ChunkSize)
	o.Log.Info("chunking", "image", o.Tenant+"/"+o.Name, "bytes", size, "chunks", n, "root", root)
	o.Progress.Phase("upload", size)
	if o.KeepImage != "" {
		if err := copyFile(img, o.KeepImage); err != nil {
			return res, err
		}
	}
	if err := cs.finish(size, m, &res); err != nil {
		return res, err
	}
	res.Chunks = n
	res.Early = int(cs.specOK.Load())
	o.Log.Info("sealed", "image", o.Tenant+"/"+o.Name, "chunks", n, "during_flatten", res.Early)

	sealed, err := manifest.SealImage(ctx, m, o.Tenant, o.Name, kr)
	if err != nil {
		return res, fmt.Errorf("sealing manifest of %s/%s: %w", o.Tenant, o.Name, err)
	}
	id := manifest.ID(sealed)
	res.ManifestID = id
	mkey := store.ManifestKey(root, id)
	if err := st.PutIfAbsent(ctx, mkey, sealed); err != nil && !errors.Is(err, store.ErrExists) {
		return res, fmt.Errorf("storing manifest %s: %w", mkey, err)
	}
	// Leave no manifest behind that no pointer names. The delete uses a
	// fresh context: the build's may be what was cancelled.
	dropManifest := func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if derr := st.Delete(dctx, mkey); derr != nil {
			o.Log.Warn("removing manifest of failed build", "key", mkey, "err", derr)
		}
	}
	if err := checkCommit(ctx, st, root, resolved, o); err != nil {
		dropManifest()
		return res, err
	}
	ptr := store.Pointer{Root: root, Manifest: id, Created: o.Now().UTC()}
	if err := catalog.Put(ctx, st, o.Tenant, o.Name, ptr); err != nil {
		dropManifest()
		return res, err
	}
	res.Duration = time.Since(start)
	return res, nil
}

// unchanged reports whether o.Name already points to an image built from the
// same source manifest digest with the same chunking, and if so fills res
// from it. Any problem reading the existing image means "rebuild".
func unchanged(ctx context.Context, st store.Store, res *Result, o Options) (bool, error) {
	p, err := catalog.Lookup(ctx, st, o.Tenant, o.Name)
	if err != nil || p.Deleted {
		return false, nil
	}
	m, err := catalog.ReadPublic(ctx, st, p)
	if err != nil {
		o.Log.Warn("reading the image's current manifest; rebuilding", "image", o.Tenant+"/"+o.Name, "err", err)
		return false, nil
	}
	if m.SourceDigest != res.SourceDigest || m.ChunkSize != o.ChunkSize || m.Compression != o.Compression {
		return false, nil
	}
	res.Unchanged = true
	res.Root, res.ManifestID = p.Root, p.Manifest
	res.ImageSize, res.Chunks, res.Holes = m.ImageSize, len(m.Names), m.Holes()
	o.Log.Info("image already built from this source digest; nothing to do (--force rebuilds)",
		"image", o.Tenant+"/"+o.Name, "source", res.SourceDigest, "manifest", p.Manifest)
	return true, nil
}

// checkCommit is the check before the pointer write (Options.Timeout): the
// build is younger than its timeout, counted from when it resolved root, and
// root is still active. Together with the collector's settle time this keeps
// a pointer from ever naming an expired or deleted root.
func checkCommit(ctx context.Context, st store.Store, root store.RootID, resolved time.Time, o Options) error {
	if age := o.Now().Sub(resolved); age > o.Timeout {
		return fmt.Errorf("image %s/%s: %w: %v since it chose root %s, past --build-timeout %v (the garbage collector may expire that root); no pointer written, build again",
			o.Tenant, o.Name, ErrDeadline, age.Round(time.Second), root, o.Timeout)
	}
	ri, err := store.ReadRoot(ctx, st, root)
	if err != nil {
		return fmt.Errorf("image %s/%s: checking root before writing the pointer: %w", o.Tenant, o.Name, err)
	}
	if ri.State != store.RootActive {
		return fmt.Errorf("image %s/%s: %w: root %s is %s since %s; no pointer written, build again (it will use the active root)",
			o.Tenant, o.Name, ErrRootNotActive, root, ri.State, ri.Since.Format(time.RFC3339))
	}
	return nil
}

// staging is one attempt at the image: the staged file and, when the
// store has an active root, the sealer that seals its chunks as they are
// written.
type staging struct {
	img      *os.File
	simg     *stagedImage
	cs       *chunkSealer
	specDone chan struct{}
	once     sync.Once
}

// discard stops the sealer (aborting every chunk it staged and did not
// commit) and removes the staged file. Idempotent.
func (s *staging) discard() {
	s.once.Do(func() {
		s.simg.abort()
		<-s.specDone
		if s.cs != nil {
			s.cs.release()
		}
		s.img.Close()
		os.Remove(s.img.Name())
	})
}

// flattenAttempt stages a fresh image and flattens im into it, in one read
// (once) or two, sealing chunks during the flatten when root is known. On
// error the staging, when not nil, must still be discarded.
func flattenAttempt(ctx context.Context, im *oci.Image, st store.Store, sealer *chunk.Sealer, root *store.RootID, once bool, o Options) (*staging, oci.FlattenStats, error) {
	img, err := os.CreateTemp(o.TempDir, "lode-build-*.ext4")
	if err != nil {
		return nil, oci.FlattenStats{}, fmt.Errorf("staging image: %w", err)
	}
	s := &staging{img: img, simg: newStagedImage(img, o.ChunkSize), specDone: make(chan struct{})}
	fctx := ctx
	if root != nil {
		if s.cs, err = newChunkSealer(ctx, st, sealer, chunkSalt(*root, o), *root, s.simg, o); err != nil {
			close(s.specDone)
			return s, oci.FlattenStats{}, err
		}
		go func() { defer close(s.specDone); s.cs.speculate() }()
		fctx = s.cs.gctx // a failed chunk upload stops the flatten
	} else {
		close(s.specDone)
	}
	o.Progress.Phase("flatten", -1)
	fs, err := flattenToExt4(fctx, im, s.simg, once, o)
	if err != nil {
		s.simg.abort()
	} else {
		s.simg.close()
	}
	<-s.specDone
	if err != nil && s.cs != nil && s.cs.err() != nil {
		err = s.cs.err() // the worker's error, not the cancel it caused
	}
	return s, fs, err
}

// flattenToExt4 runs the flattener (oci.FlattenOnceInto when once, else
// oci.FlattenInto) as the producer of the ext4 writer's entries.
func flattenToExt4(ctx context.Context, im *oci.Image, img ext4img.Output, once bool, o Options) (oci.FlattenStats, error) {
	flatten := oci.FlattenInto
	if once {
		flatten = oci.FlattenOnceInto
	}
	var fs oci.FlattenStats
	var ferr error
	_, berr := ext4img.BuildEntries(ctx, img, o.Ext4, func(ew ext4img.EntryWriter) error {
		fs, ferr = flatten(ctx, im, &progressEntries{EntryWriter: ew, p: o.Progress}, o.Flatten)
		return ferr
	})
	// The flattener's error names the entry that failed; prefer it.
	if ferr != nil {
		return fs, ferr
	}
	if berr != nil {
		return fs, fmt.Errorf("building ext4 image of %s: %w", im, berr)
	}
	return fs, nil
}

// progressEntries reports the content bytes written as flatten progress.
type progressEntries struct {
	ext4img.EntryWriter
	p Progress
}

func (p *progressEntries) Write(b []byte) (int, error) {
	n, err := p.EntryWriter.Write(b)
	p.p.Add(int64(n))
	return n, err
}

// putIfMissing uploads ct under key unless the store has it. It reports
// whether this call stored it.
func putIfMissing(ctx context.Context, st store.Store, key string, ct []byte) (bool, error) {
	if _, err := st.Stat(ctx, key); err == nil {
		return false, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	err := st.PutIfAbsent(ctx, key, ct)
	if errors.Is(err, store.ErrExists) {
		return false, nil
	}
	return err == nil, err
}

func copyFile(src *os.File, dst string) error {
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("keeping image: %w", err)
	}
	if _, err := io.Copy(out, io.NewSectionReader(src, 0, 1<<62)); err != nil {
		out.Close()
		return fmt.Errorf("keeping image at %s: %w", dst, err)
	}
	return out.Close()
}

type nopProgress struct{}

func (nopProgress) Phase(string, int64) {}
func (nopProgress) Add(int64)           {}

// startData are files a start reads whole besides its programs, when the
// image has them: the user database internal/run resolves the user through,
// and what glibc reads as a dynamic program starts (the time zone, the
// C.UTF-8 locale's character classes, the iconv module cache). Measured on
// the python3 start (docs/coldstart.md): each was a fetch in series.
var startData = []string{
	"/etc/passwd", "/etc/group", "/etc/localtime",
	"/usr/lib/locale/C.utf8/LC_CTYPE", "/usr/lib/locale/C.UTF-8/LC_CTYPE",
	"/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache", "/usr/lib/aarch64-linux-gnu/gconv/gconv-modules.cache",
}

// startSet computes the build-time start set of the staged image: its
// metadata and the ELF closure of the entrypoint (or cmd, or /bin/sh) and
// o.StartFiles, as chunk indexes for manifest.Hints. A failure costs only
// the hints: it is logged, never fatal.
func startSet(img io.ReaderAt, size int64, c manifest.Config, o Options) []uint32 {
	var files []string
	switch {
	case len(c.Entrypoint) > 0:
		files = append(files, c.Entrypoint[0])
	case len(c.Cmd) > 0:
		files = append(files, c.Cmd[0])
	case len(o.StartFiles) == 0:
		files = append(files, "/bin/sh")
	}
	files = append(files, o.StartFiles...)
	rs, notes, err := ext4img.StartSet(img, ext4img.StartSetOptions{Files: files, Env: c.Env,
		Data: startData})
	if err != nil {
		o.Log.Warn("no build-time start set", "image", o.Tenant+"/"+o.Name, "err", err)
		return nil
	}
	for _, n := range notes {
		o.Log.Info("start set", "image", o.Tenant+"/"+o.Name, "note", n)
	}
	return ext4img.Chunks(rs, int64(o.ChunkSize), size)
}
