// Package storetest is the conformance suite every store.Store backend
// passes: Run checks the contract written on store.Store (atomic writes,
// ranges, PutIfAbsent, ordered listing across pages, ListDirs, Delete, key
// validation, cancellation) and Bench measures 512 KiB puts and gets.
//
// It does not own backend-specific fault tests (a failing disk for
// store/file, a killed server for store/s3); those live next to each
// backend. It is imported only from _test.go files.
package storetest
