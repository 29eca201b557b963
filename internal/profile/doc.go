// Package profile learns startup profiles: which chunks an image's starts
// read, and in what order, so that later cold starts on any worker fetch
// them all at once instead of one page fault after another (issue #21).
//
// # Recording
//
// A worker that opens an image records the chunks its start reads
// (agent.Image.ReadOrder: first touches by readers, not read-ahead or
// prefetch), until the reads go quiet or the start window ends
// (agent.StartGate), or at the end of a one-shot lode run. It publishes that
// read set as one start object; Publish then merges every start object of
// the manifest into the merged object that later opens read (Load). A
// worker learns only while the merged profile has fewer than MaxStarts
// starts, never with --learn-profile=false, and never for a manifest built
// with lode build --learn-profile=false (the no-learn marker, NoLearnKey).
//
// # Objects
//
// A profile belongs to one manifest, never to an image name: a rebuild
// writes a new manifest id, so its starts learn afresh and a stale profile
// is never used. The objects live next to the manifest, in its root
// (store.ProfilesPrefix):
//
//	roots/<root>/profiles/<manifest-id>/merged           what Load reads
//	roots/<root>/profiles/<manifest-id>/starts/<t>-<r>    one start each
//	roots/<root>/profiles/<manifest-id>/no-learn          built with --learn-profile=false
//
// where <t> is the start's time in Unix nanoseconds (20 digits, so lexical
// order is time order) and <r> 8 random hex digits. Each object is sealed
// like the manifest's secret part (docs/formats.md, "Startup profile"):
// AES-256-GCM under a key derived from the manifest's data key
// (manifest.Manifest.SubKey("profile v1")), with the magic, the format
// version and the manifest id as additional data. Only holders of the
// image's tenant key can derive it; a worker publishes with nothing more
// than what it needs to start the image (no store secret, no write right to
// image pointers). An object of another tenant or manifest, a tampered one,
// or one naming chunks out of the image's range does not open: Load reports
// it (ErrCorrupt, ErrStale), the worker logs one line, counts it in
// lode_profile_loads_total{result="ignored"} and starts without it.
//
// # Concurrent publishers
//
// Start objects are written once under unique names (PutIfAbsent) and are
// the truth; the merged object is a cache of their merge. Every publisher
// lists the start objects after writing its own and rewrites the merged
// object from all it sees (at most MaxStartObjects, oldest first), so two
// publishers that race can at worst leave a merged object that misses the
// other's start, and the next publisher puts it back: no start is lost.
// (store.Swapper would make the merged write a compare-and-swap, but S3 has
// none, and rebuilding from the start objects needs none.)
//
// # Merging starts
//
// Combine merges start objects: each chunk's count is the number of starts
// that read it and its position the mean, over those starts, of the index
// at which it was first read. The merged order is by count, most starts
// first, then by position, then by chunk index: the chunks every start
// reads come first, in the order starts read them, and chunks only some
// starts read follow. The merge keeps at most MaxEntries chunks (the first
// in that order). At open, Merge puts the learned profile first and then the
// build's start set (manifest.Hints) not already in it: that is what the
// worker prefetches.
//
// # Garbage collection
//
// A profile lives as long as its manifest: internal/gc copies an image's
// profile objects forward with its manifest (the manifest id does not
// change, so they stay valid) and deletes them with the root.
//
// Written by hand: the format is a few fixed fields sealed with the
// standard library's AES-GCM and HKDF, like the manifest's.
package profile
