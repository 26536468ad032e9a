package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// The tests in this file race what deletes paths (garbage collection,
// DeletePath, the host deleting a path of its store) against pushes, and
// check the one promise a binary cache makes: a path it serves
// substitutes with its whole closure.

// buildShared builds testdata/shared.nix: n small paths that all refer to
// one dependency of depBytes random bytes.
func buildShared(t *testing.T, n, depBytes int) (shared string, small []string) {
	t.Helper()
	seed := strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name())) + "-" + randomHex(t, 4)
	small = strings.Fields(mustNix(t, nixConfig(), "nix-build", "testdata/shared.nix", "--argstr", "seed", seed,
		"--arg", "n", fmt.Sprint(n), "--arg", "depBytes", fmt.Sprint(depBytes), "--no-out-link"))
	if len(small) != n {
		t.Fatalf("built %d paths, want %d", len(small), n)
	}
	refs := strings.Fields(mustNix(t, nixConfig(), "nix-store", "--query", "--references", small[0]))
	if len(refs) != 1 {
		t.Fatalf("references of %s: %v, want the shared one", small[0], refs)
	}
	return refs[0], small
}

// adminClient is the index's AdminService with the operator's token.
func (c *cluster) adminClient(t *testing.T) (indexv1.AdminServiceClient, func(context.Context) context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(c.indexAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	authed := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.adminToken)
	}
	return indexv1.NewAdminServiceClient(conn), authed
}

// publishedPaths lists the pushed paths the index serves (not quarantined).
func publishedPaths(t *testing.T, admin indexv1.AdminServiceClient, authed func(context.Context) context.Context) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(authed(context.Background()), 30*time.Second)
	defer cancel()
	var out []string
	token := ""
	for {
		resp, err := admin.ListPaths(ctx, &indexv1.ListPathsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatalf("ListPaths: %v", err)
		}
		for _, p := range resp.GetPaths() {
			if p.GetSource() == indexv1.Source_SOURCE_PUSHED && !p.GetQuarantined() {
				out = append(out, p.GetStorePath())
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out
		}
	}
}

// brokenClosures asks the gateway, as Nix would, for the narinfo of every
// path given and of each of its references, and returns the paths served
// whose references are not.
func brokenClosures(t *testing.T, c *cluster, paths []string) []string {
	t.Helper()
	var broken []string
	for _, p := range paths {
		ni := httpDo(t, "GET", c.URL+"/"+hashPart(p)+".narinfo", "", nil, nil)
		if ni.status != http.StatusOK {
			t.Errorf("%s is listed as published, but its narinfo is %d", p, ni.status)
			continue
		}
		for _, line := range strings.Split(ni.body, "\n") {
			refs, ok := strings.CutPrefix(line, "References:")
			if !ok {
				continue
			}
			for _, ref := range strings.Fields(refs) {
				if st := httpStatus(t, "GET", c.URL+"/"+ref[:32]+".narinfo", "", nil); st != http.StatusOK {
					broken = append(broken, fmt.Sprintf("%s refers to %s, whose narinfo is %d", p, ref, st))
				}
			}
		}
	}
	return broken
}

// raceDeletesWithPushes runs rounds of four concurrent nix copy pushers,
// each pushing its share of the small paths (and the shared dependency
// when the cache lacks it), while deleter runs in a loop. After each
// round, with the deleter stopped, no served path may lack a reference
// and every path served must substitute, with the real Nix, into a fresh
// store. It returns how many pushes failed and how many succeeded.
func raceDeletesWithPushes(t *testing.T, c *cluster, rounds int, every time.Duration, small []string, deleter func(ctx context.Context) error) (failed, succeeded int) {
	t.Helper()
	push := nixConfig("netrc-file = " + c.netrc(c.pushToken))
	trusting := nixConfig("trusted-public-keys = " + c.publicKey)
	admin, authed := c.adminClient(t)
	const pushers = 4
	var deletes atomic.Int64
	for round := range rounds {
		ctx, stop := context.WithCancel(context.Background())
		var deleterDone sync.WaitGroup
		deleterDone.Go(func() {
			// At irregular intervals up to every: some pushes get their
			// paths published between two runs, others are cut.
			for {
				if err := deleter(ctx); err != nil && ctx.Err() == nil {
					t.Errorf("round %d: delete: %v", round, err)
					return
				}
				deletes.Add(1)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Duration(mathrand.Int64N(int64(every)))):
				}
			}
		})
		var mu sync.Mutex
		var pushed sync.WaitGroup
		for w := range pushers {
			pushed.Go(func() {
				// One path at a time: each push is a new race.
				for i := w; i < len(small); i += pushers {
					_, errOut, err := nixRun(t, push, "nix", "copy", "--to", c.URL+"?compression=none", small[i])
					mu.Lock()
					if err == nil {
						succeeded++
						mu.Unlock()
						continue
					}
					// A push whose reference is deleted before the path is
					// published is refused: that is the cache keeping its
					// promise, and the pusher's to retry.
					failed++
					mu.Unlock()
					// Nix 2.8 reports some refused uploads (a narinfo PUT
					// answered 4xx while it streams) as "coroutine has
					// finished".
					refused := false
					for _, why := range []string{"is not in the cache", "is not valid", "has not been uploaded", "was removed while it was stored", "coroutine has finished"} {
						refused = refused || strings.Contains(errOut, why)
					}
					if !refused {
						t.Logf("round %d, pusher %d: nix copy failed otherwise: %v\n%s", round, w, err, errOut)
					}
				}
			})
		}
		pushed.Wait()
		stop()
		deleterDone.Wait()
		// A call the deleter gave up on may still run in the index: a dry
		// run waits for it (the index runs deletes one at a time).
		barrier, cancel := context.WithTimeout(authed(context.Background()), time.Minute)
		s, err := admin.CollectGarbage(barrier, &indexv1.CollectGarbageRequest{DryRun: true})
		for err == nil {
			_, err = s.Recv()
		}
		cancel()
		if !errors.Is(err, io.EOF) {
			t.Fatalf("round %d: dry-run CollectGarbage: %v", round, err)
		}

		served := publishedPaths(t, admin, authed)
		if broken := brokenClosures(t, c, served); len(broken) > 0 {
			t.Fatalf("round %d: served paths whose closure is broken:\n%s", round, strings.Join(broken, "\n"))
		}
		var tops []string
		for _, p := range served {
			if strings.Contains(p, "-small-") {
				tops = append(tops, p)
			}
		}
		if len(tops) > 0 {
			store := filepath.Join(t.TempDir(), "store")
			if _, errOut, err := nixRun(t, trusting, "nix", append([]string{"copy", "--from", c.URL, "--to", store}, tops...)...); err != nil {
				t.Fatalf("round %d: the %d small paths served do not substitute: %v\n%s", round, len(tops), err, errOut)
			}
		}
		t.Logf("round %d: %d paths served after the round, %d small; %d deleter runs so far", round, len(served), len(tops), deletes.Load())
	}
	return failed, succeeded
}

// TestClosuresGCRacesPushes: garbage collection every few milliseconds,
// with a size limit below the shared dependency's size (so it always
// wants the dependency gone), against concurrent pushes of paths that
// refer to it.
func TestClosuresGCRacesPushes(t *testing.T) {
	c := newCluster(t)
	_, small := buildShared(t, 48, 5_000_000)
	admin, authed := c.adminClient(t)
	gc := func(ctx context.Context) error {
		s, err := admin.CollectGarbage(authed(ctx), &indexv1.CollectGarbageRequest{MaxTotalSize: 4_000_000})
		if err != nil {
			return ignoreCancel(ctx, err)
		}
		for {
			if _, err := s.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return ignoreCancel(ctx, err)
			}
		}
	}
	failed, succeeded := raceDeletesWithPushes(t, c, 8, 50*time.Millisecond, small, gc)
	t.Logf("pushes: %d succeeded, %d refused", succeeded, failed)
	if succeeded == 0 {
		t.Errorf("no push succeeded: the race was not run")
	}
}

// TestClosuresDeletePathRacesPushes: the same with DeletePath of the
// shared dependency and its referrers every few milliseconds.
func TestClosuresDeletePathRacesPushes(t *testing.T) {
	c := newCluster(t)
	shared, small := buildShared(t, 48, 5_000_000)
	admin, authed := c.adminClient(t)
	del := func(ctx context.Context) error {
		_, err := admin.DeletePath(authed(ctx), &indexv1.DeletePathRequest{Path: shared, WithReferrers: true})
		switch status.Code(err) {
		case codes.OK, codes.NotFound, codes.FailedPrecondition:
			// Not there, or a referrer published since the look: refused.
			return nil
		}
		return ignoreCancel(ctx, err)
	}
	failed, succeeded := raceDeletesWithPushes(t, c, 8, 20*time.Millisecond, small, del)
	t.Logf("pushes: %d succeeded, %d refused", succeeded, failed)
	if succeeded == 0 {
		t.Errorf("no push succeeded: the race was not run")
	}
}

func ignoreCancel(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil //nolint:nilerr // the test stopped the call: not a failure of the race
	}
	return err
}

// TestClosuresHostPathDeleted: with -local-store, a pushed path refers to
// a path the cache has only from the host's store; the host deletes that
// path (nix-store --delete), and the pushed closure still substitutes
// into a fresh store: the cache took its own copy at publish.
func TestClosuresHostPathDeleted(t *testing.T) {
	c := newCluster(t, withLocalStore(startNixDaemon(t)))
	top, closure := buildClosure(t)
	var leaf string
	for _, p := range closure {
		if strings.Contains(p, "-leaf-") {
			leaf = p
		}
	}
	host := pathInfos(t, nixConfig(), "--recursive", top)
	// The closure, kept in a store of the test's own; then top and mid
	// leave the host's store, so the cache has only leaf, from the host.
	kept := filepath.Join(t.TempDir(), "kept")
	mustNix(t, nixConfig(), "nix", "copy", "--no-check-sigs", "--to", kept, top)
	var upper []string
	for _, p := range closure {
		if p != leaf {
			upper = append(upper, p)
		}
	}
	mustNix(t, nixConfig(), "nix-store", append([]string{"--delete"}, upper...)...)
	waitStatus(t, c.URL+"/"+hashPart(top)+".narinfo", http.StatusNotFound, 30*time.Second)
	if st := httpStatus(t, "GET", c.URL+"/"+hashPart(leaf)+".narinfo", "", nil); st != http.StatusOK {
		t.Fatalf("leaf, in the host's store: narinfo %d, want 200", st)
	}

	// Pushed from the kept store: nix copy sends mid and top, not leaf,
	// which the cache has (from the host).
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--from", kept, "--to", c.URL+"?compression=zstd", top)

	// The host deletes leaf; the cache notices (its sync), and keeps
	// serving leaf from its own copy.
	mustNix(t, nixConfig(), "nix-store", "--delete", leaf)
	ni := httpDo(t, "GET", c.URL+"/"+hashPart(leaf)+".narinfo", "", nil, nil)
	if ni.status != http.StatusOK || strings.Contains(ni.body, "Compression: none\n") {
		t.Errorf("leaf after the host deleted it: narinfo %d, want 200 with the cache's compressed copy:\n%s", ni.status, ni.body)
	}

	store := filepath.Join(t.TempDir(), "store")
	mustNix(t, nixConfig("trusted-public-keys = "+c.publicKey), "nix", "copy", "--from", c.URL, "--to", store, top)
	copied := pathInfos(t, nixConfig(), "--store", store, "--recursive", top)
	for _, p := range closure {
		if copied[p].NarHash != host[p].NarHash {
			t.Errorf("%s: substituted NarHash %q, built %q", p, copied[p].NarHash, host[p].NarHash)
		}
		assertSameTree(t, filepath.Join(kept, strings.TrimPrefix(p, "/")), filepath.Join(store, strings.TrimPrefix(p, "/")))
	}
}
