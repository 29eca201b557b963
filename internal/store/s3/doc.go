// Package s3 is the S3 backend of store.Store: key k of a store at
// s3://BUCKET/PREFIX is the object PREFIX+k in BUCKET, on AWS S3 or any
// S3-compatible server (MinIO, versitygw, Ceph RGW).
//
// It owns the translation of the Store contract into S3 requests and of S3
// errors into store.ErrNotFound, store.ErrExists and this package's
// ErrAccessDenied, ErrNoSuchBucket and ErrUnreachable; its configuration
// (Config, from an s3:// URL and the standard AWS_* environment variables,
// see docs/s3.md); and its request metrics. It does not own the object
// layout (store/keys.go) or caching.
//
// Every object is written with one PutObject of known size (no multipart
// upload: chunks are 512 KiB). PutIfAbsent sends If-None-Match: *, which
// AWS S3, MinIO and versitygw evaluate atomically; a server that answers
// 501 NotImplemented is remembered and served by a HEAD then a PUT instead.
// That fallback races (two writers may both find the key absent), which is
// harmless for chunks: their keys name their content, so both write the same
// bytes.
//
// Requests are retried with capped exponential backoff and jitter on
// throttling (503 SlowDown, 429), 5xx answers and network errors, up to
// Config.MaxRetries attempts; authentication failures, a missing bucket and
// missing keys are never retried.
//
// It implements DESIGN.md, "Object store layout" (the production origin).
// It wraps github.com/minio/minio-go/v7, which brings SigV4 signing,
// request retries and XML error decoding, without the size of the AWS SDK.
package s3
