package upstream

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	"github.com/nixcache/nixcache/nix/storepath"
	"github.com/nixcache/nixcache/services/index/internal/catalog"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
	"github.com/nixcache/nixcache/services/index/internal/publish"
)

const storeDir = "/nix/store"

// fakeUpstream is a static binary cache over httptest that counts the
// requests for each URL path and can hold them.
type fakeUpstream struct {
	srv *httptest.Server

	mu    sync.Mutex
	files map[string][]byte
	hits  map[string]int
	hold  map[string]chan struct{} // a request waits until it is closed
}

func newFakeUpstream(t *testing.T) *fakeUpstream {
	u := &fakeUpstream{files: map[string][]byte{}, hits: map[string]int{}, hold: map[string]chan struct{}{}}
	u.srv = httptest.NewServer(u)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *fakeUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.hits[r.URL.Path]++
	body, ok := u.files[r.URL.Path]
	hold := u.hold[r.URL.Path]
	u.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Write(body)
}

func (u *fakeUpstream) count(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[path]
}

func (u *fakeUpstream) set(path string, body []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.files[path] = body
}

// holdPath makes requests for path wait until the returned function is
// called (at the latest when the test ends).
func (u *fakeUpstream) holdPath(t *testing.T, path string) (release func()) {
	ch := make(chan struct{})
	u.mu.Lock()
	u.hold[path] = ch
	u.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return release
}

// upPath is a store path the fake upstream serves.
type upPath struct {
	sp      storepath.Path
	ni      *narinfo.NarInfo
	nar     []byte
	narPath string // URL path of the NAR file
}

func (p upPath) abs() string         { return p.sp.Absolute(storeDir) }
func (p upPath) narinfoPath() string { return "/" + p.sp.HashPart + ".narinfo" }

// newPath makes a store path name with a random hash part.
func newPath(t *testing.T, name string) storepath.Path {
	b := make([]byte, 20)
	rand.Read(b)
	sp, err := storepath.ParseBase(nixbase32.EncodeToString(b) + "-" + name)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// add serves sp on u: a NAR made from seed, compressed with comp, its
// narinfo referring to refs and signed by keys.
func (u *fakeUpstream) add(t *testing.T, sp storepath.Path, seed uint64, comp string, refs []storepath.Path, keys ...signature.SecretKey) upPath {
	t.Helper()
	nar := nartest.Small(t, seed)
	file := nar
	if comp != compression.None {
		file = nartest.Compress(t, comp, nar)
	}
	ext, _ := compression.Extension(comp)
	fileHash := nartest.Hash(file)
	ni := &narinfo.NarInfo{
		StorePath:   sp.Absolute(storeDir),
		URL:         "nar/" + fileHash.NixBase32() + ".nar" + ext,
		Compression: comp,
		FileHash:    fileHash,
		FileSize:    uint64(len(file)),
		NarHash:     nartest.Hash(nar),
		NarSize:     uint64(len(nar)),
		References:  []string{},
	}
	for _, r := range refs {
		ni.References = append(ni.References, r.Base())
	}
	slices.Sort(ni.References)
	sign(t, ni, keys...)
	p := upPath{sp: sp, ni: ni, nar: nar, narPath: "/" + ni.URL}
	u.set(p.narinfoPath(), []byte(ni.String()))
	u.set(p.narPath, file)
	return p
}

// sign replaces the signatures of ni by those of keys.
func sign(t *testing.T, ni *narinfo.NarInfo, keys ...signature.SecretKey) {
	t.Helper()
	fp, err := ni.Fingerprint(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	ni.Sigs = nil
	for _, k := range keys {
		ni.Sigs = append(ni.Sigs, k.Sign(fp))
	}
}

// testSigner signs with one key, as the signer service would.
type testSigner struct{ key signature.SecretKey }

func (s testSigner) Sign(_ context.Context, fps []string) ([][]string, error) {
	out := make([][]string, len(fps))
	for i, fp := range fps {
		out[i] = []string{s.key.Sign(fp)}
	}
	return out, nil
}

func (s testSigner) PublicKeys(context.Context) ([]signature.PublicKey, error) {
	return []signature.PublicKey{s.key.Public()}, nil
}

// env is a puller over a fresh catalogue and NAR store.
type env struct {
	p        *Puller
	cat      *catalog.Catalog
	dir      string
	cacheKey signature.SecretKey // the cache's own key
	upKey    signature.SecretKey // trusted upstream key
	evilKey  signature.SecretKey // a key nobody trusts
}

func genKey(t *testing.T, name string) signature.SecretKey {
	k, err := signature.Generate(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newEnv(t *testing.T, urls []string, mod func(*Config)) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), cacheKey: genKey(t, "cache-1"), upKey: genKey(t, "upstream-1"), evilKey: genKey(t, "evil-1")}
	var err error
	e.cat, err = catalog.Open(filepath.Join(e.dir, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	nars, err := narstore.Open(e.dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		URLs:         urls,
		Keys:         []signature.PublicKey{e.upKey.Public()},
		StoreDir:     storeDir,
		Timeout:      2 * time.Second,
		NegativeTTL:  time.Minute,
		FetchTimeout: time.Minute,
		Log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer:   prometheus.NewRegistry(),
	}
	if mod != nil {
		mod(&cfg)
	}
	// As the index's app wires it: the upstreams' keys are trusted.
	pub := publish.New(e.cat, testSigner{e.cacheKey}, storeDir, 2*time.Second).WithTrustedKeys(cfg.Keys, cfg.Log)
	e.p, err = New(cfg, e.cat, nars, pub)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.p.Close()
		e.cat.Close()
	})
	return e
}

// narFiles lists the NAR files stored.
func (e *env) narFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(e.dir, "nars"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func (e *env) lookups(result string) float64 {
	return testutil.ToFloat64(e.p.metrics.lookups.WithLabelValues(result))
}

func wantNotFound(t *testing.T, err error, contains string) {
	t.Helper()
	if !errors.Is(err, fault.ErrNotFound) {
		t.Fatalf("err = %v, want a NotFound error", err)
	}
	if !strings.Contains(err.Error(), contains) {
		t.Errorf("err = %q, want it to say %q", err, contains)
	}
}

// TestFetchClosure fetches a path whose closure (a chain with a
// self-reference, in three compressions) exists only upstream: each path
// is published with the cache's signature beside the upstream's, with
// the NAR the narinfo describes.
func TestFetchClosure(t *testing.T) {
	up := newFakeUpstream(t)
	e := newEnv(t, []string{up.srv.URL}, nil)
	top, mid, leaf := newPath(t, "top"), newPath(t, "mid"), newPath(t, "leaf")
	leafP := up.add(t, leaf, 1, compression.None, nil, e.upKey)
	midP := up.add(t, mid, 2, compression.Zstd, []storepath.Path{leaf}, e.evilKey, e.upKey)
	topP := up.add(t, top, 3, compression.XZ, []storepath.Path{mid, top, leaf}, e.upKey)

	info, err := e.p.PathInfo(context.Background(), top.HashPart)
	if err != nil {
		t.Fatal(err)
	}
	if info.GetStorePath() != topP.abs() {
		t.Errorf("store path %s, want %s", info.GetStorePath(), topP.abs())
	}
	for _, p := range []upPath{leafP, midP, topP} {
		got, err := e.cat.PathInfo(p.sp.HashPart)
		if err != nil {
			t.Fatalf("%s not published: %v", p.abs(), err)
		}
		if got.GetNarHash() != p.ni.NarHash.String() || got.GetNarSize() != p.ni.NarSize {
			t.Errorf("%s: published %s/%d, want %s/%d", p.abs(), got.GetNarHash(), got.GetNarSize(), p.ni.NarHash, p.ni.NarSize)
		}
		fp, _ := p.ni.Fingerprint(storeDir)
		var ours, theirs, evil bool
		for _, s := range got.GetSignatures() {
			ours = ours || e.cacheKey.Public().Verify(fp, s)
			theirs = theirs || e.upKey.Public().Verify(fp, s)
			evil = evil || strings.HasPrefix(s, "evil-1:")
		}
		if !ours || !theirs || evil {
			t.Errorf("%s: signatures %q: want the cache's and the upstream's, and no untrusted one", p.abs(), got.GetSignatures())
		}
		if !slices.Equal(got.GetReferences(), p.ni.References) {
			t.Errorf("%s: references %q, want %q", p.abs(), got.GetReferences(), p.ni.References)
		}
		if up.count(p.narPath) != 1 || up.count(p.narinfoPath()) != 1 {
			t.Errorf("%s: narinfo fetched %d times, NAR %d times; want 1 and 1", p.abs(), up.count(p.narinfoPath()), up.count(p.narPath))
		}
		// The stored NAR is the upstream's.
		rg, err := e.p.nars.Open(context.Background(), got.GetFile(), true, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		nar, err := io.ReadAll(rg)
		rg.Close()
		if err != nil || string(nar) != string(p.nar) {
			t.Errorf("%s: stored NAR differs from the upstream's (err %v)", p.abs(), err)
		}
	}
	if got := e.lookups(resultFetched); got != 1 {
		t.Errorf("lookups{fetched} = %v, want 1", got)
	}
}

// TestFetchSkipsPresentReferences fetches only the part of a closure the
// index lacks.
func TestFetchSkipsPresentReferences(t *testing.T) {
	up := newFakeUpstream(t)
	e := newEnv(t, []string{up.srv.URL}, nil)
	leaf, top := newPath(t, "leaf"), newPath(t, "top")
	leafP := up.add(t, leaf, 1, compression.XZ, nil, e.upKey)
	up.add(t, top, 2, compression.XZ, []storepath.Path{leaf}, e.upKey)
	if _, err := e.p.PathInfo(context.Background(), leaf.HashPart); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.PathInfo(context.Background(), top.HashPart); err != nil {
		t.Fatal(err)
	}
	if n := up.count(leafP.narinfoPath()); n != 1 {
		t.Errorf("the narinfo of a reference already in the cache was fetched %d times, want 1", n)
	}
}

// TestRefused: a path without a valid signature by a trusted key, or
// whose NAR is not the one its signed narinfo describes, is not stored.
func TestRefused(t *testing.T) {
	tests := []struct {
		name string
		// make serves the path asked for on up; the answer must say what.
		make func(t *testing.T, e *env, up *fakeUpstream) (upPath, string)
		// narFetched says whether the NAR is downloaded before refusing.
		narFetched bool
	}{
		{name: "untrusted key", make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			return up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.evilKey), "no valid signature by a trusted key"
		}},
		{name: "unsigned", make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			return up.add(t, newPath(t, "p"), 1, compression.XZ, nil), "is not signed"
		}},
		{name: "tampered narinfo", make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
			p.ni.NarSize++ // the signature no longer matches
			up.set(p.narinfoPath(), []byte(p.ni.String()))
			return p, "no valid signature by a trusted key"
		}},
		{name: "another path's narinfo", make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
			other := up.add(t, newPath(t, "other"), 2, compression.XZ, nil, e.upKey)
			up.set(p.narinfoPath(), []byte(other.ni.String()))
			return p, "the narinfo describes " + other.abs()
		}},
		{name: "NAR swapped with its FileHash", narFetched: true, make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			// A man in the middle serves another NAR and rewrites the
			// unsigned FileHash and FileSize to match: NarHash catches it.
			p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
			other := nartest.Compress(t, compression.XZ, nartest.Small(t, 99))
			fh := nartest.Hash(other)
			p.ni.FileHash, p.ni.FileSize = fh, uint64(len(other))
			p.ni.URL = "nar/" + fh.NixBase32() + ".nar.xz"
			p.narPath = "/" + p.ni.URL
			up.set(p.narinfoPath(), []byte(p.ni.String()))
			up.set(p.narPath, other)
			return p, "the signed narinfo says " + p.ni.NarHash.String()
		}},
		{name: "NAR corrupted", narFetched: true, make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
			up.set(p.narPath, nartest.Compress(t, compression.XZ, nartest.Small(t, 98)))
			return p, "file hash mismatch"
		}},
		{name: "FileSize wrong", narFetched: true, make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
			p.ni.FileHash = nixhash.Hash{} // unsigned fields: only the size is left to check
			p.ni.FileSize++
			up.set(p.narinfoPath(), []byte(p.ni.String()))
			return p, "the narinfo says"
		}},
		{name: "NAR missing", narFetched: true, make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
			up.mu.Lock()
			delete(up.files, p.narPath)
			up.mu.Unlock()
			return p, "is missing upstream"
		}},
		{name: "reference refused", make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			ref := up.add(t, newPath(t, "ref"), 1, compression.XZ, nil, e.evilKey)
			return up.add(t, newPath(t, "p"), 2, compression.XZ, []storepath.Path{ref.sp}, e.upKey), "reference " + ref.abs()
		}},
		{name: "reference cycle", make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			a, b := newPath(t, "a"), newPath(t, "b")
			up.add(t, b, 1, compression.XZ, []storepath.Path{a}, e.upKey)
			return up.add(t, a, 2, compression.XZ, []storepath.Path{b}, e.upKey), "reference cycle"
		}},
		{name: "NAR URL outside the upstream", make: func(t *testing.T, e *env, up *fakeUpstream) (upPath, string) {
			p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
			p.ni.URL = "http://elsewhere.invalid/x.nar.xz"
			up.set(p.narinfoPath(), []byte(p.ni.String()))
			return p, "want a path relative to the upstream"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newFakeUpstream(t)
			e := newEnv(t, []string{up.srv.URL}, nil)
			p, msg := tt.make(t, e, up)
			_, err := e.p.PathInfo(context.Background(), p.sp.HashPart)
			wantNotFound(t, err, msg)
			if _, err := e.cat.PathInfo(p.sp.HashPart); !errors.Is(err, fault.ErrNotFound) {
				t.Errorf("the refused path is in the catalogue (err %v)", err)
			}
			if files := e.narFiles(t); len(files) != 0 {
				t.Errorf("NAR files stored: %v", files)
			}
			if n := up.count(p.narPath); (n > 0) != tt.narFetched {
				t.Errorf("the NAR was fetched %d times; want fetched: %v", n, tt.narFetched)
			}
			if got := e.lookups(resultRefused); got != 1 {
				t.Errorf("lookups{refused} = %v, want 1", got)
			}
			// Refusals are remembered like misses, with their reason.
			hits := up.count(p.narinfoPath())
			_, err = e.p.PathInfo(context.Background(), p.sp.HashPart)
			wantNotFound(t, err, "remembered")
			wantNotFound(t, err, msg)
			if up.count(p.narinfoPath()) != hits {
				t.Error("a refused path was asked for again within the negative TTL")
			}
		})
	}
}

// TestMissNegativeCache: a path no upstream has is answered absent
// without asking again for the negative TTL, and asked again after it.
func TestMissNegativeCache(t *testing.T) {
	up1, up2 := newFakeUpstream(t), newFakeUpstream(t)
	e := newEnv(t, []string{up1.srv.URL, up2.srv.URL + "/"}, func(c *Config) { c.NegativeTTL = 30 * time.Second })
	now := time.Now()
	e.p.now = func() time.Time { return now }
	sp := newPath(t, "absent")
	path := "/" + sp.HashPart + ".narinfo"

	_, err := e.p.PathInfo(context.Background(), sp.HashPart)
	wantNotFound(t, err, "no upstream has it")
	if up1.count(path) != 1 || up2.count(path) != 1 {
		t.Fatalf("narinfo asked %d and %d times, want once of each upstream", up1.count(path), up2.count(path))
	}
	now = now.Add(29 * time.Second)
	_, err = e.p.PathInfo(context.Background(), sp.HashPart)
	wantNotFound(t, err, "remembered")
	if up1.count(path) != 1 {
		t.Errorf("asked again within the negative TTL")
	}
	// The second upstream now has it: found after the TTL.
	up2.add(t, sp, 1, compression.XZ, nil, e.upKey)
	now = now.Add(2 * time.Second)
	if _, err := e.p.PathInfo(context.Background(), sp.HashPart); err != nil {
		t.Fatalf("after the negative TTL: %v", err)
	}
	if e.lookups(resultMiss) != 1 || e.lookups(resultNegativeCached) != 1 || e.lookups(resultFetched) != 1 {
		t.Errorf("lookups miss/negative_cached/fetched = %v/%v/%v, want 1/1/1",
			e.lookups(resultMiss), e.lookups(resultNegativeCached), e.lookups(resultFetched))
	}
}

// TestUpstreamDown: with its upstream refusing connections or not
// answering, a miss is a quick NotFound, the upstream is then skipped
// for the negative TTL, and a later upstream still serves.
func TestUpstreamDown(t *testing.T) {
	closed := refusingURL(t)
	hung := newFakeUpstream(t)
	good := newFakeUpstream(t)
	const timeout = 300 * time.Millisecond
	e := newEnv(t, []string{closed, hung.srv.URL, good.srv.URL}, func(c *Config) { c.Timeout = timeout })
	now := time.Now()
	e.p.now = func() time.Time { return now }

	a := newPath(t, "a")
	hung.holdPath(t, "/"+a.HashPart+".narinfo")
	start := time.Now()
	_, err := e.p.PathInfo(context.Background(), a.HashPart)
	wantNotFound(t, err, "not every one could be asked")
	if took := time.Since(start); took > timeout+time.Second {
		t.Errorf("a miss with one upstream down and one hung took %s, want about -upstream-timeout %s", took, timeout)
	}
	if !strings.Contains(err.Error(), "no answer within -upstream-timeout") {
		t.Errorf("err = %q, want it to say the upstream did not answer in time", err)
	}
	if got := e.lookups(resultUnreachable); got != 1 {
		t.Errorf("lookups{unreachable} = %v, want 1", got)
	}

	// Both are skipped now: another path is served by the good upstream
	// without waiting, and the hung one is not asked.
	b := newPath(t, "b")
	good.add(t, b, 1, compression.XZ, nil, e.upKey)
	start = time.Now()
	if _, err := e.p.PathInfo(context.Background(), b.HashPart); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > timeout {
		t.Errorf("with the bad upstreams skipped, a lookup took %s", took)
	}
	if n := hung.count("/" + b.HashPart + ".narinfo"); n != 0 {
		t.Errorf("the hung upstream was asked %d times while skipped", n)
	}
	// An unreachable answer is not remembered for the path: once the
	// upstreams are asked again, a is found.
	now = now.Add(2 * time.Minute)
	good.add(t, a, 2, compression.XZ, nil, e.upKey)
	if _, err := e.p.PathInfo(context.Background(), a.HashPart); err != nil {
		t.Fatalf("after the skip: %v", err)
	}
}

// TestStalledNAR: an upstream that stops sending a NAR midway is given
// up on after the timeout; nothing is stored.
func TestStalledNAR(t *testing.T) {
	const timeout = 300 * time.Millisecond
	var mu sync.Mutex
	files := map[string][]byte{}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		body, ok := files[r.URL.Path]
		mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		if strings.HasSuffix(r.URL.Path, ".narinfo") {
			w.Write(body)
			return
		}
		w.Header().Set("Content-Length", "100000")
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	up := newFakeUpstream(t) // only used to build the path
	e := newEnv(t, []string{srv.URL}, func(c *Config) { c.Timeout = timeout })
	p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
	mu.Lock()
	files[p.narinfoPath()] = up.files[p.narinfoPath()]
	files[p.narPath] = up.files[p.narPath]
	mu.Unlock()

	start := time.Now()
	_, err := e.p.PathInfo(context.Background(), p.sp.HashPart)
	wantNotFound(t, err, "sent nothing for too long")
	if took := time.Since(start); took > timeout+2*time.Second {
		t.Errorf("a stalled NAR took %s to give up on, want about %s", took, timeout)
	}
	if files := e.narFiles(t); len(files) != 0 {
		t.Errorf("NAR files stored: %v", files)
	}
}

// TestConcurrentLookupsFetchOnce: callers asking for the same missing
// path at once share one fetch: one narinfo and one NAR request.
func TestConcurrentLookupsFetchOnce(t *testing.T) {
	up := newFakeUpstream(t)
	e := newEnv(t, []string{up.srv.URL}, nil)
	p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
	release := up.holdPath(t, p.narinfoPath())

	const callers = 10
	errs := make(chan error, callers)
	for range callers {
		go func() {
			_, err := e.p.PathInfo(context.Background(), p.sp.HashPart)
			errs <- err
		}()
	}
	// Every caller is waiting on a fetch before the upstream answers.
	deadline := time.Now().Add(10 * time.Second)
	for e.p.waiting.Load() < callers {
		if time.Now().After(deadline) {
			t.Fatalf("%d callers waiting after 10s, want %d", e.p.waiting.Load(), callers)
		}
		time.Sleep(time.Millisecond)
	}
	release()
	for range callers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n, m := up.count(p.narinfoPath()), up.count(p.narPath); n != 1 || m != 1 {
		t.Errorf("%d callers made %d narinfo and %d NAR requests, want 1 and 1", callers, n, m)
	}
}

// TestCallerDeadline: a fetch longer than the caller's deadline answers
// Unavailable before that deadline and goes on, so a retry finds it.
func TestCallerDeadline(t *testing.T) {
	up := newFakeUpstream(t)
	e := newEnv(t, []string{up.srv.URL}, nil)
	p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
	release := up.holdPath(t, p.narPath)

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err := e.p.PathInfo(ctx, p.sp.HashPart)
	if !errors.Is(err, fault.ErrUnavailable) || ctx.Err() != nil {
		t.Fatalf("err = %v (caller's context: %v), want Unavailable before the caller's deadline", err, ctx.Err())
	}
	if got := e.lookups(resultPending); got != 1 {
		t.Errorf("lookups{pending} = %v, want 1", got)
	}
	release()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.cat.PathInfo(p.sp.HashPart); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fetch did not finish after its caller left")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := up.count(p.narPath); n != 1 {
		t.Errorf("NAR fetched %d times, want 1", n)
	}
}

// TestCloseEndsFetches: Close cancels a fetch in progress and waits for it.
func TestCloseEndsFetches(t *testing.T) {
	up := newFakeUpstream(t)
	e := newEnv(t, []string{up.srv.URL}, nil)
	p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
	up.holdPath(t, p.narPath)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := e.p.PathInfo(ctx, p.sp.HashPart); done <- err }()
	deadline := time.Now().Add(10 * time.Second)
	for up.count(p.narPath) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the NAR was not requested")
		}
		time.Sleep(time.Millisecond)
	}
	closed := make(chan struct{})
	go func() { e.p.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with a fetch in progress")
	}
	if err := <-done; !errors.Is(err, fault.ErrUnavailable) {
		t.Errorf("err = %v, want Unavailable (shutting down)", err)
	}
	cancel()
	if _, err := e.p.PathInfo(context.Background(), newPath(t, "q").HashPart); !errors.Is(err, fault.ErrUnavailable) {
		t.Errorf("after Close: err = %v, want Unavailable", err)
	}
}

func TestConfigValidate(t *testing.T) {
	key := genKey(t, "k").Public()
	good := Config{URLs: []string{"https://cache.nixos.org"}, Keys: []signature.PublicKey{key}, StoreDir: storeDir,
		Timeout: time.Second, FetchTimeout: time.Minute, Log: slog.Default()}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no key", func(c *Config) { c.Keys = nil }, "needs at least one -upstream-key"},
		{"file URL", func(c *Config) { c.URLs = []string{"file:///srv/cache"} }, "want an http:// or https:// URL"},
		{"query", func(c *Config) { c.URLs = []string{"https://c.example?priority=1"} }, "want no query"},
		{"no timeout", func(c *Config) { c.Timeout = 0 }, "-upstream-timeout must be > 0"},
		{"negative ttl", func(c *Config) { c.NegativeTTL = -1 }, "-upstream-negative-ttl must be >= 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mod(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestResolveNar(t *testing.T) {
	base, _ := parseBase("http://up.example/cache")
	for ref, want := range map[string]string{
		"nar/abc.nar.xz":       "http://up.example/cache/nar/abc.nar.xz",
		"nar/abc.nar?hash=xyz": "http://up.example/cache/nar/abc.nar?hash=xyz",
		"../other/abc.nar":     "",
		"/nar/abc.nar":         "",
		"https://x/abc.nar":    "",
		"//x/abc.nar":          "",
	} {
		got, err := resolveNar(base, ref)
		if want == "" {
			if err == nil {
				t.Errorf("%q resolved to %q, want refused", ref, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", ref, got, err, want)
		}
	}
}

// TestFailedFetchPublishesVerified: when a path of a closure is refused,
// the paths whose NARs were verified and whose references are published
// are published all the same; the refused one and those above it are not.
func TestFailedFetchPublishesVerified(t *testing.T) {
	up := newFakeUpstream(t)
	e := newEnv(t, []string{up.srv.URL}, nil)
	leaf, top := newPath(t, "leaf"), newPath(t, "top")
	leafP := up.add(t, leaf, 1, compression.XZ, nil, e.upKey)
	topP := up.add(t, top, 2, compression.XZ, []storepath.Path{leaf}, e.upKey)
	up.set(topP.narPath, nartest.Compress(t, compression.XZ, nartest.Small(t, 97)))
	// The top's NAR fails only once the leaf's is stored.
	release := up.holdPath(t, topP.narPath)
	done := make(chan error, 1)
	go func() { _, err := e.p.PathInfo(context.Background(), top.HashPart); done <- err }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := e.cat.NarFile(leafP.ni.FileHash.NixBase32()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the leaf's NAR was not stored")
		}
		time.Sleep(time.Millisecond)
	}
	release()
	wantNotFound(t, <-done, "file hash mismatch")
	if _, err := e.cat.PathInfo(leaf.HashPart); err != nil {
		t.Errorf("the verified leaf is not published: %v", err)
	}
	if _, err := e.cat.PathInfo(top.HashPart); !errors.Is(err, fault.ErrNotFound) {
		t.Errorf("the refused top is published (err %v)", err)
	}
}

// TestFetchTimeout: a fetch that outlasts -upstream-fetch-timeout ends
// with a NotFound saying so, and is tried again on the next request.
func TestFetchTimeout(t *testing.T) {
	up := newFakeUpstream(t)
	e := newEnv(t, []string{up.srv.URL}, func(c *Config) { c.FetchTimeout = 300 * time.Millisecond })
	p := up.add(t, newPath(t, "p"), 1, compression.XZ, nil, e.upKey)
	release := up.holdPath(t, p.narPath)
	_, err := e.p.PathInfo(context.Background(), p.sp.HashPart)
	wantNotFound(t, err, "longer than -upstream-fetch-timeout")
	release()
	if _, err := e.p.PathInfo(context.Background(), p.sp.HashPart); err != nil {
		t.Fatalf("the next request: %v", err)
	}
}

// refusingURL returns the URL of a loopback port that refuses
// connections until the test ends: a socket bound to it that does not
// listen keeps any other server from taking the port.
func refusingURL(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// TestNegativeCacheBounded: a full negative cache drops expired entries
// first, then others, and never grows past its bound.
func TestNegativeCacheBounded(t *testing.T) {
	c := newNegativeCache(3)
	now := time.Now()
	c.put("old", negativeEntry{until: now.Add(time.Second)}, now)
	c.put("a", negativeEntry{until: now.Add(time.Hour)}, now)
	c.put("b", negativeEntry{until: now.Add(time.Hour)}, now)
	later := now.Add(time.Minute)
	c.put("c", negativeEntry{until: later.Add(time.Hour), reason: "why"}, later)
	if _, ok := c.get("old", now); ok {
		t.Error("the expired entry was kept over live ones")
	}
	if e, ok := c.get("c", later); !ok || e.reason != "why" {
		t.Errorf("the new entry: %+v, %v", e, ok)
	}
	for _, h := range []string{"d", "e", "f", "g"} {
		c.put(h, negativeEntry{until: later.Add(time.Hour)}, later)
		if len(c.entries) > 3 {
			t.Fatalf("%d entries, bound 3", len(c.entries))
		}
	}
	if _, ok := c.get("c", later.Add(2*time.Hour)); ok {
		t.Error("an entry is returned after it expired")
	}
}
