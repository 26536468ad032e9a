// Package landing serves the gateway's home page: how to use the cache
// (nix.conf, netrc, nix copy), its public keys and live statistics, as one
// self-contained HTML page rendered on the server. It needs no JavaScript;
// a small inline script refreshes the statistics from /api/v1/stats and
// adds copy buttons. When the signer or the index does not answer, the page
// still renders and says what is unavailable.
package landing

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

var (
	//go:embed page.html.tmpl
	pageSource string
	//go:embed page.css
	pageCSS string
	//go:embed page.js
	pageJS string

	pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
		"bytes": formatBytes,
		"count": formatCount,
		"ratio": formatRatio,
	}).Parse(pageSource))

	// contentSecurityPolicy allows exactly the inline style and script of
	// the page, and fetches of the stats from the same origin.
	contentSecurityPolicy = fmt.Sprintf("default-src 'none'; style-src '%s'; script-src '%s'; "+
		"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
		sourceHash(pageCSS), sourceHash(pageJS))
)

func sourceHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// Config configures New.
type Config struct {
	// Admin is the index's AdminService: GetStats, and ListKeys (the
	// index asks the signer; the gateway never talks to it).
	Admin indexv1.AdminServiceClient
	// PublicURL is the URL clients reach the cache at, e.g.
	// "https://cache.example.org"; "" derives it from each request's
	// scheme and Host.
	PublicURL string
	// Timeout bounds the calls to the index.
	Timeout time.Duration
	Log     *slog.Logger
}

// Handler serves the landing page.
type Handler struct {
	cfg       Config
	publicURL *url.URL // nil: from the request

	// lastKeys are the keys the index listed last: shown while it does
	// not answer (keys change seldom; the page stays useful).
	mu       sync.Mutex
	lastKeys []*indexv1.KeyInfo
}

// New returns the landing page handler.
func New(cfg Config) (*Handler, error) {
	switch {
	case cfg.Admin == nil:
		return nil, errors.New("landing: admin client is required")
	case cfg.Timeout <= 0:
		return nil, errors.New("landing: timeout must be positive")
	case cfg.Log == nil:
		return nil, errors.New("landing: logger is required")
	}
	h := &Handler{cfg: cfg}
	if cfg.PublicURL != "" {
		u, err := ParsePublicURL(cfg.PublicURL)
		if err != nil {
			return nil, fmt.Errorf("landing: %w", err)
		}
		h.publicURL = u
	}
	return h, nil
}

// ParsePublicURL checks a -public-url value: an absolute http or https URL
// with a host and nothing after the path.
func ParsePublicURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return nil, fmt.Errorf("public url %q: %w", s, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("public url %q: scheme must be http or https", s)
	case u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("public url %q: want scheme://host[:port][/path], nothing else", s)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// page is what the template shows.
type page struct {
	URL  string // the cache, as substituters takes it
	Host string // the netrc machine

	Keys []*indexv1.KeyInfo
	// TrustedKeys are the active public keys, space-separated.
	TrustedKeys string
	KeysError   string // why the keys are missing

	Stats      *indexv1.GetStatsResponse
	StatsError string // why the stats are missing

	// Whether the keys (the signer, through the index) and the index
	// answered at all.
	SignerUp, IndexUp bool

	Rendered time.Time
}

// ServeHTTP answers GET and HEAD / with the page. It is 200 even when the
// signer or the index is down: the page says so.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u := h.cacheURL(r)
	p := page{URL: u.String(), Host: u.Hostname(), Rendered: time.Now().UTC()}

	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Timeout)
	defer cancel()
	// The index checks the caller's credentials for the stats and the
	// keys, as for /api/v1/stats: anonymous reads are fine when reads are
	// public.
	statsCtx := ctx
	if a := r.Header.Get("Authorization"); a != "" {
		statsCtx = metadata.AppendToOutgoingContext(ctx, "authorization", a)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		resp, err := h.cfg.Admin.ListKeys(statsCtx, &indexv1.ListKeysRequest{})
		p.SignerUp = answered(err)
		h.mu.Lock()
		switch {
		case err == nil:
			h.lastKeys = resp.GetKeys()
			p.Keys = h.lastKeys
		case !p.SignerUp:
			p.Keys = h.lastKeys // down: the keys as last listed, if ever
		}
		h.mu.Unlock()
		if err != nil {
			h.logFailure(ctx, "landing page: list signing keys", err)
			if p.Keys == nil {
				p.KeysError = "Public keys unavailable: " + unavailable(err, "the signer (asked through the index)")
				return
			}
		}
		var active []string
		for _, k := range p.Keys {
			if k.GetActive() {
				active = append(active, k.GetPublicKey())
			}
		}
		p.TrustedKeys = strings.Join(active, " ")
		if len(active) == 0 {
			p.KeysError = "The signer has no active key: nothing pushed can be signed."
		}
	})
	wg.Go(func() {
		resp, err := h.cfg.Admin.GetStats(statsCtx, &indexv1.GetStatsRequest{})
		p.IndexUp = answered(err)
		if err != nil {
			h.logFailure(ctx, "landing page: get stats", err)
			p.StatsError = "Statistics unavailable: " + unavailable(err, "the index")
			return
		}
		p.Stats = resp
	})
	wg.Wait()

	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, struct {
		page
		CSS template.CSS
		JS  template.JS
	}{p, template.CSS(pageCSS), template.JS(pageJS)}); err != nil { //nolint:gosec // G203: our own embedded files
		h.cfg.Log.ErrorContext(r.Context(), "landing page: render", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Content-Length", strconv.Itoa(buf.Len()))
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Security-Policy", contentSecurityPolicy)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	_, _ = w.Write(buf.Bytes())
}

// cacheURL is -public-url, or else the URL r reached the cache at.
func (h *Handler) cacheURL(r *http.Request) *url.URL {
	if h.publicURL != nil {
		return h.publicURL
	}
	u := &url.URL{Scheme: "http", Host: r.Host}
	if r.TLS != nil {
		u.Scheme = "https"
	}
	if u.Host == "" {
		u.Host = "localhost"
	}
	return u
}

// logFailure logs a failed call: a warning when the service did not
// answer, else (it refused, e.g. private reads) for debugging only.
func (h *Handler) logFailure(ctx context.Context, msg string, err error) {
	level := slog.LevelDebug
	if !answered(err) {
		level = slog.LevelWarn
	}
	h.cfg.Log.Log(ctx, level, msg, "code", status.Code(err).String(), "err", err)
}

// answered reports whether a call that returned err reached its service.
func answered(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return false
	}
	return true
}

// unavailable says in a few words why a call to what failed.
func unavailable(err error, what string) string {
	switch status.Code(err) {
	case codes.Unavailable:
		return what + " is not answering."
	case codes.DeadlineExceeded, codes.Canceled:
		return what + " did not answer in time."
	case codes.Unimplemented:
		return what + " does not report them."
	case codes.Unauthenticated, codes.PermissionDenied:
		return "reading this cache needs a token."
	default:
		return what + " answered with an error (see the gateway's log)."
	}
}

// formatBytes writes n bytes in binary units: "1.5 GiB".
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// formatCount writes n with thousands separators: "12,345".
func formatCount(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// formatRatio writes part/(part+rest) as a percentage: "97.5%".
func formatRatio(part, rest uint64) string {
	if part+rest == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(part+rest))
}
