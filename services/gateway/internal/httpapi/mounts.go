package httpapi

import "net/http"

// The handlers mounted beside the Nix routes, set in Config:
//
//	Landing  http.Handler // GET and HEAD /; nil: 404
//	Admin    http.Handler // the JSON admin API, /api/v1/...; nil: 404

// landing answers GET and HEAD / with the landing page.
func (h *Handler) landing(w http.ResponseWriter, r *http.Request) {
	if h.Landing == nil {
		h.notFound(w, r)
		return
	}
	h.Landing.ServeHTTP(w, r)
}

// admin hands a request under /api/v1/ to the JSON admin API, which
// forwards its credentials to the index; the index judges them.
func (h *Handler) admin(w http.ResponseWriter, r *http.Request) {
	if h.Admin == nil {
		h.notFound(w, r)
		return
	}
	h.Admin.ServeHTTP(w, r)
}
