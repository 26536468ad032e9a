package compression_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixtest"
)

// TestDecodeNixCaches decompresses the NARs that nix copy wrote with every
// compression Nix 2.8 offers, and compares them with nix-store --dump.
func TestDecodeNixCaches(t *testing.T) {
	store := nixtest.NewStore(t)
	top := store.BuildSample(t)

	tests := []struct {
		compression string
		supported   bool
	}{
		{"xz", true}, {"zstd", true}, {"bzip2", true}, {"none", true},
		{"br", false}, {"lz4", false}, {"lzip", false}, {"gzip", false},
	}
	for _, tt := range tests {
		t.Run(tt.compression, func(t *testing.T) {
			cache := store.CopyToFileCache(t, tt.compression, "", top)
			files, _ := filepath.Glob(filepath.Join(cache, "*.narinfo"))
			if len(files) != 3 {
				t.Fatalf("%d narinfos, want 3", len(files))
			}
			for _, file := range files {
				n, err := narinfo.Parse(bytes.NewReader(nixtest.ReadFile(t, file)), nixtest.StoreDir)
				if err != nil {
					t.Fatal(err)
				}
				if n.Compression != tt.compression {
					t.Fatalf("nix wrote Compression %q, want %q", n.Compression, tt.compression)
				}
				data := nixtest.ReadFile(t, filepath.Join(cache, n.URL))
				detected, detectErr := compression.Detect(data)
				r, err := compression.NewReader(n.Compression, bytes.NewReader(data))
				if !tt.supported {
					if !errors.Is(err, compression.ErrUnsupported) {
						t.Fatalf("NewReader(%q) = %v, want ErrUnsupported", tt.compression, err)
					}
					if detectErr == nil {
						t.Fatalf("Detect names %s data %q", tt.compression, detected)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(r)
				if err != nil {
					t.Fatalf("decompress %s: %v", n.URL, err)
				}
				if err := r.Close(); err != nil {
					t.Fatal(err)
				}
				want := nixtest.Dump(t, store.Physical(n.StorePath))
				if !bytes.Equal(got, want) {
					t.Fatalf("%s decompresses to %d bytes, nix-store --dump gives %d", n.URL, len(got), len(want))
				}
				if detectErr != nil || detected != tt.compression {
					t.Errorf("Detect(%s) = %q, %v; want %q", n.URL, detected, detectErr, tt.compression)
				}
				_, ext, _ := strings.Cut(n.URL, ".nar")
				if name, err := compression.FromExtension(ext); err != nil || name != tt.compression {
					t.Errorf("FromExtension(%q) = %q, %v; want %q", ext, name, err, tt.compression)
				}
				if e, err := compression.Extension(tt.compression); err != nil || e != ext {
					t.Errorf("Extension(%q) = %q, %v; nix uses %q", tt.compression, e, err, ext)
				}
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	random := make([]byte, 1<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	inputs := map[string][]byte{
		"empty":  nil,
		"text":   bytes.Repeat([]byte("the quick brown fox "), 50000),
		"random": random,
	}
	for _, name := range []string{compression.None, compression.XZ, compression.Zstd} {
		for what, in := range inputs {
			var buf bytes.Buffer
			w, err := compression.NewWriter(name, &buf)
			if err != nil {
				t.Fatal(err)
			}
			// Write in uneven pieces.
			for rest := in; len(rest) > 0; {
				n := min(len(rest), 1+rng.IntN(100000))
				if _, err := w.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if what == "text" && name != compression.None && buf.Len() > len(in)/10 {
				t.Errorf("%s: %d bytes of text compress to %d", name, len(in), buf.Len())
			}
			if len(in) > 0 || name != compression.None {
				// Detect needs the start of a NAR for none; the others
				// always have their magic, even when empty.
				if name != compression.None {
					if got, err := compression.Detect(buf.Bytes()); err != nil || got != name {
						t.Errorf("Detect(our %s) = %q, %v", name, got, err)
					}
				}
			}
			r, err := compression.NewReader(name, bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			out, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(out, in) {
				t.Errorf("%s %s: round trip gives %d bytes, %v; want %d", name, what, len(out), err, len(in))
			}
		}
	}
}

func TestDetect(t *testing.T) {
	nar := append([]byte{13, 0, 0, 0, 0, 0, 0, 0}, "nix-archive-1\x00\x00\x00"...)
	tests := []struct {
		prefix []byte
		want   string // "" for an error
	}{
		{[]byte{0xfd, '7', 'z', 'X', 'Z', 0, 0, 4}, compression.XZ},
		{[]byte{0x28, 0xb5, 0x2f, 0xfd, 0x24}, compression.Zstd},
		{[]byte("BZh91AY&SY"), compression.Bzip2},
		{nar, compression.None},
		{nar[:6], compression.None},
		{nar[:8], compression.None},
		{[]byte{0xfd, '7', 'z', 'X', 'Z'}, ""}, // too short to be sure
		{[]byte("BZh0"), ""},
		{[]byte("BZhx"), ""},
		{[]byte{0x1f, 0x8b, 8, 0}, ""},       // gzip
		{[]byte{0x04, 0x22, 0x4d, 0x18}, ""}, // lz4
		{[]byte("LZIP\x01"), ""},
		{append([]byte{14, 0, 0, 0, 0, 0, 0, 0}, "nix-archive-1"...), ""},
		{append([]byte{13, 0, 0, 0, 0, 0, 0, 0}, "nix-archive-2"...), ""},
		{nil, ""},
		{[]byte{}, ""},
	}
	for _, tt := range tests {
		got, err := compression.Detect(tt.prefix)
		if tt.want == "" {
			if err == nil {
				t.Errorf("Detect(% x) = %q, want an error", tt.prefix, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Detect(% x) = %q, %v; want %q", tt.prefix, got, err, tt.want)
		}
	}
}

func TestNames(t *testing.T) {
	for _, name := range compression.Supported {
		ext, err := compression.Extension(name)
		if err != nil {
			t.Fatal(err)
		}
		back, err := compression.FromExtension(ext)
		if err != nil || back != name {
			t.Errorf("FromExtension(Extension(%q)) = %q, %v", name, back, err)
		}
		if _, err := compression.NewReader(name, bytes.NewReader(nil)); err != nil {
			t.Errorf("NewReader(%q): %v", name, err)
		}
	}
	for _, name := range []string{"", "gzip", "br", "lz4", "lzip", "XZ", "zst", "bz2"} {
		if _, err := compression.NewReader(name, bytes.NewReader(nil)); !errors.Is(err, compression.ErrUnsupported) {
			t.Errorf("NewReader(%q) = %v, want ErrUnsupported", name, err)
		}
		if _, err := compression.NewWriter(name, io.Discard); !errors.Is(err, compression.ErrUnsupported) {
			t.Errorf("NewWriter(%q) = %v, want ErrUnsupported", name, err)
		}
		if _, err := compression.Extension(name); err == nil {
			t.Errorf("Extension(%q) succeeded", name)
		}
	}
	_, err := compression.NewWriter(compression.Bzip2, io.Discard)
	if !errors.Is(err, compression.ErrUnsupported) || !strings.Contains(err.Error(), "bzip2") {
		t.Errorf("NewWriter(bzip2) = %v, want a clear ErrUnsupported", err)
	}
	for _, ext := range []string{".gz", ".br", "xz", ".XZ", ".nar"} {
		if _, err := compression.FromExtension(ext); err == nil {
			t.Errorf("FromExtension(%q) succeeded", ext)
		}
	}
}

func TestCorruptInput(t *testing.T) {
	text := bytes.Repeat([]byte("nix "), 10000)
	for _, name := range []string{compression.XZ, compression.Zstd} {
		var buf bytes.Buffer
		w, _ := compression.NewWriter(name, &buf)
		w.Write(text)
		w.Close()
		for what, data := range map[string][]byte{
			"truncated": buf.Bytes()[:buf.Len()/2],
			"flipped":   flip(buf.Bytes(), buf.Len()/2),
			"garbage":   append(append([]byte{}, buf.Bytes()[:6]...), bytes.Repeat([]byte{0xaa}, 100)...),
		} {
			r, err := compression.NewReader(name, bytes.NewReader(data))
			if err == nil {
				_, err = io.ReadAll(r)
				r.Close()
			}
			if err == nil {
				t.Errorf("%s %s: no error", name, what)
			} else if !strings.Contains(err.Error(), name) {
				t.Errorf("%s %s: error %q does not name the compression", name, what, err)
			}
		}
	}
	r, _ := compression.NewReader(compression.Bzip2, strings.NewReader("BZh9 this is not bzip2"))
	if _, err := io.ReadAll(r); err == nil || !strings.Contains(err.Error(), "bzip2") {
		t.Errorf("bzip2 garbage: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte{}, b...)
	c[i] ^= 0xff
	return c
}
