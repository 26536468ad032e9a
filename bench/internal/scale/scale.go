// Package scale measures the index with a large catalogue of synthetic
// store paths: narinfo lookup latency through the gateway and over gRPC,
// the index's start-up time, and the bytes of bbolt per path, at several
// catalogue sizes.
//
// The first paths go in the way a push does, through PutPathInfo (checked,
// signed by the signer, one bbolt transaction each), which also measures
// how fast that is. The rest are bulk-loaded straight into the stopped
// index's catalog.db, in the layout of services/index/internal/catalog
// (bucket "paths": hash part -> indexv1.PathInfo; bucket "nars": file hash
// -> indexv1.NarFile), signed with the cache's key; the loader then checks
// through the restarted index that it reads them back.
package scale

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/bench/internal/load"
	"github.com/nixcache/nixcache/bench/internal/proc"
	"github.com/nixcache/nixcache/bench/internal/servers"
	"github.com/nixcache/nixcache/bench/internal/stats"
	"github.com/nixcache/nixcache/nix/nar"
	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

const storeDir = "/nix/store"

// Options configure Run.
type Options struct {
	Bin string // nixcache binaries
	Dir string // data of the deployment
	// Points are the catalogue sizes measured, ascending.
	Points []int
	// SignedInserts is how many paths go in through PutPathInfo (at most
	// Points[0]); the rest are bulk-loaded.
	SignedInserts int
	// Lookups is the number of random lookups per point and per way.
	Lookups int
	Sampler *proc.Sampler
	Logf    func(format string, args ...any)
}

// Latency summarises lookups.
type Latency struct {
	P50  time.Duration `json:"p50_ns"`
	P99  time.Duration `json:"p99_ns"`
	Mean time.Duration `json:"mean_ns"`
}

func summarise(ds []time.Duration) Latency {
	return Latency{P50: stats.Percentile(ds, 50), P99: stats.Percentile(ds, 99), Mean: stats.Mean(ds)}
}

// Point is what was measured at one catalogue size.
type Point struct {
	Paths   int           `json:"paths"`
	Gateway Latency       `json:"gateway_narinfo"`
	GRPC    Latency       `json:"grpc_get_path_info"`
	Startup time.Duration `json:"index_startup_ns"`
	// Migration is the first start after a bulk load: the index rewrote
	// the bulk-loaded (schema 1) records in its current layout.
	Migration    time.Duration `json:"index_migration_ns,omitempty"`
	DBBytes      int64         `json:"catalog_db_bytes"`
	BytesPerPath float64       `json:"catalog_bytes_per_path"`
	DB           DBStats       `json:"catalog_paths_bucket"`
	IndexMem     proc.Mem      `json:"index_mem_after_lookups"`
}

// DBStats is where the bytes of the paths bucket go.
type DBStats struct {
	Keys       int     `json:"keys"`
	ValueBytes float64 `json:"mean_value_bytes"`     // a marshalled PathInfo
	AllocBytes float64 `json:"alloc_bytes_per_path"` // pages allocated (leaf+branch)
	InuseBytes float64 `json:"inuse_bytes_per_path"` // bytes of those pages in use
	// OtherAllocBytes is the pages of every other bucket (NAR files,
	// referrers, counters, ...), per path.
	OtherAllocBytes float64 `json:"other_alloc_bytes_per_path"`
}

// dbStats reads the paths bucket's statistics from the (closed) database.
func dbStats(path string) (DBStats, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return DBStats{}, fmt.Errorf("catalogue statistics: %w", err)
	}
	defer db.Close()
	var st DBStats
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("paths"))
		if b == nil {
			return fmt.Errorf("no bucket %q", "paths")
		}
		bs := b.Stats()
		var values int
		err := b.ForEach(func(_, v []byte) error {
			values += len(v)
			return nil
		})
		n := float64(max(bs.KeyN, 1))
		st = DBStats{Keys: bs.KeyN, ValueBytes: float64(values) / n,
			AllocBytes: float64(bs.LeafAlloc+bs.BranchAlloc) / n, InuseBytes: float64(bs.LeafInuse+bs.BranchInuse) / n}
		if err != nil {
			return err
		}
		return tx.ForEach(func(name []byte, ob *bolt.Bucket) error {
			if string(name) != "paths" {
				os := ob.Stats()
				st.OtherAllocBytes += float64(os.LeafAlloc+os.BranchAlloc) / n
			}
			return nil
		})
	})
	if err != nil {
		return DBStats{}, fmt.Errorf("catalogue statistics: %w", err)
	}
	return st, nil
}

// Result is the catalogue-scale part of the benchmark.
type Result struct {
	SignedInserts    int           `json:"signed_inserts"`
	SignedInsertTime time.Duration `json:"signed_insert_ns"`
	BulkInserts      int           `json:"bulk_inserts"`
	BulkInsertTime   time.Duration `json:"bulk_insert_ns"`
	Points           []Point       `json:"points"`
}

// SignedPerSecond is the rate of PutPathInfo.
func (r *Result) SignedPerSecond() float64 {
	return float64(r.SignedInserts) / r.SignedInsertTime.Seconds()
}

// Run measures the index at each of o.Points.
func Run(ctx context.Context, o Options) (*Result, error) {
	nc, err := servers.StartNixcache(ctx, servers.NixcacheOptions{Bin: o.Bin, Dir: o.Dir, Name: "nixcache-catalog"})
	if err != nil {
		return nil, err
	}
	defer func() { nc.Stop() }()
	watch := func() {
		for _, p := range nc.Procs() {
			o.Sampler.Watch(p.Name, p.Pid())
		}
	}
	watch()

	cc, err := grpc.NewClient(nc.IndexAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial index: %w", err)
	}
	defer cc.Close()
	idx := indexv1.NewIndexServiceClient(cc)
	// The index checks push tokens itself: every call carries the one the
	// deployment was started with.
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+nc.PushToken)

	narData, err := tinyNar()
	if err != nil {
		return nil, err
	}
	nf, err := putNar(ctx, idx, narData)
	if err != nil {
		return nil, fmt.Errorf("upload the synthetic NAR: %w", err)
	}
	gen := &generator{file: nf}

	res := &Result{}
	have := 0
	signed := min(o.SignedInserts, o.Points[0])
	start := time.Now()
	if err := gen.insertSigned(ctx, idx, signed); err != nil {
		return nil, err
	}
	res.SignedInserts, res.SignedInsertTime = signed, time.Since(start)
	have = signed
	o.Logf("catalogue: %d paths through PutPathInfo in %s (%.0f/s)", signed, res.SignedInsertTime.Round(time.Millisecond), res.SignedPerSecond())

	key, err := signature.LoadSecretKeyFile(nc.SecretKey)
	if err != nil {
		return nil, err
	}
	for _, target := range o.Points {
		var migration time.Duration
		if target > have {
			o.Sampler.Forget(nc.Index.Name)
			nc.StopIndex()
			start := time.Now()
			if err := gen.bulkLoad(filepath.Join(nc.Dir, "index", "catalog.db"), key, have, target); err != nil {
				return nil, err
			}
			res.BulkInserts += target - have
			res.BulkInsertTime += time.Since(start)
			o.Logf("catalogue: bulk-loaded %d paths in %s", target-have, time.Since(start).Round(time.Millisecond))
			have = target
			// The first start migrates what the loader wrote.
			nc.IndexReadyTimeout = 10 * time.Minute
			if err := nc.StartIndex(ctx); err != nil {
				return nil, fmt.Errorf("start the index after the bulk load: %w", err)
			}
			migration = nc.IndexStartup
			o.Logf("catalogue: first start after the bulk load (migration): %s", migration.Round(time.Millisecond))
			nc.StopIndex()
		} else {
			o.Sampler.Forget(nc.Index.Name)
			nc.StopIndex()
		}
		st, err := dbStats(filepath.Join(nc.Dir, "index", "catalog.db"))
		if err != nil {
			return nil, err
		}
		// Every point starts the index anew: its start-up time is measured.
		if err := nc.StartIndex(ctx); err != nil {
			return nil, err
		}
		o.Sampler.Watch(nc.Index.Name, nc.Index.Pid())
		pt, err := measure(ctx, o, nc, idx, gen, have)
		if err != nil {
			return nil, err
		}
		pt.DB = st
		pt.Migration = migration
		o.Logf("catalogue: %d paths: gateway narinfo p50 %s p99 %s; gRPC p50 %s p99 %s; start-up %s; %.0f B/path (file), %.0f allocated, %.0f in use, values %.0f B",
			pt.Paths, pt.Gateway.P50, pt.Gateway.P99, pt.GRPC.P50, pt.GRPC.P99, pt.Startup.Round(time.Millisecond), pt.BytesPerPath, st.AllocBytes, st.InuseBytes, st.ValueBytes)
		res.Points = append(res.Points, pt)
	}
	return res, nil
}

// measure looks up random paths of the first have, through the gateway
// and over gRPC, after checking that a few read back as generated.
func measure(ctx context.Context, o Options, nc *servers.Nixcache, idx indexv1.IndexServiceClient, gen *generator, have int) (Point, error) {
	pt := Point{Paths: have, Startup: nc.IndexStartup}
	rng := rand.New(rand.NewPCG(uint64(have), 7))
	hashes := make([]string, o.Lookups)
	for i := range hashes {
		hashes[i] = gen.hashPart(rng.IntN(have))
	}
	for _, i := range []int{0, have / 2, have - 1} {
		resp, err := idx.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: gen.hashPart(i)})
		if err != nil {
			return pt, fmt.Errorf("read back synthetic path %d: %w", i, err)
		}
		if got, want := resp.GetInfo().GetStorePath(), gen.storePath(i); got != want {
			return pt, fmt.Errorf("read back synthetic path %d: store path %s, want %s", i, got, want)
		}
	}
	// The gateway may still be waiting to reconnect to the restarted
	// index (gRPC's backoff): wait until it answers, within a deadline.
	for deadline := time.Now().Add(30 * time.Second); ; {
		_, err := load.Narinfos(ctx, nc.URL, hashes[:1])
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return pt, fmt.Errorf("the gateway does not serve the restarted index: %w", err)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition, with a deadline
	}
	// The narinfos must parse and name the NAR: the first pass checks them.
	if _, err := load.Narinfos(ctx, nc.URL, hashes[:min(len(hashes), 100)]); err != nil {
		return pt, err
	}
	// Warm up both ways once, then measure.
	if _, err := load.NarinfoPass(ctx, nc.URL, hashes[:min(len(hashes), 1000)]); err != nil {
		return pt, err
	}
	t, err := load.NarinfoPass(ctx, nc.URL, hashes)
	if err != nil {
		return pt, err
	}
	pt.Gateway = summarise(t.Latencies)
	lat := make([]time.Duration, len(hashes))
	for i, h := range hashes {
		start := time.Now()
		if _, err := idx.GetPathInfo(ctx, &indexv1.GetPathInfoRequest{HashPart: h}); err != nil {
			return pt, fmt.Errorf("GetPathInfo %s: %w", h, err)
		}
		lat[i] = time.Since(start)
	}
	pt.GRPC = summarise(lat)
	fi, err := os.Stat(filepath.Join(nc.Dir, "index", "catalog.db"))
	if err != nil {
		return pt, err
	}
	pt.DBBytes = fi.Size()
	pt.BytesPerPath = float64(fi.Size()) / float64(have)
	pt.IndexMem, _ = proc.ReadMem(nc.Index.Pid())
	return pt, nil
}

// tinyNar is the NAR every synthetic path has: one small file. Paths
// with the same contents share a NAR file in a real cache too.
func tinyNar() ([]byte, error) {
	var b strings.Builder
	w := nar.NewWriter(&b)
	contents := "synthetic store path of nixcache's catalogue benchmark\n"
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: uint64(len(contents))}); err != nil {
		return nil, err
	}
	if _, err := w.Write([]byte(contents)); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

func putNar(ctx context.Context, idx indexv1.IndexServiceClient, data []byte) (*indexv1.NarFile, error) {
	stream, err := idx.PutNar(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Header{Header: &indexv1.PutNarHeader{}}}); err != nil {
		return nil, err
	}
	if err := stream.Send(&indexv1.PutNarRequest{Msg: &indexv1.PutNarRequest_Chunk{Chunk: data}}); err != nil {
		return nil, err
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	return resp.GetFile(), nil
}

// generator makes synthetic store paths, the same for the same index:
// realistic names, 0 to 5 references to earlier paths (the spread of the
// workload closure), a deriver.
type generator struct {
	file *indexv1.NarFile
}

func digest(kind string, i int) []byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	h := sha256.Sum256(append([]byte(kind), b[:]...))
	return h[:20]
}

func (g *generator) hashPart(i int) string { return nixbase32.EncodeToString(digest("out", i)) }

var names = []string{"glibc-2.40-66", "python3.12-requests-2.32.3", "gcc-14.2.1.20250322-lib", "openssl-3.4.1",
	"hello-2.12.1", "perl5.40.0-Module-Build-0.4234", "linux-headers-6.12.7", "libxml2-2.13.5-dev", "zlib-1.3.1"}

func (g *generator) name(i int) string { return fmt.Sprintf("%s-b%d", names[i%len(names)], i) }

func (g *generator) storePath(i int) string {
	return storeDir + "/" + g.hashPart(i) + "-" + g.name(i)
}

// info is the PathInfo of path i as an uploader sends it; its references
// are among the paths below refLimit.
func (g *generator) info(i, refLimit int) *indexv1.PathInfo {
	rng := rand.New(rand.NewPCG(uint64(i), 1))
	nrefs := []int{0, 0, 1, 2, 3, 5}[rng.IntN(6)]
	var refs []string
	for k := 0; k < nrefs && refLimit > 0; k++ {
		j := rng.IntN(refLimit)
		refs = append(refs, g.hashPart(j)+"-"+g.name(j))
	}
	return &indexv1.PathInfo{
		StorePath:  g.storePath(i),
		NarHash:    g.file.GetNarHash(),
		NarSize:    g.file.GetNarSize(),
		References: refs,
		Deriver:    nixbase32.EncodeToString(digest("drv", i)) + "-" + g.name(i) + ".drv",
		File: &indexv1.NarFile{
			FileHash:    g.file.GetFileHash(),
			FileSize:    g.file.GetFileSize(),
			Compression: g.file.GetCompression(),
		},
	}
}

// insertSigned publishes paths 0..n-1 through PutPathInfo, four at a time,
// in batches whose references all point into earlier batches.
func (g *generator) insertSigned(ctx context.Context, idx indexv1.IndexServiceClient, n int) error {
	const batch, workers = 512, 4
	for lo := 0; lo < n; lo += batch {
		hi := min(lo+batch, n)
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			first error
		)
		next := lo
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					mu.Lock()
					i := next
					next++
					mu.Unlock()
					if i >= hi {
						return
					}
					_, err := idx.PutPathInfo(ctx, &indexv1.PutPathInfoRequest{Info: g.info(i, lo)})
					if err != nil {
						mu.Lock()
						if first == nil {
							first = fmt.Errorf("PutPathInfo of synthetic path %d: %w", i, err)
						}
						next = hi
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		if first != nil {
			return first
		}
	}
	return nil
}

// bulkLoad writes paths from..to-1 into the catalogue at dbPath as the
// index's publisher would record them, signed with key.
func (g *generator) bulkLoad(dbPath string, key signature.SecretKey, from, to int) error {
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("bulk load: open %s: %w", dbPath, err)
	}
	defer db.Close()
	// A loader's shortcut, not the index's: one fsync at the end.
	db.NoSync = true
	fileHash, err := nixhash.Parse(g.file.GetFileHash())
	if err != nil {
		return fmt.Errorf("bulk load: %w", err)
	}
	narHash, err := nixhash.Parse(g.file.GetNarHash())
	if err != nil {
		return fmt.Errorf("bulk load: %w", err)
	}
	url := "nar/" + fileHash.NixBase32() + ".nar"
	now := timestamppb.Now()

	type kv struct {
		k string
		v []byte
	}
	const batch = 100000
	for lo := from; lo < to; lo += batch {
		hi := min(lo+batch, to)
		recs := make([]kv, hi-lo)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for w := range 2 { // sign and marshal on both cores
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := lo + w; i < hi; i += 2 {
					in := g.info(i, i)
					refs := slices.Clone(in.GetReferences())
					slices.Sort(refs)
					refs = slices.Compact(refs)
					fp := signature.Fingerprint(storeDir, in.GetStorePath(), narHash, in.GetNarSize(), refs)
					rec := &indexv1.PathInfo{
						StorePath:        in.GetStorePath(),
						NarHash:          in.GetNarHash(),
						NarSize:          in.GetNarSize(),
						References:       refs,
						Deriver:          in.GetDeriver(),
						Signatures:       []string{key.Sign(fp)},
						File:             g.file,
						Url:              url,
						RegistrationTime: now,
					}
					v, err := proto.MarshalOptions{Deterministic: true}.Marshal(rec)
					if err != nil {
						errs[w] = err
						return
					}
					recs[i-lo] = kv{g.hashPart(i), v}
				}
			}()
		}
		wg.Wait()
		if err := errorsJoin(errs); err != nil {
			return fmt.Errorf("bulk load: %w", err)
		}
		// Sorted keys touch each page once per transaction.
		slices.SortFunc(recs, func(a, b kv) int { return strings.Compare(a.k, b.k) })
		err := db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("paths"))
			if b == nil {
				return fmt.Errorf("no bucket %q: the catalogue layout changed; update the loader", "paths")
			}
			for _, r := range recs {
				if err := b.Put([]byte(r.k), r.v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("bulk load: %w", err)
		}
	}
	// These are schema 1 records (marshalled PathInfos), as an index
	// before schema 2 wrote them: drop the schema mark so that the index
	// migrates them (and counts them) at its next start.
	err = db.Update(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("meta")); b != nil {
			return b.Delete([]byte("schema"))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("bulk load: %w", err)
	}
	if err := db.Sync(); err != nil {
		return fmt.Errorf("bulk load: sync: %w", err)
	}
	return nil
}

func errorsJoin(errs []error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
