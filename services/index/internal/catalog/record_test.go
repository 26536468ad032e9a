package catalog

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nixcache/nixcache/nix/nixbase32"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// randHashPart is a valid 32-character hash part.
func randHashPart(rng *rand.Rand) string {
	b := make([]byte, 20)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return nixbase32.EncodeToString(b)
}

func randHash(rng *rand.Rand) string {
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return nixhash.Hash{Algo: nixhash.SHA256, Digest: b}.String()
}

func randSig(rng *rand.Rand, key string) string {
	b := make([]byte, ed25519.SignatureSize)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return key + ":" + base64.StdEncoding.EncodeToString(b)
}

// randInfo is a path record like the publisher writes, or (odd) one with
// every field in a shape the compact encoding must keep as text.
func randInfo(rng *rand.Rand, key string, odd bool) *indexv1.PathInfo {
	name := fmt.Sprintf("pkg-%d.%d", rng.IntN(100), rng.IntN(10))
	fh := randHash(rng)
	info := &indexv1.PathInfo{
		StorePath:        "/nix/store/" + key + "-" + name,
		NarHash:          randHash(rng),
		NarSize:          rng.Uint64N(1 << 40),
		Deriver:          randHashPart(rng) + "-" + name + ".drv",
		Signatures:       []string{randSig(rng, "cache.example.org-1")},
		RegistrationTime: &timestamppb.Timestamp{Seconds: 1.7e9 - rng.Int64N(1e8), Nanos: rng.Int32N(1e9)},
	}
	for range rng.IntN(6) {
		info.References = append(info.References, randHashPart(rng)+"-dep-"+fmt.Sprint(rng.IntN(9)))
	}
	if rng.IntN(2) == 0 {
		info.References = append(info.References, key+"-"+name)
	}
	switch rng.IntN(4) {
	case 0: // local: no file
	case 1:
		info.File = &indexv1.NarFile{FileHash: fh, FileSize: rng.Uint64N(1 << 30), Compression: "xz", NarHash: randHash(rng), NarSize: 7}
		info.Url = narURL(info.File)
	default:
		info.File = &indexv1.NarFile{FileHash: fh, FileSize: info.NarSize, Compression: "none", NarHash: info.NarHash, NarSize: info.NarSize}
		info.Url = narURL(info.File)
	}
	if rng.IntN(3) == 0 {
		info.Deriver = randHashPart(rng) + "-other.drv"
	}
	if rng.IntN(5) == 0 {
		info.Ca = "fixed:r:" + randHash(rng)
	}
	if !odd {
		return info
	}
	// Every field in a shape the compact form cannot hold.
	odds := []func(){
		func() { info.StorePath = "/other/store/" + key + "-" + name },
		func() { info.StorePath = "/nix/store/" + randHashPart(rng) + "-" + name }, // not the key
		func() { info.StorePath = "" },
		func() { info.NarHash = "sha256:" + strings.Repeat("0", 64) }, // base16
		func() { info.NarHash = "md5:" + nixbase32.EncodeToString(make([]byte, 16)) },
		func() { info.NarHash = "" },
		func() { info.References = append(info.References, "not a base name", key+"-") },
		func() { info.References = append(info.References, strings.ToUpper(randHashPart(rng))+"-x") },
		func() { info.Deriver = randHashPart(rng) + "-noext" },
		func() { info.Deriver = "" },
		func() {
			info.Signatures = append(info.Signatures, "k:short", "nocolon", "k:"+strings.Repeat("A", 86)+"==")
		},
		func() { info.Signatures = nil },
		func() { info.Url = "" },
		func() { info.Url = "elsewhere/x.nar" },
		func() {
			info.File = &indexv1.NarFile{FileHash: "sha1:" + nixbase32.EncodeToString(make([]byte, 20)), Compression: "weird"}
		},
		func() { info.File = &indexv1.NarFile{} },
		func() { info.RegistrationTime = &timestamppb.Timestamp{Seconds: -5, Nanos: 999999999} },
		func() { info.RegistrationTime = nil },
		func() { info.NarSize = 0 },
	}
	for range 1 + rng.IntN(4) {
		odds[rng.IntN(len(odds))]()
	}
	return info
}

func TestPathRecordRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var compact, legacy int
	for i := range 5000 {
		key := randHashPart(rng)
		info := randInfo(rng, key, i%2 == 1)
		v, err := encodePath(key, info)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodePath(key, v)
		if err != nil {
			t.Fatalf("decode %v: %v", info, err)
		}
		if !proto.Equal(got, info) {
			t.Fatalf("round trip of\n%v\ngave\n%v", info, got)
		}
		// The schema 1 form of the same record still reads.
		old, _ := proto.MarshalOptions{Deterministic: true}.Marshal(info)
		if got, err := decodePath(key, old); err != nil || !proto.Equal(got, info) {
			t.Fatalf("schema 1 record: %v, %v", got, err)
		}
		if i%2 == 0 {
			compact += len(v)
			legacy += len(old)
		}
	}
	// The point of it all: publisher-shaped records shrink.
	if compact*10 > legacy*6 {
		t.Errorf("compact records are %d bytes against %d marshalled: want under 60%%", compact, legacy)
	}
	t.Logf("records like the publisher's: %d bytes compact, %d marshalled", compact/2500, legacy/2500)
}

func TestPathRecordKeepsUnknownFields(t *testing.T) {
	key := strings.Repeat("a", 32)
	info := &indexv1.PathInfo{StorePath: "/nix/store/" + key + "-x", NarHash: "sha256:" + nixbase32.EncodeToString(make([]byte, 32))}
	// A field a later PathInfo may have.
	info.ProtoReflect().SetUnknown(protowire.AppendString(protowire.AppendTag(nil, 99, protowire.BytesType), "later"))
	v, err := encodePath(key, info)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodePath(key, v)
	if err != nil || !proto.Equal(got, info) {
		t.Fatalf("got %v, %v; want %v", got, err, info)
	}
}

func TestNarFileRecordRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 1000 {
		nf := &indexv1.NarFile{FileHash: randHash(rng), FileSize: rng.Uint64N(1 << 40), Compression: []string{"none", "xz", "zstd", ""}[i%4],
			NarHash: randHash(rng), NarSize: rng.Uint64N(1 << 40)}
		if i%5 == 0 {
			nf.FileHash, nf.NarHash = "sha256:"+strings.Repeat("f", 64), ""
		}
		v, err := encodeNarFile(nf)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeNarFile(v)
		if err != nil || !proto.Equal(got, nf) {
			t.Fatalf("round trip of %v: %v, %v", nf, got, err)
		}
	}
}

func TestCorruptRecordIsAnError(t *testing.T) {
	key := strings.Repeat("a", 32)
	for _, v := range [][]byte{
		{compactMark, 0xff},                            // a truncated tag
		{compactMark, byte(pNarHash<<3 | 2), 5, 1, 2},  // truncated bytes
		{compactMark, byte(pNarHash<<3 | 2), 2, 99, 0}, // an unknown algorithm
		{compactMark, byte(pSig<<3 | 2), 3, 1, 2, 3},   // a short signature
	} {
		if got, err := decodePath(key, v); err == nil {
			t.Errorf("decodePath(%x) = %v, want an error", v, got)
		}
	}
}
