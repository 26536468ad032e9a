// Package push uploads store paths with their closures to a nixcache:
// path infos from the nix-daemon, one batch query for what the cache
// lacks, then the NARs dumped from the store, hashed, compressed and
// uploaded in parallel, each narinfo after its NAR and after the narinfos
// of its references.
package push

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nixcache/nixcache/cmd/nixcache/internal/cacheclient"
	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/daemon"
	"github.com/nixcache/nixcache/nix/nardump"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
)

// Options configures a Pusher.
type Options struct {
	Cache  *cacheclient.Client
	Daemon *daemon.Pool
	// StoreDir is the store directory, read directly to dump NARs.
	StoreDir string
	// Compression is none, zstd or xz; ZstdLevel (1-22) and ZstdThreads
	// (0: one per CPU) tune zstd.
	Compression string
	ZstdLevel   int
	ZstdThreads int
	// Jobs is how many paths are dumped, compressed and uploaded at once.
	Jobs int
	// SkipSignedBy skips paths carrying a signature of one of these keys:
	// a key name ("cache.nixos.org-1") matches the signature's name; a
	// public key ("name:base64") must also verify it.
	SkipSignedBy []string
	// TempDir holds compressed NARs too large for memory; "": the
	// system's.
	TempDir string
	// Progress, when set, is called every ProgressInterval while a push
	// uploads, and once when it ends.
	Progress func(Progress)
	Log      *slog.Logger
}

// ProgressInterval is how often Options.Progress is called.
const ProgressInterval = 200 * time.Millisecond

// Progress is the state of a push.
type Progress struct {
	Paths, PathsDone int   // to upload, uploaded
	Bytes, BytesDone int64 // NAR bytes to upload, uploaded
	Start            time.Time
}

// Result says what a push did.
type Result struct {
	Closure  int // paths in the closures of the roots
	Skipped  int // signed by a key of SkipSignedBy
	Present  int // already in the cache
	Uploaded int
	NarBytes int64 // uncompressed, of the uploaded paths
	// FileBytes is what was sent of the NARs (compressed).
	FileBytes int64
	Duration  time.Duration
}

// Pusher pushes closures; it is safe for concurrent use.
type Pusher struct {
	o    Options
	comp *compressor
	skip []skipKey
}

type skipKey struct {
	name string
	key  *signature.PublicKey // nil: the name alone
}

// New returns a Pusher.
func New(o Options) (*Pusher, error) {
	switch {
	case o.Cache == nil || o.Daemon == nil || o.Log == nil:
		return nil, errors.New("push: cache, daemon and logger are required")
	case o.Jobs < 1:
		return nil, fmt.Errorf("push: %d jobs: want at least 1", o.Jobs)
	}
	if err := storepath.ValidateStoreDir(o.StoreDir); err != nil {
		return nil, err
	}
	comp, err := newCompressor(o.Compression, o.ZstdLevel, o.ZstdThreads)
	if err != nil {
		return nil, err
	}
	skip, err := parseSkipKeys(o.SkipSignedBy)
	if err != nil {
		return nil, err
	}
	return &Pusher{o: o, comp: comp, skip: skip}, nil
}

// parseSkipKeys parses SkipSignedBy: key names, or public keys.
func parseSkipKeys(list []string) ([]skipKey, error) {
	var keys []skipKey
	for _, k := range list {
		if !strings.Contains(k, ":") {
			keys = append(keys, skipKey{name: k})
			continue
		}
		pk, err := signature.ParsePublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("skip-signed-by %q: %w", k, err)
		}
		keys = append(keys, skipKey{name: pk.Name, key: &pk})
	}
	return keys, nil
}

// Push uploads the closures of roots (absolute store paths) that the
// cache lacks. It fails when any path could not be uploaded; what was
// uploaded stays.
func (p *Pusher) Push(ctx context.Context, roots []string) (Result, error) {
	start := time.Now()
	var res Result
	infos, order, err := closure(ctx, p.o.Daemon, roots)
	if err != nil {
		return res, err
	}
	res.Closure = len(order)
	candidates := order[:0:0]
	for _, path := range order {
		if p.signedBySkipped(infos[path]) {
			res.Skipped++
			continue
		}
		candidates = append(candidates, path)
	}
	var answer []string
	if len(candidates) > 0 {
		if answer, err = p.o.Cache.Missing(ctx, candidates); err != nil {
			return res, fmt.Errorf("ask the cache what it lacks: %w", err)
		}
	}
	missing := inOrder(candidates, answer)
	res.Present = len(candidates) - len(missing)
	up := newUpload(p, infos, missing, start)
	err = up.run(ctx)
	res.Uploaded = int(up.pathsDone.Load())
	res.NarBytes = up.narDone.Load()
	res.FileBytes = up.fileBytes.Load()
	res.Duration = time.Since(start)
	return res, err
}

// inOrder returns the paths of answer in the order of order (references
// first, whatever the cache's answer says: the upload's waits rely on it),
// each once.
func inOrder(order, answer []string) []string {
	in := make(map[string]bool, len(answer))
	for _, path := range answer {
		in[path] = true
	}
	out := make([]string, 0, len(answer))
	for _, path := range order {
		if in[path] {
			out = append(out, path)
			delete(in, path)
		}
	}
	return out
}

// signedBySkipped reports whether info carries a signature of a key the
// user named.
func (p *Pusher) signedBySkipped(info *daemon.PathInfo) bool {
	if len(p.skip) == 0 {
		return false
	}
	var fp string
	for _, sig := range info.Sigs {
		name, _, err := signature.SplitSignature(sig)
		if err != nil {
			continue
		}
		for _, k := range p.skip {
			if k.name != name {
				continue
			}
			if k.key == nil {
				return true
			}
			if fp == "" {
				fp = signature.Fingerprint(p.o.StoreDir, info.StorePath, info.NarHash, info.NarSize, info.References)
			}
			if k.key.Verify(fp, sig) {
				return true
			}
		}
	}
	return false
}

// upload is the upload of the missing paths of one push.
type upload struct {
	p       *Pusher
	infos   map[string]*daemon.PathInfo
	paths   []string
	pending map[string]*pathState // the paths of this upload
	start   time.Time

	pathsDone          atomic.Int64
	narDone, fileBytes atomic.Int64
	inFlight           atomic.Int64 // NAR bytes read of paths not yet done
	total              int64
}

// pathState is how one path's upload ended.
type pathState struct {
	done chan struct{} // closed when its narinfo is uploaded or it failed
	err  error         // set before done is closed
}

func newUpload(p *Pusher, infos map[string]*daemon.PathInfo, paths []string, start time.Time) *upload {
	u := &upload{p: p, infos: infos, paths: paths, pending: make(map[string]*pathState, len(paths)), start: start}
	for _, path := range paths {
		u.pending[path] = &pathState{done: make(chan struct{})}
		u.total += int64(infos[path].NarSize)
	}
	return u
}

// run uploads every path, Jobs at a time, in order: a worker waits for
// the references of its path only after its NAR is uploaded, and they
// were handed out before it, so the wait always ends.
func (u *upload) run(ctx context.Context) error {
	if u.p.o.Progress != nil {
		stop := make(chan struct{})
		ticked := make(chan struct{})
		go func() {
			defer close(ticked)
			t := time.NewTicker(ProgressInterval)
			defer t.Stop()
			for {
				u.report()
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
		defer func() {
			close(stop)
			<-ticked
			u.report()
		}()
	}
	next := make(chan string)
	var wg sync.WaitGroup
	for range min(u.p.o.Jobs, max(len(u.paths), 1)) {
		wg.Go(func() {
			for path := range next {
				st := u.pending[path]
				st.err = u.one(ctx, path)
				close(st.done)
				if st.err != nil {
					u.p.o.Log.ErrorContext(ctx, "push path", "path", path, "err", st.err)
				}
			}
		})
	}
	for _, path := range u.paths {
		next <- path
	}
	close(next)
	wg.Wait()
	var failed []string
	var first error
	for _, path := range u.paths {
		if err := u.pending[path].err; err != nil {
			failed = append(failed, path)
			if first == nil {
				first = err
			}
		}
	}
	if first != nil {
		return fmt.Errorf("%d of %d paths not uploaded; first: %w", len(failed), len(u.paths), first)
	}
	return nil
}

// errReference marks a path not uploaded because a reference was not.
var errReference = errors.New("a reference was not uploaded")

// one uploads the NAR of path, then, once its references are in the
// cache, its narinfo.
func (u *upload) one(ctx context.Context, path string) error {
	info := u.infos[path]
	sp, err := storepath.Parse(u.p.o.StoreDir, path)
	if err != nil {
		return err
	}
	// A reference that failed dooms this path: do not upload its NAR.
	for _, r := range info.References {
		if st, ok := u.pending[r]; ok && r != path {
			select {
			case <-st.done:
				if st.err != nil {
					return fmt.Errorf("%w: %s", errReference, r)
				}
			default:
			}
		}
	}
	ni, err := u.nar(ctx, path, info)
	if err != nil {
		return err
	}
	for _, r := range info.References {
		st, ok := u.pending[r]
		if !ok || r == path {
			continue
		}
		select {
		case <-st.done:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		if st.err != nil {
			return fmt.Errorf("%w: %s", errReference, r)
		}
	}
	if err := u.p.o.Cache.PutNarinfo(ctx, sp.HashPart, ni.String()); err != nil {
		return err
	}
	u.inFlight.Add(-int64(info.NarSize))
	u.narDone.Add(int64(info.NarSize))
	u.pathsDone.Add(1)
	return nil
}

// nar uploads the NAR of path and returns its narinfo.
func (u *upload) nar(ctx context.Context, path string, info *daemon.PathInfo) (*narinfo.NarInfo, error) {
	ni := &narinfo.NarInfo{
		StorePath:   path,
		Compression: u.p.comp.name,
		NarHash:     info.NarHash,
		NarSize:     info.NarSize,
		References:  make([]string, 0, len(info.References)),
		Sigs:        info.Sigs,
		CA:          info.CA,
	}
	for _, r := range info.References {
		ni.References = append(ni.References, filepath.Base(r))
	}
	if info.Deriver != "" {
		ni.Deriver = filepath.Base(info.Deriver)
	}
	if u.p.comp.name == compression.None {
		// The file is the NAR: its hash is known, and it streams from
		// the store; the cache checks it against the URL.
		ni.FileHash, ni.FileSize = info.NarHash, info.NarSize
		ni.URL = "nar/" + info.NarHash.NixBase32() + u.p.comp.ext
		var sent int64
		body := func() (io.ReadCloser, error) {
			u.inFlight.Add(-sent)
			sent = 0
			r, err := nardump.Open(path, 0)
			if err != nil {
				return nil, err
			}
			return &counting{r: r, c: r, n: &sent, total: &u.inFlight}, nil
		}
		if err := u.p.o.Cache.PutNar(ctx, ni.URL, body, int64(info.NarSize)); err != nil {
			return nil, err
		}
		u.fileBytes.Add(int64(info.NarSize))
		return ni, nil
	}
	buf := &fileBuffer{dir: u.p.o.TempDir}
	defer buf.Close()
	fileHash, narHash, narSize, err := u.compress(path, buf)
	if err != nil {
		return nil, err
	}
	if !narHash.Equal(info.NarHash) || narSize != info.NarSize {
		return nil, fmt.Errorf("dump %s: NAR hash %s, size %d, but the store's database says %s, %d: the path changed or is corrupt (nix-store --verify --check-contents)",
			path, narHash, narSize, info.NarHash, info.NarSize)
	}
	ni.FileHash, ni.FileSize = fileHash, uint64(buf.size)
	ni.URL = "nar/" + fileHash.NixBase32() + u.p.comp.ext
	if err := u.p.o.Cache.PutNar(ctx, ni.URL, func() (io.ReadCloser, error) { return buf.reader(), nil }, buf.size); err != nil {
		return nil, err
	}
	u.fileBytes.Add(buf.size)
	return ni, nil
}

// compress dumps path into w compressed, and returns the hashes of both.
func (u *upload) compress(path string, w io.Writer) (fileHash, narHash nixhash.Hash, narSize uint64, err error) {
	r, err := nardump.Open(path, 0)
	if err != nil {
		return fileHash, narHash, 0, err
	}
	defer r.Close()
	fh, nh := sha256.New(), sha256.New()
	cw, finish, err := u.p.comp.writer(io.MultiWriter(w, fh))
	if err != nil {
		return fileHash, narHash, 0, err
	}
	var n int64
	src := &counting{r: r, n: &n, total: &u.inFlight}
	if _, err := io.Copy(cw, io.TeeReader(src, nh)); err != nil {
		_ = finish()
		return fileHash, narHash, 0, fmt.Errorf("dump and compress %s: %w", path, err)
	}
	if err := finish(); err != nil {
		return fileHash, narHash, 0, fmt.Errorf("compress %s: %w", path, err)
	}
	return nixhash.FromHasher(nixhash.SHA256, fh), nixhash.FromHasher(nixhash.SHA256, nh), uint64(n), nil
}

// report calls Progress.
func (u *upload) report() {
	u.p.o.Progress(Progress{
		Paths: len(u.paths), PathsDone: int(u.pathsDone.Load()),
		Bytes: u.total, BytesDone: min(u.narDone.Load()+max(u.inFlight.Load(), 0), u.total),
		Start: u.start,
	})
}

// counting counts the bytes read through it, in n and in total.
type counting struct {
	r     io.Reader
	c     io.Closer // nil: nothing to close
	n     *int64
	total *atomic.Int64
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	c.total.Add(int64(n))
	return n, err
}

func (c *counting) Close() error {
	if c.c == nil {
		return nil
	}
	return c.c.Close()
}
