package oci

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry errors (docker:// sources). They wrap the registry's own answer.
var (
	// ErrNotFound: the registry has no such repository, tag or digest.
	ErrNotFound = errors.New("image not found in registry")
	// ErrUnauthorized: the registry refused the request (no credentials, or
	// wrong ones).
	ErrUnauthorized = errors.New("registry refused access")
	// ErrStalled: the registry sent nothing for RemoteOptions.Timeout.
	ErrStalled = errors.New("registry stalled")
	// ErrNoPlatform: the reference names an image index without an image for
	// the requested platform.
	ErrNoPlatform = errors.New("no image for the platform")
	// ErrPlainHTTP: the registry speaks plain HTTP and its host was not named
	// as insecure.
	ErrPlainHTTP = errors.New("registry is plain HTTP")
)

// RemoteOptions configure reading docker:// sources. The zero value reads
// with the defaults below.
type RemoteOptions struct {
	// Platform picks the image from an index: "os/arch[/variant]"; "" means
	// linux and this process's architecture.
	Platform string
	// CAFile names a PEM file of extra root certificates trusted beside the
	// system's (a private registry's CA).
	CAFile string
	// Insecure lists registry hosts ("host:port") that may be reached over
	// plain HTTP. Any other host must speak TLS.
	Insecure []string
	// Timeout is how long the registry may send nothing (no response header,
	// no body byte) before the read fails with ErrStalled. Default 60 s: a
	// healthy registry answers in well under a second, and a layer download
	// never pauses this long.
	Timeout time.Duration
	// Jobs bounds concurrent layer downloads (default 3: enough to keep a
	// link busy while the flattener consumes layers in order, few enough to
	// bound the spool disk to a few layers).
	Jobs int
	// AuthFile is a containers-auth.json (skopeo login --authfile) tried
	// before the default credential chain (see Keychain).
	AuthFile string
	// TempDir is where downloaded layers are spooled while the flattener
	// catches up; "" = os.TempDir().
	TempDir string
	// Progress observes layer downloads; may be nil.
	Progress PullProgress
	// Keychain replaces the credential chain (tests); nil = Keychain(AuthFile).
	Keychain authn.Keychain
}

// PullProgress observes layer downloads. Calls come from several
// goroutines; each layer's calls are ordered (Start, Add…, Done).
type PullProgress interface {
	LayerStart(index, count int, digest string, size int64)
	LayerAdd(index int, n int64)
	LayerDone(index int, err error)
}

const (
	defaultRemoteTimeout = 60 * time.Second
	defaultRemoteJobs    = 3
	// dockerTransport is the source prefix skopeo uses for registries.
	dockerTransport = "docker://"
)

// RemoteRef is a parsed docker:// source.
type RemoteRef struct {
	Ref      name.Reference
	Platform v1.Platform
}

// ParseRemote parses a docker:// reference (the spelling skopeo uses:
// docker://HOST[:PORT]/REPO[:TAG|@DIGEST]; a missing host means Docker Hub,
// a missing tag "latest") and a platform ("os/arch[/variant]", "" = the
// default). Hosts in insecure may use plain HTTP.
func ParseRemote(source, platform string, insecure []string) (RemoteRef, error) {
	s, ok := strings.CutPrefix(source, dockerTransport)
	if !ok {
		return RemoteRef{}, fmt.Errorf("%w: %q is not a docker:// reference", ErrUnsupported, source)
	}
	ref, err := name.ParseReference(s)
	if err != nil {
		return RemoteRef{}, fmt.Errorf("%w: parsing reference %q: %v", ErrUnsupported, s, err)
	}
	if slices.Contains(insecure, ref.Context().RegistryStr()) {
		if ref, err = name.ParseReference(s, name.Insecure); err != nil {
			return RemoteRef{}, fmt.Errorf("%w: parsing reference %q: %v", ErrUnsupported, s, err)
		}
	}
	p := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if platform != "" {
		pp, err := v1.ParsePlatform(platform)
		if err != nil || pp.OS == "" || pp.Architecture == "" {
			return RemoteRef{}, fmt.Errorf("%w: --platform %q: want os/arch[/variant], e.g. linux/amd64", ErrUnsupported, platform)
		}
		p = *pp
	}
	return RemoteRef{Ref: ref, Platform: p}, nil
}

// String is the canonical docker:// form of the reference.
func (r RemoteRef) String() string { return dockerTransport + r.Ref.Name() }

// openRemote resolves the reference to one image manifest (through an index
// by platform), reads and checks its config, and prepares its layers for a
// concurrent, streamed download that starts at the first read.
func openRemote(ctx context.Context, source string, o RemoteOptions) (*Image, error) {
	rr, err := ParseRemote(source, o.Platform, o.Insecure)
	if err != nil {
		return nil, err
	}
	host := rr.Ref.Context().RegistryStr()
	if o.Timeout <= 0 {
		o.Timeout = defaultRemoteTimeout
	}
	if o.Jobs <= 0 {
		o.Jobs = defaultRemoteJobs
	}
	rt, err := newRemoteTransport(o)
	if err != nil {
		return nil, err
	}
	kc := o.Keychain
	if kc == nil {
		kc = Keychain(o.AuthFile)
	}
	auth, from, err := resolveAuth(ctx, kc, rr.Ref.Context())
	if err != nil {
		return nil, fmt.Errorf("reading credentials for %s: %w", host, err)
	}
	puller, err := remote.NewPuller(
		remote.WithAuth(auth),
		remote.WithTransport(rt),
		remote.WithPlatform(rr.Platform),
		remote.WithJobs(o.Jobs),
		// 5 tries over about 7.5 s: rides out a registry restart or a burst
		// of 429s without hiding an outage for long.
		remote.WithRetryBackoff(remote.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 5}),
		remote.WithRetryStatusCodes(http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
			http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("starting registry client for %s: %w", host, err)
	}
	fail := func(what string, err error) error { return remoteError(host, what, from, err) }

	desc, err := puller.Get(ctx, rr.Ref)
	if err != nil {
		return nil, fail("reading manifest of "+rr.Ref.String(), err)
	}
	im := &Image{remote: true, sourceRef: rr.String()}
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, fail("reading image index "+desc.Digest.String(), err)
		}
		mf, err := idx.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("%w: parsing image index %s: %v", ErrCorrupt, desc.Digest, err)
		}
		child, err := pickPlatform(mf, rr.Platform)
		if err != nil {
			return nil, fmt.Errorf("image index %s of %s: %w", desc.Digest, rr, err)
		}
		im.indexDigest = desc.Digest.String()
		if desc, err = puller.Get(ctx, rr.Ref.Context().Digest(child.Digest.String())); err != nil {
			return nil, fail("reading manifest "+child.Digest.String(), err)
		}
		if !desc.MediaType.IsImage() {
			return nil, fmt.Errorf("%w: manifest %s in index %s has media type %s (lode reads OCI and Docker schema 2 images)", ErrUnsupported, desc.Digest, im.indexDigest, desc.MediaType)
		}
	case desc.MediaType.IsImage():
	default:
		return nil, fmt.Errorf("%w: %s has media type %s (lode reads OCI and Docker schema 2 images and indexes)", ErrUnsupported, rr, desc.MediaType)
	}
	im.digest = desc.Digest.String()
	img, err := desc.Image()
	if err != nil {
		return nil, fail("reading image "+im.digest, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("%w: parsing image manifest %s: %v", ErrCorrupt, im.digest, err)
	}
	// ggcr checks the config blob against m.Config.Digest as it reads it.
	if err := im.setConfig(img); err != nil {
		return nil, fmt.Errorf("image config %s: %w", m.Config.Digest, fail("reading image config", err))
	}
	cfg, _ := img.ConfigFile() // cached by setConfig
	if o.Platform != "" && cfg.Architecture != "" {
		have := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
		if !have.Satisfies(rr.Platform) {
			return nil, fmt.Errorf("%s: %w: the image is %s, not %s (--platform)", rr, ErrNoPlatform, have.String(), rr.Platform.String())
		}
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%w: image config %s lists %d diff IDs for %d layers", ErrCorrupt, m.Config.Digest, len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	p := &prefetcher{jobs: o.Jobs, dir: o.TempDir, progress: o.Progress, host: host, classify: fail}
	p.ctx, p.cancel = context.WithCancel(ctx)
	for i, d := range m.Layers {
		if !layerMediaType(d.MediaType) {
			return nil, fmt.Errorf("%w: layer %d (%s) has media type %s (lode reads tar, tar+gzip and tar+zstd layers)", ErrUnsupported, i, d.Digest, d.MediaType)
		}
		l := &layer{index: i, digest: d.Digest.String(), wantRaw: d.Digest.String(), wantDiff: cfg.RootFS.DiffIDs[i].String(), alwaysSpool: true}
		blob := rr.Ref.Context().Digest(d.Digest.String())
		p.layers = append(p.layers, remoteLayer{l: l, size: d.Size, fetch: func(ctx context.Context) (io.ReadCloser, error) {
			rl, err := puller.Layer(ctx, blob)
			if err != nil {
				return nil, err
			}
			return rl.Compressed()
		}})
		l.openCtx = p.opener(i)
		im.layers = append(im.layers, l)
		im.diffIDs = append(im.diffIDs, l.wantDiff)
	}
	im.closer = p
	return im, nil
}

// layerMediaType reports whether lode reads layers of media type mt: tar,
// tar+gzip and tar+zstd, Docker's and OCI's. Foreign (Windows) and
// non-distributable layers, encrypted layers and artifacts are refused.
func layerMediaType(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.DockerUncompressedLayer, types.OCILayer, types.OCIUncompressedLayer, types.OCILayerZStd:
		return true
	}
	return false
}

// pickPlatform returns the index's image for p, or ErrNoPlatform listing what
// it has.
func pickPlatform(mf *v1.IndexManifest, p v1.Platform) (*v1.Descriptor, error) {
	var have []string
	for i := range mf.Manifests {
		d := &mf.Manifests[i]
		if d.Platform == nil {
			continue
		}
		if d.MediaType.IsImage() && d.Platform.Satisfies(p) {
			return d, nil
		}
		if d.Platform.OS != "unknown" { // attestation manifests (BuildKit) are "unknown/unknown"
			have = append(have, d.Platform.String())
		}
	}
	if len(have) == 0 {
		have = []string{"none"}
	}
	return nil, fmt.Errorf("%w: no %s image; it has %s (choose with --platform)", ErrNoPlatform, p.String(), strings.Join(have, ", "))
}

// remoteError classifies an error of the registry client for the user: what
// the registry answered, and what to do about it.
func remoteError(host, what, from string, err error) error {
	var te *transport.Error
	var pe *plainHTTPError
	var se *stallError
	var ce *tls.CertificateVerificationError
	var ue x509.UnknownAuthorityError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("%s: %w", what, err)
	case errors.As(err, &ce) || errors.As(err, &ue):
		return fmt.Errorf("%s: %w (for a private CA, give its certificate with --registry-ca FILE)", what, err)
	case errors.As(err, &pe) || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%s: %w: %s answers plain HTTP; to allow it, name it with --insecure-registry %s", what, ErrPlainHTTP, host, host)
	case errors.As(err, &te):
		code := func(cs ...transport.ErrorCode) bool {
			for _, d := range te.Errors {
				if slices.Contains(cs, d.Code) {
					return true
				}
			}
			return false
		}
		creds := "no credentials"
		if from != "" {
			creds = "credentials from " + from
		}
		switch {
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden || code(transport.UnauthorizedErrorCode, transport.DeniedErrorCode):
			return fmt.Errorf("%s: %w: %s refused %s: %v; log in with `skopeo login %s` or `docker login %s` (lode reads their credentials), or give --authfile FILE", what, ErrUnauthorized, host, creds, te, host, host)
		case te.StatusCode == http.StatusNotFound || code(transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode):
			return fmt.Errorf("%s: %w: %s answered: %v; check the repository and tag, and if it is private log in with `skopeo login %s` or `docker login %s`", what, ErrNotFound, host, te, host, host)
		}
	}
	return fmt.Errorf("%s from %s: %w", what, host, err)
}

// newRemoteTransport is the HTTP transport under ggcr's auth and retry
// layers: system roots plus o.CAFile, plain HTTP only for o.Insecure hosts,
// and the stall deadline.
func newRemoteTransport(o RemoteOptions) (http.RoundTripper, error) {
	base := http.DefaultTransport.(*http.Transport).Clone()
	if o.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading --registry-ca %s: %w", o.CAFile, err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--registry-ca %s: no PEM certificate in it", o.CAFile)
		}
		base.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &guardTransport{base: base, timeout: o.Timeout, insecure: o.Insecure}, nil
}

// guardTransport refuses plain HTTP to hosts not named insecure (ggcr itself
// falls back to HTTP for any loopback or private address) and fails a
// request whose response stalls for longer than timeout.
type guardTransport struct {
	base     http.RoundTripper
	timeout  time.Duration
	insecure []string
}

type plainHTTPError struct{ host string }

func (e *plainHTTPError) Error() string {
	return fmt.Sprintf("plain HTTP to %s not allowed (name it with --insecure-registry %s)", e.host, e.host)
}
func (e *plainHTTPError) Unwrap() error { return ErrPlainHTTP }

type stallError struct {
	host    string
	timeout time.Duration
}

func (e *stallError) Error() string {
	return fmt.Sprintf("%s sent nothing for %s (raise --registry-timeout if the registry is slow)", e.host, e.timeout)
}
func (e *stallError) Unwrap() error { return ErrStalled }

func (t *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !slices.Contains(t.insecure, req.URL.Host) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, &plainHTTPError{host: req.URL.Host}
	}
	stall := &stallError{host: req.URL.Host, timeout: t.timeout}
	ctx, cancel := context.WithCancelCause(req.Context())
	timer := time.AfterFunc(t.timeout, func() { cancel(stall) })
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		timer.Stop()
		cancel(nil)
		if context.Cause(ctx) == error(stall) {
			return nil, stall
		}
		return nil, err
	}
	timer.Reset(t.timeout)
	resp.Body = &stallBody{rc: resp.Body, ctx: ctx, cancel: cancel, timer: timer, stall: stall}
	return resp, nil
}

// stallBody re-arms the stall timer on every byte received.
type stallBody struct {
	rc     io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
	stall  *stallError
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.stall.timeout)
	}
	if err != nil && err != io.EOF && context.Cause(b.ctx) == error(b.stall) {
		err = b.stall
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.timer.Stop()
	b.cancel(nil)
	return b.rc.Close()
}

// retryableRead reports whether a download that failed with err may be
// resumed by fetching the blob again: a dropped connection, not a digest
// mismatch, a stall or a cancellation.
func retryableRead(err error) bool {
	if errors.Is(err, ErrStalled) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		(errors.As(err, &ne) && !ne.Timeout())
}
