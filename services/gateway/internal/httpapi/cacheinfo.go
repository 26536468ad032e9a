package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// maxCacheInfoSize bounds the nix-cache-info a client may PUT (it is
// read and dropped).
const maxCacheInfoSize = 64 << 10

// cacheInfo answers GET/HEAD /nix-cache-info.
func (h *Handler) cacheInfo(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/x-nix-cache-info")
	w.Header().Set("Content-Length", strconv.Itoa(len(h.cacheInfoBody)))
	io.WriteString(w, h.cacheInfoBody)
}

// putCacheInfo accepts the nix-cache-info Nix uploads when GET answered
// 404 (which it never does here); the gateway's own is what is served.
func (h *Handler) putCacheInfo(w http.ResponseWriter, r *http.Request) {
	if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, maxCacheInfoSize)); err != nil {
		h.writeError(w, r, fmt.Errorf("read nix-cache-info: %w", err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
