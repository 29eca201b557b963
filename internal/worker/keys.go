package worker

import "fmt"

// workerKeyring is what checkKeyring needs of a keyring:
// manifest.FileKeyring's CheckWorker.
type workerKeyring interface {
	CheckWorker() error
}

// checkKeyring refuses a keyring that holds the store secret unless allow
// (Options.AllowStoreSecret, --allow-store-secret): a worker never needs it,
// and a worker holding it can confirm that a known chunk is stored (issue
// #19; DESIGN.md, "Who holds which key"). Keyrings that cannot say pass.
func checkKeyring(kr any, allow bool) error {
	wk, ok := kr.(workerKeyring)
	if !ok || allow {
		return nil
	}
	if err := wk.CheckWorker(); err != nil {
		return fmt.Errorf("refusing to start a worker: %w (or pass --allow-store-secret to run with it anyway)", err)
	}
	return nil
}
