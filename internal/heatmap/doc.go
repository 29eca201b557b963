// Package heatmap draws an image's chunks as a grid of colored cells in SVG:
// one cell per chunk, in chunk order, left to right and top to bottom, each
// colored by a class the caller chose (hole, shared, unique; or which tier
// served it), with a legend that counts each class.
//
// It owns only the drawing. It does not know what a chunk, a manifest or a
// tier is: cmd/lode (inspect --heatmap, run --heatmap) maps those to classes.
// It implements the picture of issue #8 ("Beyond the paper"); see
// docs/beyond.md. It imports no other lode package.
//
// Hand-written on the standard library: an SVG of rectangles and text is a
// few lines of encoding/xml escaping, and a drawing library would bring a
// dependency for nothing. The output is deterministic (same Map, same bytes),
// so it has a golden test; runs of equal cells in a row are merged into one
// rectangle, so a 10 GiB image (20,480 chunks) stays a small file.
package heatmap
