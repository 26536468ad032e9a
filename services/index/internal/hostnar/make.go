package hostnar

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/klauspost/compress/zstd"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nardump"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/storepath"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
)

// ioBufSize is the buffer of the copy's reads and writes.
const ioBufSize = 256 << 10

// Run makes the queued copies, one at a time, until ctx ends. It runs on
// a thread of its own at the lowest CPU priority, so that the copies take
// only what serving leaves.
func (s *Store) Run(ctx context.Context) {
	// The thread is never handed back: it ends with this goroutine, and
	// its priority with it.
	runtime.LockOSThread()
	if err := lowerPriority(); err != nil {
		s.cfg.Log.Warn("host NAR copies run at normal priority", "err", err)
	}
	if s.cfg.Ahead {
		// The paths catalogued by an earlier run, not copied yet.
		s.queueUncopied()
	}
	for {
		j, ok := s.next()
		if !ok && s.takeAheadLeft() {
			s.queueUncopied()
			continue
		}
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		if ctx.Err() != nil {
			return
		}
		s.makeCopy(ctx, j)
		s.mu.Lock()
		delete(s.queued, j.hashPart)
		s.mu.Unlock()
	}
}

// queueUncopied queues, ahead of time, the host paths without a copy.
func (s *Store) queueUncopied() {
	hashes, err := s.cat.UncopiedLocal()
	if err != nil {
		s.cfg.Log.Warn("host paths catalogued before are copied only when downloaded", "err", err)
	}
	s.Appeared(hashes)
}

// takeAheadLeft reports, and clears, whether paths to copy ahead of time
// were left out of a full queue.
func (s *Store) takeAheadLeft() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	left := s.aheadLeft
	s.aheadLeft = false
	return left
}

// next takes the first queued job.
func (s *Store) next() (job, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return job{}, false
	}
	j := s.queue[0]
	s.queue[0] = job{}
	s.queue = s.queue[1:]
	return j, true
}

// makeCopy makes, checks and records the copy of one host path, and logs
// what became of it.
func (s *Store) makeCopy(ctx context.Context, j job) {
	log := s.cfg.Log.With("hash_part", j.hashPart)
	made, why, err := s.tryCopy(ctx, j)
	s.mu.Lock()
	switch {
	case err != nil:
		s.stats.Failed++
	case made != nil:
		s.stats.Made++
		s.stats.MadeNarBytes += made.GetNarSize()
	case why != "":
		s.stats.Skipped++
	}
	s.mu.Unlock()
	switch {
	case err != nil && ctx.Err() == nil:
		log.Warn("host NAR copy failed", "err", err)
	case made != nil:
		log.Debug("host NAR copy made", "file_hash", made.GetFileHash(), "file_size", made.GetFileSize(), "nar_size", made.GetNarSize())
	case why != "":
		log.Debug("host NAR not copied", "why", why)
	}
}

// tryCopy makes the copy of j's path: the NarFile recorded, or a reason
// it made none ("" when the path is not a host path to copy), or an error.
func (s *Store) tryCopy(ctx context.Context, j job) (*indexv1.NarFile, string, error) {
	s.mu.Lock()
	have := s.entries[j.hashPart] != nil
	s.mu.Unlock()
	if have {
		return nil, "", nil
	}
	// A pushed path of the same hash part is served from its own file.
	if _, err := s.cat.PathInfo(j.hashPart); err == nil {
		return nil, "", nil
	} else if !errors.Is(err, fault.ErrNotFound) {
		return nil, "", err
	}
	info, _, err := s.cat.LocalPathInfo(j.hashPart)
	if errors.Is(err, fault.ErrNotFound) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	if info.GetFile() != nil {
		return nil, "", nil
	}
	sp, err := storepath.Parse(s.cfg.StoreDir, info.GetStorePath())
	if err != nil {
		return nil, "", err
	}
	tmp, nf, why, err := s.compress(ctx, filepath.Join(s.cfg.StoreDir, sp.Base()), info)
	if err != nil || why != "" {
		return nil, why, err
	}
	defer os.Remove(tmp) // after a successful rename, there is nothing there
	key, err := keyOf(nf)
	if err != nil {
		return nil, "", err
	}

	// Room is made, and the entry reserved, before the file is put in
	// place: the copies on disk never exceed the budget, and a removal of
	// the path from here on finds the entry to forget.
	s.mu.Lock()
	if s.entries[j.hashPart] != nil {
		s.mu.Unlock()
		return nil, "", nil
	}
	h, _ := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	if s.byFile[h.NixBase32()] != nil {
		s.mu.Unlock()
		return nil, "another host path has the same NAR, and its copy", nil
	}
	var victims []*entry
	if s.total+nf.GetFileSize() > s.cfg.MaxBytes {
		if j.ahead {
			s.mu.Unlock()
			return nil, "no room in the budget for a copy made ahead of time", nil
		}
		victims = s.evictFor(nf.GetFileSize())
	}
	e := s.add(j.hashPart, nf, key, true)
	s.mu.Unlock()
	if len(victims) > 0 {
		s.drop(victims)
	}
	undo := func() {
		s.mu.Lock()
		s.remove(e)
		s.mu.Unlock()
	}

	final := filepath.Join(s.cfg.Dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		undo()
		return nil, "", fmt.Errorf("place host NAR copy: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		undo()
		return nil, "", fmt.Errorf("place host NAR copy: %w", err)
	}
	if err := narstore.SyncDir(filepath.Dir(final)); err != nil {
		undo()
		os.Remove(final)
		return nil, "", err
	}
	added, err := s.cat.AddHostNar(j.hashPart, nf)
	if err != nil || !added {
		undo()
		os.Remove(final)
		if err != nil {
			return nil, "", err
		}
		return nil, "the path left the host's store, or changed, while it was copied", nil
	}
	s.mu.Lock()
	e.pending = false
	s.mu.Unlock()
	return nf, "", nil
}

// compress writes the copy (zstd, or the plain NAR) of the NAR of the
// tree at root, which must be info's, to a synced file in tmp/ and checks
// it (see the package comment). It returns the file's name and record, or
// why it made none.
func (s *Store) compress(ctx context.Context, root string, info *indexv1.PathInfo) (string, *indexv1.NarFile, string, error) {
	wantNar, err := nixhash.ParseAs(nixhash.SHA256, info.GetNarHash())
	if err != nil {
		return "", nil, "", fmt.Errorf("NAR hash of %s: %w", info.GetStorePath(), err)
	}
	nr, err := nardump.Open(root, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil, "the path is no longer in the store directory", nil
	}
	if err != nil {
		return "", nil, "", err
	}
	defer nr.Close()
	ext, err := compression.Extension(s.cfg.Compression)
	if err != nil {
		return "", nil, "", err
	}
	f, err := os.CreateTemp(s.tmpDir(), "*.nar"+ext)
	if err != nil {
		return "", nil, "", fmt.Errorf("create host NAR copy: %w", err)
	}
	keep := false
	defer func() {
		f.Close()
		if !keep {
			os.Remove(f.Name())
		}
	}()

	ws, err := s.workspace()
	if err != nil {
		return "", nil, "", err
	}
	fileHash := sha256.New()
	// A copy that would not fit in the budget alone is given up as soon
	// as it grows past it.
	fileCount := &counter{limit: s.cfg.MaxBytes}
	bw := bufio.NewWriterSize(io.MultiWriter(fileCount, f, fileHash), ioBufSize)
	var dst io.Writer = bw // compression none: the NAR as it is
	if ws.enc != nil {
		ws.enc.Reset(bw)
		defer ws.enc.Reset(io.Discard) // drop bw
		dst = ws.enc
	}
	narHash := sha256.New()
	narCount := &counter{}
	src := io.TeeReader(narstore.ContextReader(ctx, nr), io.MultiWriter(narHash, narCount))
	_, err = io.CopyBuffer(dst, src, ws.buf)
	if err == nil && ws.enc != nil {
		err = ws.enc.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if errors.Is(err, errTooLarge) {
		return "", nil, "the copy is larger than the budget", nil
	}
	if err != nil {
		return "", nil, "", fmt.Errorf("compress NAR of %s: %w", info.GetStorePath(), err)
	}
	if narCount.n != info.GetNarSize() || !sameDigest(narHash, wantNar) {
		return "", nil, "the path's files are not the NAR the Nix daemon registered (changed on disk?)", nil
	}
	if err := f.Chmod(fileMode); err != nil {
		return "", nil, "", fmt.Errorf("chmod host NAR copy: %w", err)
	}
	if err := f.Sync(); err != nil {
		return "", nil, "", fmt.Errorf("sync host NAR copy: %w", err)
	}
	written := nixhash.Hash{Algo: nixhash.SHA256, Digest: fileHash.Sum(nil)}
	nf := &indexv1.NarFile{
		FileHash:    written.String(),
		FileSize:    fileCount.n,
		Compression: s.cfg.Compression,
		NarHash:     info.GetNarHash(),
		NarSize:     info.GetNarSize(),
	}
	if err := ws.check(ctx, f, nf, wantNar); err != nil {
		return "", nil, "", fmt.Errorf("host NAR copy of %s: %w", info.GetStorePath(), err)
	}
	keep = true
	return f.Name(), nf, "", nil
}

// workspace is what the worker compresses and checks with, made once:
// an encoder's and a decoder's tables and windows are large next to a
// small NAR, and the index's memory stays flat.
type workspace struct {
	// enc and dec are nil for plain copies (compression none).
	enc *zstd.Encoder
	dec *zstd.Decoder
	buf []byte
}

// workspace returns the worker's workspace, making it on first use.
func (s *Store) workspace() (*workspace, error) {
	if s.ws != nil {
		return s.ws, nil
	}
	if s.cfg.Compression == compression.None {
		s.ws = &workspace{buf: make([]byte, ioBufSize)}
		return s.ws, nil
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(s.level), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	// The window bound is the one every zstd NAR is read with
	// (nix/compression); a copy made here never needs more.
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(128<<20), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	s.ws = &workspace{enc: enc, dec: dec, buf: make([]byte, ioBufSize)}
	return s.ws, nil
}

// check reads the copy f back: its hash and size must be nf's, and its
// content, decompressed (as it is, for a plain copy), must be the NAR of
// hash wantNar and nf's NAR size.
func (ws *workspace) check(ctx context.Context, f *os.File, nf *indexv1.NarFile, wantNar nixhash.Hash) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	fileHash := sha256.New()
	fileCount := &counter{}
	raw := io.TeeReader(narstore.ContextReader(ctx, bufio.NewReaderSize(f, ioBufSize)), io.MultiWriter(fileHash, fileCount))
	content := raw
	if ws.dec != nil {
		if err := ws.dec.Reset(raw); err != nil {
			return fmt.Errorf("read back: %w", err)
		}
		defer ws.dec.Reset(nil) //nolint:errcheck // drop raw; Reset(nil) of an open decoder returns nil
		content = ws.dec
	}
	narHash := sha256.New()
	n, err := io.CopyBuffer(narHash, content, ws.buf)
	if err != nil {
		return fmt.Errorf("read back: decompress: %w", err)
	}
	// The decoder stops at the end of the last frame; the file must end
	// there.
	if _, err := io.CopyBuffer(io.Discard, raw, ws.buf); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	written, _ := nixhash.ParseAs(nixhash.SHA256, nf.GetFileHash())
	switch {
	case fileCount.n != nf.GetFileSize() || !sameDigest(fileHash, written):
		return fmt.Errorf("read back: the file is not what was written (%d bytes, %d written)", fileCount.n, nf.GetFileSize())
	case uint64(n) != nf.GetNarSize() || !sameDigest(narHash, wantNar):
		return fmt.Errorf("read back: the file decompresses to another NAR (%d bytes, want %d)", n, nf.GetNarSize())
	}
	return nil
}

// sameDigest reports whether h's sum is want's digest.
func sameDigest(h hash.Hash, want nixhash.Hash) bool {
	got := nixhash.Hash{Algo: nixhash.SHA256, Digest: h.Sum(nil)}
	return got.Equal(want)
}

// errTooLarge: a copy grew past the budget.
var errTooLarge = errors.New("larger than the budget")

// counter counts the bytes written to it; past limit (unless 0) it fails
// with errTooLarge.
type counter struct{ n, limit uint64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += uint64(len(p))
	if c.limit > 0 && c.n > c.limit {
		return 0, errTooLarge
	}
	return len(p), nil
}
