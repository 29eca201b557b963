package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/dustin/go-humanize"
)

// Client is a client of a daemon's control API (lode agent mount, umount,
// status, export, unexport): HTTP over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the daemon listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", socket)
	}}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// call sends method path with body (JSON, if not nil) and decodes the
// answer into out (if not nil). A non-2xx answer is an error carrying the
// daemon's message.
func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://lode-agent"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("calling the lode agent on %s (is \"lode agent\" running?): %w", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the agent's answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var ae apiError
		if json.Unmarshal(b, &ae) == nil && ae.Error != "" {
			return fmt.Errorf("lode agent: %s", ae.Error)
		}
		return fmt.Errorf("lode agent: %s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decoding the agent's answer to %s %s: %w", method, path, err)
		}
	}
	return nil
}

// WriteStatus writes st as lode agent status prints it.
func WriteStatus(out io.Writer, st Status) {
	fmt.Fprintf(out, "memory cache %s, disk cache %s in %d chunks\n",
		humanize.IBytes(uint64(st.MemCacheBytes)), humanize.IBytes(uint64(st.DiskCacheBytes)), st.DiskCacheFiles)
	line := func(kind, where string, s ServedStatus) {
		var tiers []string
		for _, t := range s.Stats.Tiers {
			tiers = append(tiers, fmt.Sprintf("%s %d", t.Tier, t.Hits))
		}
		fmt.Fprintf(out, "%s %s: %s/%s (root %s) read %s, %.2f%% of %s; chunk reads: memory %d, %s; %d errors\n",
			kind, where, s.Tenant, s.Image, strings.Join(s.Roots, ","), humanize.IBytes(uint64(s.Stats.BytesRead)),
			100*float64(s.Stats.DistinctBytesRead)/float64(max(1, s.Stats.ImageSize)), humanize.IBytes(uint64(s.Stats.ImageSize)),
			s.Stats.MemHits, strings.Join(tiers, ", "), s.Stats.FetchErrors)
	}
	for _, s := range st.Mounts {
		line("mount", s.Dir, s)
	}
	for _, s := range st.Exports {
		line("export", s.Listen, s)
	}
	if len(st.Mounts)+len(st.Exports) == 0 {
		fmt.Fprintln(out, "no mounts or exports")
	}
	for _, s := range st.Services {
		if s.Text != "" {
			fmt.Fprint(out, s.Text)
		}
	}
}

// Mount asks the daemon to mount req.Image at req.Dir (absolute).
func (c *Client) Mount(ctx context.Context, req MountRequest) (ServedStatus, error) {
	var st ServedStatus
	err := c.call(ctx, http.MethodPost, "/v1/mounts", req, &st)
	return st, err
}

// Unmount asks the daemon to unmount dir (absolute).
func (c *Client) Unmount(ctx context.Context, dir string) (ServedStatus, error) {
	var st ServedStatus
	err := c.call(ctx, http.MethodDelete, "/v1/mounts?dir="+url.QueryEscape(dir), nil, &st)
	return st, err
}

// Export asks the daemon to export req.Image over NBD on req.Listen.
func (c *Client) Export(ctx context.Context, req ExportRequest) (ServedStatus, error) {
	var st ServedStatus
	err := c.call(ctx, http.MethodPost, "/v1/exports", req, &st)
	return st, err
}

// Unexport asks the daemon to stop the export listening on listen.
func (c *Client) Unexport(ctx context.Context, listen string) (ServedStatus, error) {
	var st ServedStatus
	err := c.call(ctx, http.MethodDelete, "/v1/exports?listen="+url.QueryEscape(listen), nil, &st)
	return st, err
}

// Status returns what the daemon serves.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.call(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Metrics returns the daemon's /metrics in the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://lode-agent/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("calling the lode agent on %s (is \"lode agent\" running?): %w", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("reading the agent's metrics: %s %v", resp.Status, err)
	}
	return string(b), nil
}
