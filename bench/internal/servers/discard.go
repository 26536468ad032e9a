package servers

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Discard is an HTTP binary cache that keeps only the narinfos pushed to
// it (Nix checks that a path's references are in the cache before it
// uploads the path): NARs are read to their end and dropped, nothing is
// verified, hashed, signed or synced. A push to it measures what
// `nix copy --to http://…` costs Nix itself: the floor of any HTTP
// cache's push time.
type Discard struct {
	URL string
	srv *http.Server
	err chan error

	mu       sync.Mutex
	narinfos map[string][]byte // by URL path
}

// StartDiscard serves a Discard cache on a loopback port.
func StartDiscard() (*Discard, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &Discard{URL: "http://" + lis.Addr().String(), err: make(chan error, 1), narinfos: map[string][]byte{}}
	d.srv = &http.Server{Handler: http.HandlerFunc(d.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { d.err <- d.srv.Serve(lis) }()
	return d, nil
}

func (d *Discard) serve(w http.ResponseWriter, r *http.Request) {
	narinfo := strings.HasSuffix(r.URL.Path, ".narinfo")
	switch {
	case r.Method == http.MethodPut && narinfo:
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		d.mu.Lock()
		d.narinfos[r.URL.Path] = b
		d.mu.Unlock()
	case r.Method == http.MethodPut:
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	case r.URL.Path == "/nix-cache-info":
		io.WriteString(w, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
	case narinfo:
		d.mu.Lock()
		b, ok := d.narinfos[r.URL.Path]
		d.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		_, _ = w.Write(b)
	default: // NARs, anything else: absent
		http.NotFound(w, r)
	}
}

// Stop shuts the server down.
func (d *Discard) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := d.srv.Shutdown(ctx)
	if serr := <-d.err; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
