package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	signerv1 "github.com/nixcache/nixcache/proto/nixcache/signer/v1"
	"github.com/nixcache/nixcache/services/gateway/internal/auth"
)

// maxCacheInfoSize bounds the nix-cache-info a client may PUT (it is
// read and dropped).
const maxCacheInfoSize = 64 << 10

// cacheInfo answers GET/HEAD /nix-cache-info.
func (h *Handler) cacheInfo(w http.ResponseWriter, r *http.Request) {
	if !h.authorize(w, r, auth.Read) {
		return
	}
	body := fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", h.StoreDir, h.Priority)
	w.Header().Set("Content-Type", "text/x-nix-cache-info")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	io.WriteString(w, body)
}

// putCacheInfo accepts the nix-cache-info Nix uploads when GET answered
// 404 (which it never does here); the gateway's own is what is served.
func (h *Handler) putCacheInfo(w http.ResponseWriter, r *http.Request) {
	if !h.authorize(w, r, auth.Push) {
		return
	}
	if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, maxCacheInfoSize)); err != nil {
		h.writeError(w, r, fmt.Errorf("read nix-cache-info: %w", err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// landing answers GET / with a short plain-text page naming the service and
// the public keys clients must trust.
func (h *Handler) landing(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := h.unary(r.Context())
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "nixcache: a Nix binary cache\n\n")
	fmt.Fprintf(&b, "Store directory: %s\nPriority: %d\n\n", h.StoreDir, h.Priority)
	resp, err := h.Signer.ListKeys(ctx, &signerv1.ListKeysRequest{})
	if err != nil {
		h.Log.WarnContext(r.Context(), "list signing keys", "err", err)
		fmt.Fprintf(&b, "Public keys: unavailable (the signer did not answer)\n")
	} else {
		keys := make([]string, 0, len(resp.GetKeys()))
		for _, k := range resp.GetKeys() {
			keys = append(keys, k.GetPublicKey())
		}
		fmt.Fprintf(&b, "To use it, add to nix.conf:\n\n")
		fmt.Fprintf(&b, "  extra-substituters = %s\n", cacheURL(r))
		fmt.Fprintf(&b, "  extra-trusted-public-keys = %s\n\n", strings.Join(keys, " "))
		fmt.Fprintf(&b, "Public keys:\n")
		for _, k := range resp.GetKeys() {
			state := "inactive"
			if k.GetActive() {
				state = "active"
			}
			fmt.Fprintf(&b, "  %s (%s)\n", k.GetPublicKey(), state)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
	io.WriteString(w, b.String())
}

// cacheURL guesses the URL the client reached the cache at.
func cacheURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
