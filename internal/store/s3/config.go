package s3

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config says where a store lives and how to reach it.
type Config struct {
	Bucket string
	// Prefix is prepended to every key; "" or ending in "/" (added if
	// missing).
	Prefix string
	// Endpoint is the server's URL, "http://127.0.0.1:7070" or
	// "https://s3.eu-west-1.amazonaws.com". Empty means AWS S3
	// (https://s3.amazonaws.com).
	Endpoint string
	// Region signs requests. Empty means us-east-1, which S3-compatible
	// servers accept by default.
	Region string
	// PathStyle addresses the bucket in the path (http://host/bucket/key)
	// rather than the host name (http://bucket.host/key). Servers other
	// than AWS usually need it; minio-go picks path style automatically for
	// hosts that are not AWS, Google or Aliyun.
	PathStyle bool
	// Insecure skips TLS certificate verification (test servers with
	// self-signed certificates only).
	Insecure bool
	// AccessKey, SecretKey and SessionToken are the credentials; all empty
	// sends anonymous requests.
	AccessKey, SecretKey, SessionToken string
	// CredentialsFile is the AWS shared credentials file read when the keys
	// above are empty ("" means $HOME/.aws/credentials), and Profile its
	// profile ("" means $AWS_PROFILE, else "default"). The file is re-read
	// whenever it changes (credentials.go).
	CredentialsFile, Profile string
	// IAM adds the instance or container role (EC2 metadata, ECS/EKS
	// credential endpoints) after the file; its keys are refreshed before
	// they expire.
	IAM bool
	// MaxRetries is how many times one request is attempted in all
	// (0 means DefaultMaxRetries, 1 means no retry). Backoff between
	// attempts doubles from 200 ms and is capped at 1 s, with jitter.
	MaxRetries int
	// DialTimeout bounds connecting to the endpoint (0 means 5 s).
	DialTimeout time.Duration
	// Log receives warnings (nil: discarded).
	Log *slog.Logger
	// CheckLater runs New's bucket and credentials check beside the first
	// requests instead of before New returns: a start that reads an image
	// then does not pay the check's round trip before its first GET. A
	// request that fails while the check failed returns the check's error
	// (ErrNoSuchBucket, ErrAccessDenied, ErrUnreachable).
	CheckLater bool
	// Metrics receives per-request counts and latencies (nil: none).
	Metrics *Metrics
}

// DefaultMaxRetries bounds a request against an unreachable endpoint to
// about 2 s of backoff, while riding out a few seconds of throttling.
const DefaultMaxRetries = 5

// Environment variables read by ParseURL, as the AWS CLI and SDKs name them.
const (
	EnvEndpointS3   = "AWS_ENDPOINT_URL_S3"
	EnvEndpoint     = "AWS_ENDPOINT_URL"
	EnvRegion       = "AWS_REGION"
	EnvDefaultRgn   = "AWS_DEFAULT_REGION"
	EnvAccessKey    = "AWS_ACCESS_KEY_ID"
	EnvSecretKey    = "AWS_SECRET_ACCESS_KEY"
	EnvSessionToken = "AWS_SESSION_TOKEN"
)

// ParseURL reads s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path_style=BOOL
// &insecure=BOOL&max_retries=N] and fills the rest from the environment
// through getenv (os.Getenv, or a map in tests): the endpoint from
// AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, the region from AWS_REGION or
// AWS_DEFAULT_REGION, the credentials from AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN. The URL's query wins over
// the environment. Credentials are never read from the URL, so URLs can be
// logged.
func ParseURL(raw string, getenv func(string) string) (Config, error) {
	var c Config
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the url.Error repeats the URL, which may hold a secret
		}
		return c, fmt.Errorf("parsing store URL: %w", err)
	}
	if u.User != nil {
		return c, fmt.Errorf("parsing store URL %q: credentials in the URL are not accepted; use %s and %s", redactAll(u), EnvAccessKey, EnvSecretKey)
	}
	if u.Scheme != "s3" {
		return c, fmt.Errorf("parsing store URL: scheme is %q, want s3", u.Scheme)
	}
	// From here on the URL holds no userinfo and may appear in errors.
	c.Bucket = u.Host
	if c.Bucket == "" {
		return c, errors.New("parsing store URL: no bucket (want s3://BUCKET/PREFIX)")
	}
	c.Prefix = strings.TrimPrefix(u.Path, "/")
	c.Endpoint = first(getenv(EnvEndpointS3), getenv(EnvEndpoint))
	c.Region = first(getenv(EnvRegion), getenv(EnvDefaultRgn))
	c.AccessKey = getenv(EnvAccessKey)
	c.SecretKey = getenv(EnvSecretKey)
	c.SessionToken = getenv(EnvSessionToken)
	c.CredentialsFile = getenv(EnvCredentialsFile)
	c.Profile = getenv(EnvProfile)
	var errs []error
	q := u.Query()
	for _, k := range slices.Sorted(maps.Keys(q)) { // errors in a stable order
		v := q[k][len(q[k])-1]
		switch k {
		case "endpoint":
			c.Endpoint = v
		case "region":
			c.Region = v
		case "path_style":
			c.PathStyle, err = strconv.ParseBool(v)
		case "insecure":
			c.Insecure, err = strconv.ParseBool(v)
		case "iam":
			c.IAM, err = strconv.ParseBool(v)
		case "max_retries":
			c.MaxRetries, err = strconv.Atoi(v)
			if err == nil && c.MaxRetries < 1 {
				err = errors.New("must be at least 1")
			}
		default:
			err = errors.New("unknown parameter (known: endpoint, region, path_style, insecure, iam, max_retries)")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", k, v, err))
			err = nil
		}
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("parsing store URL %q: %w", redact(u), errors.Join(errs...))
	}
	return c, nil
}

func first(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// redact is u for an error: without userinfo and fragment (the store never
// uses a fragment, so one holds nothing but what a user mistyped there).
func redact(u *url.URL) string {
	v := *u
	v.User = nil
	v.Fragment, v.RawFragment = "", ""
	return v.String()
}

// redactAll is u without anything the parser may have mistaken for
// something else when userinfo is present: scheme, host and path only. A URL
// that carries credentials is refused, and its query or fragment may be where
// a mistyped secret ended up.
func redactAll(u *url.URL) string {
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// endpoint splits c.Endpoint into minio-go's host[:port] and TLS flag.
func (c Config) endpoint() (host string, secure bool, err error) {
	ep := c.Endpoint
	if ep == "" {
		return "s3.amazonaws.com", true, nil
	}
	if !strings.Contains(ep, "://") {
		ep = "https://" + ep
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", false, fmt.Errorf("endpoint %q: %w", c.Endpoint, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", false, fmt.Errorf("endpoint %q: scheme must be http or https", c.Endpoint)
	case u.Host == "":
		return "", false, fmt.Errorf("endpoint %q: no host", c.Endpoint)
	case u.Path != "" && u.Path != "/":
		return "", false, fmt.Errorf("endpoint %q: a path is not supported", c.Endpoint)
	}
	return u.Host, u.Scheme == "https", nil
}
