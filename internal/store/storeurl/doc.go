// Package storeurl opens a store.Store from a URL: file://DIR (or a bare
// path), s3://BUCKET/PREFIX?…, mem://NAME.
//
// It owns only the dispatch on the scheme; each backend owns its
// configuration (store/s3: ParseURL and the AWS_* environment). cmd/lode
// and tests use it so every command accepts the same store URLs.
package storeurl
