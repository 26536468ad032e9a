// Package cacheclient speaks a nixcache's public HTTP interface: the
// standard binary-cache uploads (PUT of NARs and narinfos), nix-cache-info,
// and the JSON API's missing-paths and keys. It retries what a busy or
// restarting cache answers (429, 502, 503, 504, a lost connection) with
// exponential backoff, honouring Retry-After, and never what the client
// got wrong.
package cacheclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MaxPathsPerQuery is the most paths one missing-paths request carries
// (the cache refuses more).
const MaxPathsPerQuery = 10000

// maxErrorBody bounds how much of an error answer is read into the error.
const maxErrorBody = 4 << 10

// maxJSONAnswer bounds a JSON answer.
const maxJSONAnswer = 8 << 20

// Config configures a Client.
type Config struct {
	// URL is the cache's root, e.g. https://cache.example.org.
	URL string
	// Token is sent as a Bearer token; "" sends none.
	Token string
	// Retries is how many times a retryable failure is retried.
	Retries int
	// MinBackoff and MaxBackoff bound the wait between attempts, which
	// doubles from MinBackoff; a Retry-After longer than MaxBackoff is
	// cut to it.
	MinBackoff, MaxBackoff time.Duration
	// HTTP is the client used; nil: one with sensible transport limits.
	HTTP *http.Client
	Log  *slog.Logger
}

// Client is a nixcache's HTTP interface. It is safe for concurrent use.
type Client struct {
	cfg  Config
	base *url.URL
}

// New returns a client of the cache at cfg.URL.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(strings.TrimSuffix(cfg.URL, "/"))
	switch {
	case err != nil:
		return nil, fmt.Errorf("cache URL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("cache URL %q: want http:// or https://", cfg.URL)
	case u.Host == "":
		return nil, fmt.Errorf("cache URL %q: no host", cfg.URL)
	case cfg.Log == nil:
		return nil, errors.New("cacheclient: logger is required")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(cfg.MinBackoff, 30*time.Second)
	}
	if cfg.HTTP == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64
		tr.ResponseHeaderTimeout = 5 * time.Minute
		// NAR bodies go out in large writes (4 KiB by default: a
		// syscall per 4 KiB).
		tr.WriteBufferSize = 256 << 10
		cfg.HTTP = &http.Client{Transport: tr}
	}
	return &Client{cfg: cfg, base: u}, nil
}

// Host is the host of the cache's URL (a netrc machine name).
func (c *Client) Host() string { return c.base.Hostname() }

// URL is the cache's root URL.
func (c *Client) URL() string { return c.base.String() }

// Error is a failed request's answer.
type Error struct {
	Method, Path string
	Status       int
	Message      string // the answer's body, clipped
}

func (e *Error) Error() string {
	hint := ""
	switch e.Status {
	case http.StatusUnauthorized:
		hint = " (no token or a wrong one: check the netrc entry, NIXCACHE_TOKEN or -token)"
	case http.StatusForbidden:
		hint = " (the token lacks the scope: pushing needs push, the path query read)"
	}
	return fmt.Sprintf("%s %s: %d %s%s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), hint, e.Message)
}

// Retryable reports whether the cache asked to be tried again later.
func (e *Error) Retryable() bool {
	switch e.Status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// IsAuth reports whether err is the cache refusing the credentials.
func IsAuth(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden)
}

// IsRefusal reports whether err is the cache refusing what was sent (a
// 4xx other than the credentials' and 429): sending it again gives the
// same answer.
func IsRefusal(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status >= 400 && e.Status < 500 && !IsAuth(err) &&
		e.Status != http.StatusTooManyRequests && e.Status != http.StatusRequestTimeout
}

// MayRefuseSome reports whether err may be the cache refusing only some of
// the paths pushed: a refusal (IsRefusal), or a 403, which a token limited
// to some store-path names (a push pattern) gets for the others. Pushing
// the paths one by one then lets the others through.
func MayRefuseSome(err error) bool {
	var e *Error
	return IsRefusal(err) || errors.As(err, &e) && e.Status == http.StatusForbidden
}

// Body makes a request body, afresh for each attempt.
type Body func() (io.ReadCloser, error)

// BytesBody is a Body of b.
func BytesBody(b []byte) Body {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

// request is one request, retried as a whole.
type request struct {
	method, path, contentType string
	body                      Body  // nil: none
	size                      int64 // of body; -1 unknown
	accept                    string
}

// do sends req until it succeeds, fails for good, or the retries are
// spent, and returns the successful answer, whose body the caller closes.
func (c *Client) do(ctx context.Context, req request) (*http.Response, error) {
	backoff := c.cfg.MinBackoff
	for attempt := 0; ; attempt++ {
		resp, retryAfter, err := c.once(ctx, req)
		if err == nil {
			return resp, nil
		}
		if !retryable(err) || attempt >= c.cfg.Retries || ctx.Err() != nil {
			return nil, err
		}
		wait := backoff + rand.N(backoff/2+1) //nolint:gosec // jitter between retries, not a secret
		if retryAfter > 0 {
			wait = retryAfter
		}
		wait = min(wait, c.cfg.MaxBackoff)
		c.cfg.Log.WarnContext(ctx, "cache request failed, retrying", "method", req.method, "path", req.path,
			"attempt", attempt+1, "retries", c.cfg.Retries, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%s %s: %w (last error: %w)", req.method, req.path, context.Cause(ctx), err)
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

// retryable reports whether err may pass by itself: the cache said so,
// or the connection failed.
func retryable(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Retryable()
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, errConnection)
}

// errConnection marks a transport failure that is none of the above.
var errConnection = errors.New("connection failed")

// once sends req once.
func (c *Client) once(ctx context.Context, req request) (*http.Response, time.Duration, error) {
	var body io.ReadCloser
	if req.body != nil {
		b, err := req.body()
		if err != nil {
			return nil, 0, fmt.Errorf("%s %s: body: %w", req.method, req.path, err)
		}
		body = b
	}
	u := *c.base
	u.Path = c.base.Path + "/" + req.path
	hr, err := http.NewRequestWithContext(ctx, req.method, u.String(), body)
	if err != nil {
		if body != nil {
			body.Close()
		}
		return nil, 0, fmt.Errorf("%s %s: %w", req.method, req.path, err)
	}
	if body != nil {
		hr.ContentLength = req.size
	}
	if req.contentType != "" {
		hr.Header.Set("Content-Type", req.contentType)
	}
	if req.accept != "" {
		hr.Header.Set("Accept", req.accept)
	}
	if c.cfg.Token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	}
	resp, err := c.cfg.HTTP.Do(hr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0, fmt.Errorf("%s %s: %w", req.method, req.path, context.Cause(ctx))
		}
		return nil, 0, fmt.Errorf("%s %s: %w: %w", req.method, req.path, errConnection, err)
	}
	if resp.StatusCode < 300 {
		return resp, 0, nil
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{Method: req.method, Path: "/" + req.path, Status: resp.StatusCode, Message: strings.TrimSpace(string(msg))}
	var retryAfter time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
		retryAfter = time.Duration(s) * time.Second
	}
	return nil, retryAfter, e
}

// drain reads the rest of a successful answer and closes it, so that the
// connection is kept.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxJSONAnswer))
	resp.Body.Close()
}

// CacheInfo returns the fields of the cache's nix-cache-info.
func (c *Client) CacheInfo(ctx context.Context) (map[string]string, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: "nix-cache-info"})
	if err != nil {
		return nil, err
	}
	defer drain(resp)
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read nix-cache-info: %w", err)
	}
	info := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			info[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return info, nil
}

// Missing returns which of paths (absolute store paths) the cache does not
// serve, in one request per MaxPathsPerQuery paths.
func (c *Client) Missing(ctx context.Context, paths []string) ([]string, error) {
	missing := []string{}
	for start := 0; start < len(paths); start += MaxPathsPerQuery {
		batch := paths[start:min(start+MaxPathsPerQuery, len(paths))]
		body, err := json.Marshal(struct {
			Paths []string `json:"paths"`
		}{batch})
		if err != nil {
			return nil, err
		}
		var answer struct {
			Missing []string `json:"missing"`
		}
		if err := c.postJSON(ctx, "api/v1/missing-paths", body, &answer); err != nil {
			return nil, err
		}
		asked := make(map[string]bool, len(batch))
		for _, p := range batch {
			asked[p] = true
		}
		for _, p := range answer.Missing {
			if !asked[p] {
				return nil, fmt.Errorf("missing-paths: the cache answered %q, which was not asked about", p)
			}
		}
		missing = append(missing, answer.Missing...)
	}
	return missing, nil
}

// Key is a signing key the cache announces.
type Key struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
	Active    bool   `json:"active"`
}

// Keys returns the cache's public keys.
func (c *Client) Keys(ctx context.Context) ([]Key, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: "api/v1/keys", accept: "application/json"})
	if err != nil {
		return nil, err
	}
	defer drain(resp)
	var answer struct {
		Keys []Key `json:"keys"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJSONAnswer)).Decode(&answer); err != nil {
		return nil, fmt.Errorf("GET /api/v1/keys: decode: %w", err)
	}
	return answer.Keys, nil
}

func (c *Client) postJSON(ctx context.Context, path string, body []byte, answer any) error {
	resp, err := c.do(ctx, request{method: http.MethodPost, path: path, contentType: "application/json",
		accept: "application/json", body: BytesBody(body), size: int64(len(body))})
	if err != nil {
		return err
	}
	defer drain(resp)
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJSONAnswer)).Decode(answer); err != nil {
		return fmt.Errorf("POST /%s: decode: %w", path, err)
	}
	return nil
}

// PutNar uploads a NAR file to url (relative to the cache root, e.g.
// "nar/<file hash>.nar.zst"); size is the body's length.
func (c *Client) PutNar(ctx context.Context, url string, body Body, size int64) error {
	resp, err := c.do(ctx, request{method: http.MethodPut, path: url, contentType: "application/x-nix-nar", body: body, size: size})
	if err != nil {
		return err
	}
	drain(resp)
	return nil
}

// PutNarinfo uploads the narinfo of the store path whose hash part is
// hashPart.
func (c *Client) PutNarinfo(ctx context.Context, hashPart, text string) error {
	resp, err := c.do(ctx, request{method: http.MethodPut, path: hashPart + ".narinfo", contentType: "text/x-nix-narinfo",
		body: BytesBody([]byte(text)), size: int64(len(text))})
	if err != nil {
		return err
	}
	drain(resp)
	return nil
}
