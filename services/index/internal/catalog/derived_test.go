package catalog

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/nixcache/nixcache/nix/nixbase32"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
)

// derivedState is what derived.go keeps, as stored or as recounted.
type derivedState struct {
	counters map[string]uint64
	edges    []string            // "<ref> <referrer>"
	users    map[string][]string // NAR file key -> users, sorted
}

// stored reads the derived data as the catalogue keeps it.
func stored(t *testing.T, db *bolt.DB) derivedState {
	t.Helper()
	s := derivedState{counters: map[string]uint64{}, users: map[string][]string{}}
	err := db.View(func(tx *bolt.Tx) error {
		for _, n := range counterNames {
			if v := counter(tx, n); v != 0 {
				s.counters[n] = v
			}
		}
		err := tx.Bucket(referrersBucket).ForEach(func(k, _ []byte) error {
			s.edges = append(s.edges, encode32(k[:20])+" "+encode32(k[20:]))
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(fileUsersBucket).ForEach(func(k, _ []byte) error {
			fk := nixbase32.EncodeToString(k[:32])
			s.users[fk] = append(s.users[fk], encode32(k[32:]))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(s.edges)
	for _, u := range s.users {
		slices.Sort(u)
	}
	return s
}

// recount derives the same from the records alone, by a full scan.
func recount(t *testing.T, db *bolt.DB) derivedState {
	t.Helper()
	s := derivedState{counters: map[string]uint64{}, users: map[string][]string{}}
	add := func(name string, n uint64) {
		if n != 0 {
			s.counters[name] += n
		}
	}
	err := db.View(func(tx *bolt.Tx) error {
		pushed := map[string]bool{}
		for _, src := range []struct {
			bucket       []byte
			count, bytes string
		}{{pathsBucket, cPushed, cPushedBytes}, {quarantineBucket, cQuarantined, cQuarantinedBytes}, {localBucket, cLocal, cLocalBytes}} {
			err := tx.Bucket(src.bucket).ForEach(func(k, v []byte) error {
				info, err := decodePath(string(k), v)
				if err != nil {
					return err
				}
				add(src.count, 1)
				add(src.bytes, info.GetNarSize())
				if bytes.Equal(src.bucket, localBucket) {
					if pushed[string(k)] {
						add(cShadowed, 1)
						add(cShadowedBytes, info.GetNarSize())
					}
					return nil
				}
				pushed[string(k)] = true
				for _, ref := range info.GetReferences() {
					if len(ref) >= 32 && ref[:32] != string(k) && edgeKey(ref[:32], string(k)) != nil {
						s.edges = append(s.edges, ref[:32]+" "+string(k))
					}
				}
				if fileUserKey(string(k), info) != nil {
					fk := fileKey(info)
					s.users[fk] = append(s.users[fk], string(k))
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		add(cLocalUnsigned, uint64(tx.Bucket(localUnsignedBucket).Stats().KeyN))
		add(cPins, uint64(tx.Bucket(pinsBucket).Stats().KeyN))
		for _, name := range [][]byte{narsBucket, quarantineNarsBucket} {
			err := tx.Bucket(name).ForEach(func(k, v []byte) error {
				nf, err := decodeNarFile(v)
				add(cFiles, 1)
				add(cFileBytes, nf.GetFileSize())
				return err
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(s.edges)
	s.edges = slices.Compact(s.edges)
	for _, u := range s.users {
		slices.Sort(u)
	}
	return s
}

func checkDerived(t *testing.T, c *Catalog, when string) {
	t.Helper()
	got, want := stored(t, c.db), recount(t, c.db)
	if !maps.Equal(got.counters, want.counters) {
		t.Fatalf("%s: counters %v, a recount gives %v", when, got.counters, want.counters)
	}
	if !slices.Equal(got.edges, want.edges) {
		t.Fatalf("%s: referrers bucket %v, the records give %v", when, got.edges, want.edges)
	}
	if !maps.EqualFunc(got.users, want.users, slices.Equal[[]string]) {
		t.Fatalf("%s: NAR file users %v, the records give %v", when, got.users, want.users)
	}
}

func encode32(b []byte) string { return nixbase32.EncodeToString(b) }

// TestDerivedMatchesRecount runs random sequences of every kind of write,
// with reopens and crash-like copies of the file, and checks after each
// step that the counters, the referrers and the NAR file users are what a
// full recount of the records gives.
func TestDerivedMatchesRecount(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			dir := t.TempDir()
			path := filepath.Join(dir, "catalog.db")
			c, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { c.Close() }()

			keys := make([]string, 24)
			for i := range keys {
				keys[i] = randHashPart(rng)
			}
			files := make([]*indexv1.NarFile, 8)
			for i := range files {
				files[i] = &indexv1.NarFile{FileHash: randHash(rng), FileSize: 100 + rng.Uint64N(1000), Compression: "none", NarHash: randHash(rng), NarSize: 5}
			}
			info := func(key string) *indexv1.PathInfo {
				in := randInfo(rng, key, false)
				in.References = nil
				for range rng.IntN(4) {
					r := keys[rng.IntN(len(keys))]
					in.References = append(in.References, r+"-dep")
				}
				nf := files[rng.IntN(len(files))]
				in.File = proto.Clone(nf).(*indexv1.NarFile)
				in.NarHash, in.NarSize = nf.GetNarHash(), nf.GetNarSize()
				return in
			}
			local := func(key string) *indexv1.PathInfo {
				in := randInfo(rng, key, false)
				in.File, in.Url = nil, ""
				return in
			}
			some := func() []string {
				var hs []string
				for range 1 + rng.IntN(3) {
					hs = append(hs, keys[rng.IntN(len(keys))])
				}
				return hs
			}
			for step := range 400 {
				key := keys[rng.IntN(len(keys))]
				var op string
				switch rng.IntN(13) {
				case 0:
					op = "AddNarFile"
					nf := files[rng.IntN(len(files))]
					_, err = c.AddNarFile(fileKey(&indexv1.PathInfo{File: nf}), nf)
				case 1, 2:
					op = "UpdatePathInfo"
					next := info(key)
					// As the publisher: the NAR file is uploaded first.
					if _, err = c.AddNarFile(fileKey(next), next.GetFile()); err != nil {
						break
					}
					_, err = c.UpdatePathInfo(key, func(old *indexv1.PathInfo) (*indexv1.PathInfo, error) {
						if old != nil && rng.IntN(2) == 0 {
							return nil, nil
						}
						return next, nil
					})
					if errors.Is(err, fault.ErrPrecondition) {
						err = nil // a reference is not published
					}
				case 3:
					op = "UpdatePathInfo refused"
					_, err = c.UpdatePathInfo(key, func(*indexv1.PathInfo) (*indexv1.PathInfo, error) { return nil, errors.New("no") })
					if err == nil {
						t.Fatal("refused update: no error")
					}
					err = nil
				case 4:
					op = "Quarantine"
					var e *Entry
					if e, err = c.Lookup(key); err == nil {
						_, err = c.Quarantine(key, e.Info.GetNarHash())
					} else {
						err = nil
					}
				case 5:
					op = "DeletePaths"
					_, err = c.DeletePaths(some())
					if errors.Is(err, fault.ErrPrecondition) {
						err = nil // a published path refers to one
					}
				case 6:
					op = "PutPin"
					if err = c.PutPin(key, &indexv1.Pin{StorePath: "x"}); err != nil {
						err = nil // not a pushed path
					}
				case 7:
					op = "DeletePin"
					_ = c.DeletePin(key)
				case 8:
					op = "PutLocal"
					var ps []LocalPath
					for _, h := range some() {
						ps = append(ps, LocalPath{Info: local(h), Signed: rng.IntN(2) == 0})
					}
					err = c.PutLocal(ps)
				case 9:
					op = "DeleteLocal"
					_, _, err = c.DeleteLocal(some())
				case 10:
					op = "ReplaceSignatures"
					if e, lerr := c.Lookup(key); lerr == nil {
						_, err = c.ReplaceSignatures(map[string]SignatureUpdate{key: {NarHash: e.Info.GetNarHash(), Signatures: []string{randSig(rng, "k2")}}}, e.Local)
					}
				case 11:
					op = "reopen"
					if err = c.Close(); err == nil {
						c, err = Open(path)
					}
				case 12:
					if rng.IntN(4) == 0 {
						op = "ClearLocal"
						_, err = c.ClearLocal()
						break
					}
					// What a crash right now leaves: the file as it is.
					op = "crash copy"
					b, rerr := os.ReadFile(path)
					if rerr != nil {
						t.Fatal(rerr)
					}
					cp := filepath.Join(dir, fmt.Sprintf("crash-%d.db", step))
					if err := os.WriteFile(cp, b, 0o600); err != nil {
						t.Fatal(err)
					}
					cc, oerr := Open(cp)
					if oerr != nil {
						t.Fatalf("step %d: open the crash copy: %v", step, oerr)
					}
					checkDerived(t, cc, fmt.Sprintf("step %d, crash copy", step))
					cc.Close()
				}
				if err != nil {
					t.Fatalf("step %d %s: %v", step, op, err)
				}
				checkDerived(t, c, fmt.Sprintf("step %d (%s)", step, op))
			}
			// And the totals GetStats shows, against the entries themselves.
			n, err := c.Counts()
			if err != nil {
				t.Fatal(err)
			}
			snap, err := c.Snapshot(true)
			if err != nil {
				t.Fatal(err)
			}
			var pushedBytes uint64
			quarantined := 0
			for _, e := range snap.Paths {
				pushedBytes += e.Info.GetNarSize()
				if e.Quarantined {
					quarantined++
				}
			}
			if n.Pushed+n.Quarantined != len(snap.Paths) || n.Quarantined != quarantined || n.PushedNarBytes != pushedBytes ||
				n.LocalOnly != snap.Local || n.LocalOnlyNarBytes != snap.LocalNarBytes {
				t.Errorf("Counts %+v; the snapshot has %d pushed (%d quarantined, %d bytes), %d local only (%d bytes)",
					n, len(snap.Paths), quarantined, pushedBytes, snap.Local, snap.LocalNarBytes)
			}
		})
	}
}

// TestMigrateSchema1 builds a catalogue the way the index wrote it before
// schema 2 (marshalled messages, no derived buckets), opens it, and checks
// that every record reads back the same, the derived data is right, and
// the file shrank.
func TestMigrateSchema1(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	path := filepath.Join(t.TempDir(), "catalog.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	marshal := func(m proto.Message) []byte {
		v, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	want := map[string]map[string]*indexv1.PathInfo{}
	wantFiles := map[string]*indexv1.NarFile{}
	var keys []string
	err = db.Update(func(tx *bolt.Tx) error {
		// Schema 1's buckets, as its Open made them.
		for _, name := range []string{"paths", "nars", "local", "local-unsigned", "access", "pins", "quarantine", "quarantine-nars"} {
			if _, err := tx.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		for i := range 3000 {
			key := randHashPart(rng)
			keys = append(keys, key)
			bucket := []string{"paths", "paths", "paths", "quarantine", "local"}[i%5]
			info := randInfo(rng, key, i%7 == 0)
			if bucket == "local" {
				info.File, info.Url = nil, ""
				if err := tx.Bucket([]byte("local-unsigned")).Put([]byte(key), nil); i%2 == 0 && err != nil {
					return err
				}
			} else if len(keys) > 1 {
				info.References = append(info.References, keys[rng.IntN(len(keys)-1)]+"-dep")
			}
			if want[bucket] == nil {
				want[bucket] = map[string]*indexv1.PathInfo{}
			}
			want[bucket][key] = info
			if err := tx.Bucket([]byte(bucket)).Put([]byte(key), marshal(info)); err != nil {
				return err
			}
			if fk := fileKey(info); fk != "" && info.GetFile().GetNarHash() != "" {
				nb := "nars"
				if bucket == "quarantine" {
					nb = "quarantine-nars"
				}
				wantFiles[fk] = info.GetFile()
				if err := tx.Bucket([]byte(nb)).Put([]byte(fk), marshal(info.GetFile())); err != nil {
					return err
				}
			}
			if i%10 == 0 {
				if err := tx.Bucket([]byte("pins")).Put([]byte(key), marshal(&indexv1.Pin{StorePath: info.GetStorePath()})); err != nil {
					return err
				}
				if err := tx.Bucket([]byte("access")).Put([]byte(key), encodeAccess(Access{Last: int64(i), Downloads: 3})); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	before, _ := os.Stat(path)
	// A migration a crash interrupted left its file behind.
	if err := os.WriteFile(path+".migrate", []byte("half a file"), 0o600); err != nil {
		t.Fatal(err)
	}

	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	after, _ := os.Stat(path)
	if _, err := os.Stat(path + ".migrate"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the migration's file is left: %v", err)
	}
	if v, _ := schemaOf(c.db); v != schemaVersion {
		t.Errorf("schema %d after migrating, want %d", v, schemaVersion)
	}
	for bucket, infos := range want {
		for key, info := range infos {
			e, err := c.Lookup(key)
			if err != nil {
				t.Fatalf("%s %s: %v", bucket, key, err)
			}
			if !proto.Equal(e.Info, info) || e.Quarantined != (bucket == "quarantine") || e.Local != (bucket == "local") {
				t.Fatalf("%s %s reads back as %v (quarantined %v, local %v), want %v", bucket, key, e.Info, e.Quarantined, e.Local, info)
			}
		}
	}
	for fk, nf := range wantFiles {
		var got *indexv1.NarFile
		err := c.db.View(func(tx *bolt.Tx) error {
			for _, name := range [][]byte{narsBucket, quarantineNarsBucket} {
				if v := tx.Bucket(name).Get([]byte(fk)); v != nil {
					var err error
					got, err = decodeNarFile(v)
					return err
				}
			}
			return nil
		})
		if err != nil || !proto.Equal(got, nf) {
			t.Fatalf("NAR file %s: %v, %v; want %v", fk, got, err, nf)
		}
	}
	a, err := c.AccessOf(keys[10])
	if err != nil || a != (Access{Last: 10, Downloads: 3}) {
		t.Errorf("access record of %s: %+v, %v", keys[10], a, err)
	}
	pins, err := c.Pins()
	if err != nil || len(pins) != 300 {
		t.Errorf("%d pins, %v; want 300", len(pins), err)
	}
	checkDerived(t, c, "after the migration")
	if n, _ := c.Counts(); n.Pushed != len(want["paths"]) || n.Quarantined != len(want["quarantine"]) || n.Pinned != 300 {
		t.Errorf("Counts %+v", n)
	}
	if after.Size() >= before.Size() {
		t.Errorf("catalog.db is %d bytes after the migration, %d before", after.Size(), before.Size())
	}
	t.Logf("catalog.db: %d bytes before, %d after", before.Size(), after.Size())

	// Schema 1 records added to a migrated catalogue (an older loader)
	// are migrated at the next start once its schema mark is dropped.
	extra := randHashPart(rng)
	extraInfo := randInfo(rng, extra, false)
	err = c.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(pathsBucket).Put([]byte(extra), marshal(extraInfo)); err != nil {
			return err
		}
		return tx.Bucket(metaBucket).Delete(schemaKey)
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if c, err = Open(path); err != nil {
		t.Fatal(err)
	}
	if got, err := c.PathInfo(extra); err != nil || !proto.Equal(got, extraInfo) {
		t.Errorf("the added record reads back as %v, %v", got, err)
	}
	checkDerived(t, c, "after the second migration")
}

// TestNewerSchemaIsRefused: a catalogue of a later version, without a
// bucket this one makes (a later layout may drop one), is refused with a
// message that says why, and not written to at all.
func TestNewerSchemaIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	err = c.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(statsBucket); err != nil {
			return err
		}
		return tx.Bucket(metaBucket).Put(schemaKey, []byte{schemaVersion + 1})
	})
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err = Open(path)
	if err == nil {
		c.Close()
		t.Fatal("a catalogue of a newer schema opened")
	}
	want := fmt.Sprintf("catalog schema %d is newer than this index's (%d)", schemaVersion+1, schemaVersion)
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "left unchanged") {
		t.Errorf("Open of a newer catalogue: %q, want it to say %q and that the file is left unchanged", err, want)
	}
	if after, err := os.ReadFile(path); err != nil || !bytes.Equal(after, before) {
		t.Errorf("the refused catalogue was written to (%v)", err)
	}
}
