// Package fakedaemon is a Nix daemon for the index's tests: the queries of
// localstore.Daemon over an in-memory set of valid paths, whose files the
// tests write into a store directory of their own.
package fakedaemon

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixcache/nixcache/nix/daemon"
	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
)

// ErrDown is what every query returns while Down is set.
var ErrDown = errors.New("fake nix daemon is down")

// Daemon answers from its valid paths.
type Daemon struct {
	StoreDir string
	// Down makes every query fail with ErrDown.
	Down atomic.Bool
	// Calls counts the queries answered, by operation name.
	mu    sync.Mutex
	paths map[string]*daemon.PathInfo
	calls map[string]int
}

// New returns a daemon of an empty store in storeDir, which it creates.
func New(t testing.TB, storeDir string) *Daemon {
	t.Helper()
	if err := os.MkdirAll(storeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &Daemon{StoreDir: storeDir, paths: map[string]*daemon.PathInfo{}, calls: map[string]int{}}
}

// NewPath returns a fresh absolute store path named name.
func (d *Daemon) NewPath(name string) string {
	b := make([]byte, 20)
	rand.Read(b)
	return d.StoreDir + "/" + nixbase32.EncodeToString(b) + "-" + name
}

// Build writes a new store path named name (fill writes its contents at
// the path it is given) and registers it valid, with the NAR hash and size
// of what fill wrote, and refs (absolute). It returns the path's info.
func (d *Daemon) Build(t testing.TB, name string, refs []string, fill func(path string)) *daemon.PathInfo {
	t.Helper()
	p := d.NewPath(name)
	fill(p)
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := nar.DumpPath(cw, p); err != nil {
		t.Fatalf("dump %s: %v", p, err)
	}
	info := &daemon.PathInfo{
		StorePath:        p,
		Deriver:          d.NewPath(name + ".drv"),
		NarHash:          nixhash.FromHasher(nixhash.SHA256, h),
		References:       slices.Sorted(slices.Values(refs)),
		RegistrationTime: time.Unix(1700000000, 0),
		NarSize:          cw.n,
		Ultimate:         true,
	}
	d.Register(info)
	return info
}

// File returns a fill function writing one regular file with contents.
func File(contents string) func(string) {
	return func(p string) {
		if err := os.WriteFile(p, []byte(contents), 0o644); err != nil {
			panic(err)
		}
	}
}

// Register makes info's path valid.
func (d *Daemon) Register(info *daemon.PathInfo) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.paths[info.StorePath] = info
}

// Invalidate makes p invalid and removes it from the store directory.
func (d *Daemon) Invalidate(t testing.TB, p string) {
	t.Helper()
	d.mu.Lock()
	delete(d.paths, p)
	d.mu.Unlock()
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
}

// Calls returns how many times op (a method name) was called.
func (d *Daemon) Calls(op string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[op]
}

func (d *Daemon) call(ctx context.Context, op string) error {
	d.mu.Lock()
	d.calls[op]++
	d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.Down.Load() {
		return ErrDown
	}
	return nil
}

// QueryAllValidPaths implements localstore.Daemon.
func (d *Daemon) QueryAllValidPaths(ctx context.Context) ([]string, error) {
	if err := d.call(ctx, "QueryAllValidPaths"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.paths))
	for p := range d.paths {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// QueryValidPaths implements localstore.Daemon.
func (d *Daemon) QueryValidPaths(ctx context.Context, paths []string) ([]string, error) {
	if err := d.call(ctx, "QueryValidPaths"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, p := range paths {
		if d.paths[p] != nil {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}

// QueryPathFromHashPart implements localstore.Daemon.
func (d *Daemon) QueryPathFromHashPart(ctx context.Context, hashPart string) (string, error) {
	if err := d.call(ctx, "QueryPathFromHashPart"); err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for p := range d.paths {
		if strings.HasPrefix(p, d.StoreDir+"/"+hashPart+"-") {
			return p, nil
		}
	}
	return "", fmt.Errorf("query path from hash part %s: %w", hashPart, daemon.ErrNotFound)
}

// QueryPathInfo implements localstore.Daemon.
func (d *Daemon) QueryPathInfo(ctx context.Context, p string) (*daemon.PathInfo, error) {
	if err := d.call(ctx, "QueryPathInfo"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	info := d.paths[p]
	if info == nil {
		return nil, fmt.Errorf("query path info %s: %w", p, daemon.ErrNotFound)
	}
	c := *info
	c.References = slices.Clone(info.References)
	c.Sigs = slices.Clone(info.Sigs)
	return &c, nil
}

type countWriter struct {
	w interface{ Write([]byte) (int, error) }
	n uint64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}
