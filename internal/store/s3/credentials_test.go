package s3_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/store/s3"
)

// writeCreds writes an AWS shared credentials file with one profile.
func writeCreds(t *testing.T, path, profile, access, secret string) {
	t.Helper()
	body := fmt.Sprintf("[other]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\n", profile, access, secret)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCredentialsFileRotation: a store whose keys come from the shared
// credentials file uses the file's new keys on the next request after it
// changes — a wrong key fails with ErrAccessDenied, the corrected file
// succeeds again — without reopening the store.
func TestCredentialsFileRotation(t *testing.T) {
	srv := lodetest.S3Server(t)
	tests := []struct {
		name    string
		rewrite func(t *testing.T, path, access, secret string, step int)
	}{
		{"replaced by rename", func(t *testing.T, path, access, secret string, step int) {
			tmp := path + ".new"
			writeCreds(t, tmp, "lode", access, secret)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"rewritten in place", func(t *testing.T, path, access, secret string, step int) {
			writeCreds(t, path, "lode", access, secret)
			// A rewrite within the file system's timestamp granularity may
			// keep mtime and size: move mtime on as a clock would.
			mt := time.Now().Add(time.Duration(step) * time.Second)
			if err := os.Chtimes(path, mt, mt); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "credentials")
			writeCreds(t, path, "lode", srv.AccessKey, srv.SecretKey)
			c := config(srv)
			c.AccessKey, c.SecretKey = "", ""
			c.CredentialsFile, c.Profile = path, "lode"
			c.MaxRetries = 1
			c.Prefix = fmt.Sprintf("rot%d/", i)
			st := open(t, c)
			ctx := t.Context()
			if err := st.Put(ctx, "k", []byte("v1")); err != nil {
				t.Fatalf("Put with the file's keys: %v", err)
			}
			tt.rewrite(t, path, srv.AccessKey, "wrong-"+srv.SecretKey, 1)
			if _, err := st.Get(ctx, "k", nil); !errors.Is(err, s3.ErrAccessDenied) {
				t.Fatalf("Get after the file got a wrong secret = %v, want ErrAccessDenied", err)
			}
			tt.rewrite(t, path, srv.AccessKey, srv.SecretKey, 2)
			got, err := st.Get(ctx, "k", nil)
			if err != nil {
				t.Fatalf("Get after the file was corrected: %v", err)
			}
			if !bytes.Equal(got, []byte("v1")) {
				t.Errorf("Get = %q, want v1", got)
			}
		})
	}
}

func TestParseURLCredentialsFromEnv(t *testing.T) {
	env := map[string]string{s3.EnvCredentialsFile: "/etc/lode/aws-credentials", s3.EnvProfile: "lode"}
	c, err := s3.ParseURL("s3://b/p?iam=true", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	got := [3]any{c.CredentialsFile, c.Profile, c.IAM}
	if diff := cmp.Diff([3]any{"/etc/lode/aws-credentials", "lode", true}, got); diff != "" {
		t.Errorf("ParseURL (-want +got):\n%s", diff)
	}
}
