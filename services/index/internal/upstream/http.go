package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/narinfo"
)

// errAbsent: the upstream does not have the file (404, or 403 and 410,
// which Nix also reads as absent: S3 answers 403 for a missing key).
var errAbsent = errors.New("absent upstream")

// refusal is an upstream answer that was read and found wrong.
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }

// failure is an upstream that could not answer; unreachable ones (no
// connection, no answer in time, a 5xx or 429) are skipped for a while.
type failure struct {
	err         error
	unreachable bool
}

func (f *failure) Error() string { return f.err.Error() }

// errStalled ends a NAR download whose upstream went silent.
var errStalled = errors.New("the upstream sent nothing for too long")

// httpClient talks to the upstreams.
type httpClient struct {
	c       *http.Client
	timeout time.Duration
	metrics *metricSet
}

func newHTTPClient(timeout time.Duration, m *metricSet) *httpClient {
	// The wait for response headers is bounded by the caller's context
	// (narinfo) or the silence timer (nar), which say why they ended.
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: timeout,
		MaxIdleConnsPerHost: lookupConcurrency + narConcurrency,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &httpClient{c: &http.Client{Transport: tr}, timeout: timeout, metrics: m}
}

func (h *httpClient) close() { h.c.CloseIdleConnections() }

// get sends a GET of target and returns the response when it is a 200.
func (h *httpClient) get(ctx context.Context, u *upstreamCache, kind, target string, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, &refusal{fmt.Errorf("request %s: %v", target, err)}
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", "nixcache")
	resp, err := h.c.Do(req)
	if err != nil {
		h.metrics.request(u.name, kind, "error")
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause
		}
		return nil, &failure{err: fmt.Errorf("GET %s: %w", target, err), unreachable: true}
	}
	h.metrics.request(u.name, kind, strconv.Itoa(resp.StatusCode))
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		return resp, nil
	case code == http.StatusNotFound || code == http.StatusForbidden || code == http.StatusGone:
		resp.Body.Close()
		return nil, errAbsent
	default:
		resp.Body.Close()
		return nil, &failure{err: fmt.Errorf("GET %s: HTTP %s", target, resp.Status),
			unreachable: code >= 500 || code == http.StatusTooManyRequests}
	}
}

// narinfo fetches and parses the narinfo of hashPart, within the timeout.
func (h *httpClient) narinfo(ctx context.Context, u *upstreamCache, hashPart, storeDir string) (*narinfo.NarInfo, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, h.timeout, fmt.Errorf("no answer within -upstream-timeout %s", h.timeout))
	defer cancel()
	target := u.base.ResolveReference(&url.URL{Path: hashPart + ".narinfo"}).String()
	resp, err := h.get(ctx, u, "narinfo", target, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body := &recordErr{r: resp.Body}
	// Go's client decodes gzip itself; a cache written with
	// narinfo-compression serves its own encodings.
	var r io.Reader = body
	switch enc := strings.ToLower(resp.Header.Get("Content-Encoding")); enc {
	case "", "identity":
	case compression.XZ, compression.Zstd, compression.Bzip2:
		dec, err := compression.NewReader(enc, body)
		if err != nil {
			return nil, &refusal{fmt.Errorf("narinfo %s: Content-Encoding %s: %v", target, enc, err)}
		}
		defer dec.Close()
		r = dec
	default:
		return nil, &refusal{fmt.Errorf("narinfo %s: unsupported Content-Encoding %q", target, enc)}
	}
	ni, err := narinfo.Parse(r, storeDir)
	if body.err != nil {
		cause := body.err
		if c := context.Cause(ctx); c != nil {
			cause = c
		}
		return nil, &failure{err: fmt.Errorf("read %s: %w", target, cause), unreachable: true}
	}
	if err != nil {
		return nil, &refusal{fmt.Errorf("%s: %v", target, err)}
	}
	return ni, nil
}

// narBody is the body of a NAR download: a read that waits longer than
// the timeout ends it, and its error is kept.
type narBody struct {
	body    io.ReadCloser
	ctx     context.Context
	cancel  context.CancelCauseFunc
	timer   *time.Timer
	timeout time.Duration
	// err is the error reading the body returned, other than io.EOF.
	err error
}

func (b *narBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.timer.Reset(b.timeout)
	if err != nil && err != io.EOF {
		if cause := context.Cause(b.ctx); errors.Is(cause, errStalled) {
			err = fmt.Errorf("%w (%s)", errStalled, b.timeout)
		}
		b.err = err
	}
	return n, err
}

func (b *narBody) Close() error {
	b.timer.Stop()
	err := b.body.Close()
	b.cancel(nil)
	return err
}

// nar starts the download of a NAR file. The file is read as stored:
// no transfer encoding is asked for.
func (h *httpClient) nar(ctx context.Context, u *upstreamCache, target string) (*narBody, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(h.timeout, func() { cancel(errStalled) })
	resp, err := h.get(ctx, u, "nar", target, http.Header{"Accept-Encoding": {"identity"}})
	if err != nil {
		timer.Stop()
		cancel(nil)
		return nil, err
	}
	if enc := resp.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		timer.Stop()
		resp.Body.Close()
		cancel(nil)
		return nil, &refusal{fmt.Errorf("NAR %s: served with Content-Encoding %s, not as stored", target, enc)}
	}
	return &narBody{body: resp.Body, ctx: ctx, cancel: cancel, timer: timer, timeout: h.timeout}, nil
}

// resolveNar resolves a narinfo's URL against its upstream: it must stay
// below the upstream's URL (Nix appends it to the cache URL).
func resolveNar(base *url.URL, ref string) (string, error) {
	r, err := url.Parse(ref)
	if err != nil {
		return "", fmt.Errorf("NAR URL %q: %v", ref, err)
	}
	if r.Scheme != "" || r.Host != "" || strings.HasPrefix(r.Path, "/") {
		return "", fmt.Errorf("NAR URL %q: want a path relative to the upstream", ref)
	}
	u := base.ResolveReference(r)
	if !strings.HasPrefix(u.Path, base.Path) {
		return "", fmt.Errorf("NAR URL %q: leads outside the upstream", ref)
	}
	return u.String(), nil
}

// recordErr remembers the error its reader returned, other than io.EOF.
type recordErr struct {
	r   io.Reader
	err error
}

func (e *recordErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}
