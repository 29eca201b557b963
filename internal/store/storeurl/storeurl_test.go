package storeurl_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/store/storeurl"
)

func TestMain(m *testing.M) {
	code := m.Run()
	lodetest.StopS3Servers()
	os.Exit(code)
}

func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	for _, tc := range []struct {
		url     string
		wantDir string
	}{
		{"file://" + dir + "/a", dir + "/a"},
		{"file://localhost" + dir + "/b", dir + "/b"},
		{dir + "/c", dir + "/c"},
		{"rel/d", dir + "/rel/d"},
		{"./e", dir + "/e"},
	} {
		s, err := storeurl.Open(t.Context(), tc.url, nil)
		if err != nil {
			t.Fatalf("Open(%q): %v", tc.url, err)
		}
		if want := "file://" + tc.wantDir; s.String() != want {
			t.Errorf("Open(%q).String() = %q, want %q", tc.url, s.String(), want)
		}
		if err := s.Put(t.Context(), "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(tc.wantDir, "k")); err != nil || string(b) != "v" {
			t.Errorf("Open(%q): object k not at %s/k: %q, %v", tc.url, tc.wantDir, b, err)
		}
	}
}

func TestOpenMemSharesByName(t *testing.T) {
	a, err := storeurl.Open(t.Context(), "mem://demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := storeurl.Open(t.Context(), "mem://demo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Put(t.Context(), "k", []byte("shared")); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Get(t.Context(), "k", nil); err != nil || string(got) != "shared" {
		t.Errorf("second mem://demo Get(k) = %q, %v, want \"shared\"", got, err)
	}
}

func TestOpenS3FromEnv(t *testing.T) {
	srv := lodetest.S3Server(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_ENDPOINT_URL_S3", srv.Endpoint)
	t.Setenv("AWS_REGION", srv.Region)
	for _, url := range []string{srv.URL("p/"), "s3://" + srv.Bucket + "/p"} {
		s, err := storeurl.Open(t.Context(), url, nil)
		if err != nil {
			t.Fatalf("Open(%q): %v", url, err)
		}
		if want := "s3://" + srv.Bucket + "/p/"; s.String() != want {
			t.Errorf("Open(%q).String() = %q, want %q", url, s.String(), want)
		}
		if err := s.Put(t.Context(), "k", []byte(url)); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Get(t.Context(), "k", nil); err != nil || string(got) != url {
			t.Errorf("Open(%q).Get(k) = %q, %v", url, got, err)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want string
	}{
		{"", "empty URL"},
		{"gs://bucket/x", `unknown scheme "gs"`},
		{"s3:bucket", "not a URL"},
		{"file://otherhost/dir", "not host"},
		{"file:///dir?x=1", "no parameters"},
		{"mem://", "want mem://NAME"},
		{"mem://a/b", "want mem://NAME"},
		{"s3://", "no bucket"},
		{"s3://b?nope=1", "unknown parameter"},
	} {
		_, err := storeurl.Open(t.Context(), tc.url, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q) = %v, want error containing %q", tc.url, err, tc.want)
		}
	}
}
