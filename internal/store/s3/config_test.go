package s3

import (
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestParseURL(t *testing.T) {
	env := map[string]string{
		EnvEndpoint:     "http://env-endpoint:9000",
		EnvRegion:       "eu-west-1",
		EnvDefaultRgn:   "us-west-2",
		EnvAccessKey:    "AK",
		EnvSecretKey:    "SK",
		EnvSessionToken: "TOK",
	}
	for _, tc := range []struct {
		name    string
		url     string
		env     map[string]string
		want    Config
		wantErr string
	}{
		{name: "bucket only", url: "s3://b", env: nil, want: Config{Bucket: "b"}},
		{name: "prefix", url: "s3://b/some/prefix/", env: nil, want: Config{Bucket: "b", Prefix: "some/prefix/"}},
		{name: "env", url: "s3://b/p", env: env, want: Config{
			Bucket: "b", Prefix: "p", Endpoint: "http://env-endpoint:9000", Region: "eu-west-1",
			AccessKey: "AK", SecretKey: "SK", SessionToken: "TOK"}},
		{name: "S3-specific endpoint and default region", url: "s3://b",
			env:  map[string]string{EnvEndpointS3: "http://s3-only", EnvEndpoint: "http://generic", EnvDefaultRgn: "us-west-2"},
			want: Config{Bucket: "b", Endpoint: "http://s3-only", Region: "us-west-2"}},
		{name: "query beats env", url: "s3://b/p?endpoint=http://127.0.0.1:7070&region=us-east-1&path_style=true&insecure=1&max_retries=2",
			env: env, want: Config{Bucket: "b", Prefix: "p", Endpoint: "http://127.0.0.1:7070", Region: "us-east-1",
				PathStyle: true, Insecure: true, MaxRetries: 2, AccessKey: "AK", SecretKey: "SK", SessionToken: "TOK"}},
		{name: "wrong scheme", url: "file:///x", wantErr: "want s3"},
		{name: "no bucket", url: "s3:///p", wantErr: "no bucket"},
		{name: "credentials in URL", url: "s3://ak:sk@b/p", wantErr: "credentials in the URL"},
		{name: "unknown parameter", url: "s3://b?pathstyle=true", wantErr: "unknown parameter"},
		{name: "bad bool", url: "s3://b?path_style=maybe", wantErr: "path_style"},
		{name: "bad retries", url: "s3://b?max_retries=0", wantErr: "at least 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseURL(tc.url, func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("ParseURL(%q) = %v, want error containing %q", tc.url, err, tc.wantErr)
				}
				if strings.Contains(tc.url, "sk@") && err != nil && strings.Contains(err.Error(), "sk@") {
					t.Errorf("ParseURL error %q repeats the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseURL(%q): %v", tc.url, err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreUnexported(Config{}), cmpopts.IgnoreFields(Config{}, "Log", "Metrics")); diff != "" {
				t.Errorf("ParseURL(%q) mismatch (-want +got):\n%s", tc.url, diff)
			}
		})
	}
}

func TestEndpoint(t *testing.T) {
	for _, tc := range []struct {
		in      string
		host    string
		secure  bool
		wantErr bool
	}{
		{"", "s3.amazonaws.com", true, false},
		{"http://127.0.0.1:7070", "127.0.0.1:7070", false, false},
		{"https://minio.example:9000/", "minio.example:9000", true, false},
		{"minio.example", "minio.example", true, false},
		{"ftp://x", "", false, true},
		{"http://x/path", "", false, true},
	} {
		host, secure, err := Config{Endpoint: tc.in}.endpoint()
		if (err != nil) != tc.wantErr || host != tc.host || secure != tc.secure {
			t.Errorf("endpoint(%q) = %q, %v, %v; want %q, %v, error %v", tc.in, host, secure, err, tc.host, tc.secure, tc.wantErr)
		}
	}
}

// FuzzParseURL: store URLs come from flags and config files.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"s3://b/p?endpoint=http://127.0.0.1:7070&region=r&path_style=true", "s3://", "s3://ak:secret@c/p", "s3://b?max_retries=-1", "//@#:secret@", "s3://ak:secret@b/p?region=r#frag"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := ParseURL(raw, func(string) string { return "" })
		if err == nil && c.Bucket == "" {
			t.Errorf("ParseURL(%q) accepted a URL without a bucket", raw)
		}
		// A password in the URL's userinfo never appears in the error, unless
		// the same text is also the URL's host or path (which errors name).
		if err != nil {
			if u, perr := url.Parse(raw); perr == nil && u.User != nil {
				if pw, _ := u.User.Password(); len(pw) >= 4 && !strings.Contains(u.Host+u.Path, pw) && strings.Contains(err.Error(), pw) {
					t.Errorf("ParseURL(%q) error %q repeats the password", raw, err)
				}
			}
		}
		// Nor does the fragment, which the store never uses: the error is the
		// same as the URL's without it (when the fragment parses).
		if _, perr := url.Parse(raw); perr == nil && err != nil && strings.Contains(raw, "#") {
			i := strings.IndexByte(raw, '#')
			if _, err2 := ParseURL(raw[:i], func(string) string { return "" }); err2 != nil && err2.Error() != err.Error() {
				t.Errorf("ParseURL(%q) error %q differs from the error without the fragment, %q", raw, err, err2)
			}
		}
	})
}
