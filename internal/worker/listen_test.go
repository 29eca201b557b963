package worker

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestListenSocketMode: block export sockets are 0600 unless asked
// otherwise (issue #19: they were created with the process umask).
func TestListenSocketMode(t *testing.T) {
	tests := []struct {
		name string
		mode os.FileMode
		use  func(string) (net.Listener, error)
	}{
		{"Listen default", 0o600, func(a string) (net.Listener, error) { return Listen(a) }},
		{"ListenMode 0660", 0o660, func(a string) (net.Listener, error) { return ListenMode(a, 0o660) }},
		{"ListenMode 0600", 0o600, func(a string) (net.Listener, error) { return ListenMode(a, 0o600) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "x.sock")
			l, err := tt.use("unix:" + p)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != tt.mode {
				t.Errorf("socket mode = %04o, want %04o", got, tt.mode)
			}
		})
	}
}
