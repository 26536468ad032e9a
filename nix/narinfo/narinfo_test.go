package narinfo_test

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/nixtest"
	"github.com/nixcache/nixcache/nix/signature"
)

const storeDir = nixtest.StoreDir

// TestRoundTripNixCaches parses every narinfo that nix copy wrote into
// file:// caches of every compression, checks the values against the files
// and against Nix, and prints them back byte for byte.
func TestRoundTripNixCaches(t *testing.T) {
	secFile, pubFile := nixtest.GenerateKey(t, "test-1")
	pub, err := signature.ParsePublicKey(string(nixtest.ReadFile(t, pubFile)))
	if err != nil {
		t.Fatal(err)
	}
	store := nixtest.NewStore(t)
	top := store.BuildSample(t)

	for _, compression := range []string{"xz", "zstd", "bzip2", "none"} {
		t.Run(compression, func(t *testing.T) {
			cache := store.CopyToFileCache(t, compression, secFile, top)
			files, _ := filepath.Glob(filepath.Join(cache, "*.narinfo"))
			if len(files) != 3 {
				t.Fatalf("%d narinfos, want 3", len(files))
			}
			seen := map[string]bool{}
			for _, file := range files {
				text := string(nixtest.ReadFile(t, file))
				n, err := narinfo.Parse(strings.NewReader(text), storeDir)
				if err != nil {
					t.Fatalf("Parse(%s): %v", file, err)
				}
				if got := n.String(); got != text {
					t.Errorf("String() differs from what nix wrote:\n%s\nnix:\n%s", got, text)
				}
				checkAgainstFiles(t, store, cache, n)
				if n.Compression != compression || n.EffectiveCompression() != compression {
					t.Errorf("Compression = %q, want %q", n.Compression, compression)
				}
				fp, err := n.Fingerprint(storeDir)
				if err != nil {
					t.Fatal(err)
				}
				if len(n.Sigs) != 1 || !pub.Verify(fp, n.Sigs[0]) {
					t.Errorf("%s: signatures %q do not verify", n.StorePath, n.Sigs)
				}
				switch {
				case strings.HasSuffix(n.StorePath, "-dep.txt"):
					seen["ca"] = n.CA != "" && n.Deriver == ""
				case strings.HasSuffix(n.StorePath, "-b-1.0"):
					seen["refs"] = len(n.References) == 2 && strings.HasSuffix(n.Deriver, "-b-1.0.drv")
				}
			}
			if !seen["ca"] || !seen["refs"] {
				t.Errorf("the sample lacks a CA path or one with 2 references and a deriver: %v", seen)
			}
		})
	}
}

// checkAgainstFiles compares a narinfo with the file at its URL and the
// store path on disk, hashed by Nix.
func checkAgainstFiles(t *testing.T, store *nixtest.Store, cache string, n *narinfo.NarInfo) {
	t.Helper()
	file := nixtest.ReadFile(t, filepath.Join(cache, n.URL))
	sum := sha256.Sum256(file)
	if want := (nixhash.Hash{Algo: nixhash.SHA256, Digest: sum[:]}); !n.FileHash.Equal(want) || n.FileSize != uint64(len(file)) {
		t.Errorf("%s: FileHash %v FileSize %d; the file has %v, %d bytes", n.StorePath, n.FileHash, n.FileSize, want, len(file))
	}
	sri := strings.TrimSpace(nixtest.Run(t, "nix", "hash", "path", store.Physical(n.StorePath)))
	if n.NarHash.SRI() != sri {
		t.Errorf("%s: NarHash %s, nix hash path says %s", n.StorePath, n.NarHash.SRI(), sri)
	}
	if dump := nixtest.Dump(t, store.Physical(n.StorePath)); n.NarSize != uint64(len(dump)) {
		t.Errorf("%s: NarSize %d, nix-store --dump gives %d bytes", n.StorePath, n.NarSize, len(dump))
	}
}

const (
	hashA  = "0mdqa9w1p6cmli6976v4wi0sw9r4p5pr"
	pathA  = "/nix/store/" + hashA + "-hello-2.12"
	refB   = "1mdqa9w1p6cmli6976v4wi0sw9r4p5pr-glibc-2.35"
	nar32  = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
	narHex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	narB64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
)

// minimal is the smallest narinfo Nix accepts.
const minimal = "StorePath: " + pathA + "\nURL: nar/x.nar.xz\nNarHash: sha256:" + nar32 + "\nNarSize: 120\n"

func TestParseTolerant(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // String() of the result
	}{
		{"minimal", minimal,
			"StorePath: " + pathA + "\nURL: nar/x.nar.xz\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \n"},
		{"hashes in hex, base64 and SRI",
			"StorePath: " + pathA + "\nURL: u\nCompression: xz\nFileHash: sha256:" + narHex + "\nFileSize: 7\nNarHash: sha256-" + narB64 + "\nNarSize: 120\nReferences: " + refB + "\n",
			"StorePath: " + pathA + "\nURL: u\nCompression: xz\nFileHash: sha256:" + nar32 + "\nFileSize: 7\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: " + refB + "\n"},
		{"base64 typed", strings.Replace(minimal, "sha256:"+nar32, "sha256:"+narB64, 1),
			"StorePath: " + pathA + "\nURL: nar/x.nar.xz\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \n"},
		{"unknown keys and System ignored", "Foo: bar\n" + minimal + "System: x86_64-linux\nX-Custom: 1\nEmpty:\n",
			"StorePath: " + pathA + "\nURL: nar/x.nar.xz\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \n"},
		{"key order free, extra spaces between references",
			"References: " + refB + "  " + hashA + "-hello-2.12 \nNarSize: 120\nNarHash: sha256:" + nar32 + "\nURL: nar/x.nar\nStorePath: " + pathA + "\nCompression: none\n",
			"StorePath: " + pathA + "\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: " + refB + " " + hashA + "-hello-2.12\n"},
		{"References without its space", minimal + "References:\n",
			"StorePath: " + pathA + "\nURL: nar/x.nar.xz\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \n"},
		{"unknown-deriver", minimal + "Deriver: unknown-deriver\n",
			"StorePath: " + pathA + "\nURL: nar/x.nar.xz\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \n"},
		{"deriver, sigs, CA, empty Sig skipped",
			minimal + "Deriver: " + hashA + "-hello-2.12.drv\nSig: a:AAAA\nSig: \nSig: b:BBBB\nCA: fixed:r:sha256:" + nar32 + "\n",
			"StorePath: " + pathA + "\nURL: nar/x.nar.xz\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \nDeriver: " + hashA + "-hello-2.12.drv\nSig: a:AAAA\nSig: b:BBBB\nCA: fixed:r:sha256:" + nar32 + "\n"},
		{"CA text and flat", minimal + "CA: text:sha256:" + nar32 + "\n",
			"StorePath: " + pathA + "\nURL: nar/x.nar.xz\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \nCA: text:sha256:" + nar32 + "\n"},
		{"CA flat sha1", minimal + "CA: fixed:sha1:fd540npwk7x370s4s2jzpx74wf365jjm\n",
			"StorePath: " + pathA + "\nURL: nar/x.nar.xz\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \nCA: fixed:sha1:fd540npwk7x370s4s2jzpx74wf365jjm\n"},
		{"empty CA is none", minimal + "CA: \n",
			"StorePath: " + pathA + "\nURL: nar/x.nar.xz\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \n"},
		{"URL with a query string", strings.Replace(minimal, "nar/x.nar.xz", "nar/x.nar?hash=abc", 1),
			"StorePath: " + pathA + "\nURL: nar/x.nar?hash=abc\nCompression: bzip2\nNarHash: sha256:" + nar32 + "\nNarSize: 120\nReferences: \n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := narinfo.Parse(strings.NewReader(tt.in), storeDir)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := n.String(); got != tt.want {
				t.Fatalf("String():\n%s\nwant:\n%s", got, tt.want)
			}
			again, err := narinfo.Parse(strings.NewReader(n.String()), storeDir)
			if err != nil || again.String() != tt.want {
				t.Fatalf("Parse(String()) = %v, %v", again, err)
			}
		})
	}
}

func TestEffectiveCompression(t *testing.T) {
	n, err := narinfo.Parse(strings.NewReader(minimal), storeDir)
	if err != nil {
		t.Fatal(err)
	}
	if n.Compression != "" || n.EffectiveCompression() != "bzip2" {
		t.Errorf("Compression %q, EffectiveCompression %q", n.Compression, n.EffectiveCompression())
	}
	if n.References != nil || n.Deriver != "" || n.Sigs != nil || n.CA != "" || !n.FileHash.IsZero() || n.FileSize != 0 {
		t.Errorf("optional fields set: %+v", n)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, in, wantErr string
		nixRejects        bool // Nix 2.8 rejects it too (checked by TestErrorsAsNix)
	}{
		{"empty", "", "narinfo: no StorePath", true},
		{"no StorePath", strings.Replace(minimal, "StorePath: "+pathA+"\n", "", 1), "no StorePath", true},
		{"no URL", strings.Replace(minimal, "URL: nar/x.nar.xz\n", "", 1), "no URL", true},
		{"empty URL", strings.Replace(minimal, "URL: nar/x.nar.xz\n", "URL: \n", 1), "empty URL", true},
		{"no NarHash", strings.Replace(minimal, "NarHash: sha256:"+nar32+"\n", "", 1), "no NarHash", true},
		{"no NarSize", strings.Replace(minimal, "NarSize: 120\n", "", 1), "no NarSize", true},
		{"NarSize 0", strings.Replace(minimal, "NarSize: 120", "NarSize: 0", 1), "NarSize is 0", true},
		{"NarSize abc", strings.Replace(minimal, "NarSize: 120", "NarSize: abc", 1), `narinfo: line 4: NarSize "abc": not a number`, true},
		{"NarSize negative", strings.Replace(minimal, "NarSize: 120", "NarSize: -5", 1), `NarSize "-5": not a number`, false},
		{"NarSize overflow", strings.Replace(minimal, "NarSize: 120", "NarSize: 18446744073709551616", 1), "out of range", true},
		{"NarSize trailing space", strings.Replace(minimal, "NarSize: 120", "NarSize: 120 ", 1), "not a number", true},
		{"FileSize abc", minimal + "FileSize: 1x\n", `line 5: FileSize "1x": not a number`, true},
		{"untyped NarHash", strings.Replace(minimal, "sha256:"+nar32, nar32, 1), "no algorithm prefix", true},
		{"bad NarHash", strings.Replace(minimal, "sha256:"+nar32, "sha256:e"+nar32[1:], 1), "line 3: NarHash", true},
		{"short NarHash", strings.Replace(minimal, "sha256:"+nar32, "sha256:"+nar32[1:], 1), "wrong length 51", true},
		{"bad FileHash", minimal + "FileHash: md5:" + nar32 + "\n", "line 5: FileHash", true},
		{"StorePath other store", strings.Replace(minimal, "/nix/store/", "/gnu/store/", 1), "not in the store", true},
		{"StorePath bad name", strings.Replace(minimal, "-hello-2.12", "-hello world", 1), "illegal character ' '", true},
		{"StorePath subdir", strings.Replace(minimal, "-hello-2.12", "-hello/bin", 1), "not directly inside", true},
		{"StorePath bad hash", strings.Replace(minimal, hashA, "e"+hashA[1:], 1), "not nix32", true},
		{"StorePath tilde name", strings.Replace(minimal, "-hello-2.12", "-hello~2.12", 1), "illegal character", false},
		{"bad reference", minimal + "References: " + refB + " foo\n", "line 5: References: store path \"foo\"", true},
		{"absolute reference", minimal + "References: /nix/store/" + refB + "\n", "References", true},
		{"bad deriver", minimal + "Deriver: hello.drv\n", "line 5: Deriver", true},
		{"repeated References", minimal + "References: " + refB + "\nReferences: " + refB + "\n", "References repeated", true},
		{"repeated empty References", minimal + "References: \nReferences: \n", "References repeated", false},
		{"repeated CA", minimal + "CA: text:sha256:" + nar32 + "\nCA: text:sha256:" + nar32 + "\n", "CA repeated", true},
		{"repeated StorePath", minimal + "StorePath: " + pathA + "\n", "StorePath repeated", false},
		{"repeated NarSize", minimal + "NarSize: 121\n", "NarSize repeated", false},
		{"bad CA method", minimal + "CA: foo:sha256:" + nar32 + "\n", "unknown method", true},
		{"bad CA text algo", minimal + "CA: text:sha1:fd540npwk7x370s4s2jzpx74wf365jjm\n", "want sha256", true},
		{"bad CA hash", minimal + "CA: fixed:r:sha256:abc\n", "wrong length", true},
		{"CA without hash", minimal + "CA: fixed:r:sha256\n", "not <algo>:<hash>", true},
		{"Sig not UTF-8", minimal + "Sig: \xff\xfe:" + strings.Repeat("A", 88) + "\n", "line 5: not valid UTF-8", false},
		{"Compression not UTF-8", minimal + "Compression: \xff\n", "line 5: not valid UTF-8", false},
		{"unknown key not UTF-8", minimal + "X\xc3: y\n", "line 5: not valid UTF-8", false},
		{"NUL", minimal + "Foo: a\x00b\n", `line 5: control character '\x00'`, false},
		{"NUL in value", strings.Replace(minimal, "nar/x.nar.xz", "nar/x\x00.nar.xz", 1), "control character", false},
		{"CRLF", strings.ReplaceAll(minimal, "\n", "\r\n"), "line 1: control character '\\r'", true},
		{"tab", minimal + "Foo:\tbar\n", "control character '\\t'", false},
		{"no colon", minimal + "garbage\n", `line 5: "garbage": not a "Key: value" line`, true},
		{"no space after colon", minimal + "Foo:bar\n", "no space after ':'", false},
		{"empty line", "\n" + minimal, "line 1", false},
		{"empty key", minimal + ": x\n", "bad key", false},
		{"key with space", minimal + "Nar Size: 1\n", "bad key", false},
		{"no final newline", strings.TrimSuffix(minimal, "\n"), "line 4: no newline at the end", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := narinfo.Parse(strings.NewReader(tt.in), storeDir)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Parse = %v, %v; want error containing %q", n, err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "narinfo: ") {
				t.Fatalf("error %q does not start with \"narinfo: \"", err)
			}
		})
	}

	// What Nix makes of the same inputs: it must reject those marked so.
	t.Run("as nix", func(t *testing.T) {
		for _, tt := range tests {
			if !tt.nixRejects {
				continue
			}
			if err := nixReads(t, tt.in); err == nil {
				t.Errorf("%s: nix accepts it, we reject it with %q", tt.name, tt.wantErr)
			}
		}
		// And the check itself: nix reads the minimal narinfo.
		if err := nixReads(t, minimal); err != nil {
			t.Fatalf("nix rejects the minimal narinfo: %v", err)
		}
	})
}

// nixReads puts text as the narinfo of pathA into a file:// cache and has
// nix path-info read it.
func nixReads(t *testing.T, text string) error {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, hashA+".narinfo"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := nixtest.Try(t, nil, "nix", "path-info", "--json", "--store", "file://"+dir, pathA)
	return err
}

// TestTolerantAsNix has Nix read the tolerant inputs we accept and compares
// its view of the path with ours.
func TestTolerantAsNix(t *testing.T) {
	in := "Foo: bar\nStorePath: " + pathA + "\nURL: u\nCompression: xz\nFileHash: sha256:" + narHex +
		"\nFileSize: 7\nNarHash: sha256-" + narB64 + "\nNarSize: 120\nReferences: " + refB + "  " + hashA + "-hello-2.12\nDeriver: unknown-deriver\nSystem: x86_64-linux\n"
	n, err := narinfo.Parse(strings.NewReader(in), storeDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{in, n.String()} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\n"), 0o644)
		os.WriteFile(filepath.Join(dir, hashA+".narinfo"), []byte(text), 0o644)
		out := nixtest.Run(t, "nix", "path-info", "--json", "--store", "file://"+dir, pathA)
		var infos []struct {
			Path       string   `json:"path"`
			NarHash    string   `json:"narHash"`
			NarSize    uint64   `json:"narSize"`
			References []string `json:"references"`
			Deriver    string   `json:"deriver"`
			URL        string   `json:"url"`
		}
		if err := json.Unmarshal([]byte(out), &infos); err != nil || len(infos) != 1 {
			t.Fatalf("nix path-info printed %s: %v", out, err)
		}
		got := infos[0]
		var refs []string
		for _, r := range n.References {
			refs = append(refs, storeDir+"/"+r)
		}
		if got.Path != n.StorePath || got.NarHash != n.NarHash.SRI() || got.NarSize != n.NarSize || got.URL != n.URL || got.Deriver != "" ||
			!slices.Equal(slices.Sorted(slices.Values(got.References)), slices.Sorted(slices.Values(refs))) {
			t.Errorf("nix reads %+v, we read %+v", got, n)
		}
	}
}

func TestMaxSize(t *testing.T) {
	big := minimal + strings.Repeat("Sig: k:"+strings.Repeat("A", 88)+"\n", narinfo.MaxSize/96+1)
	if _, err := narinfo.Parse(strings.NewReader(big), storeDir); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Parse of %d bytes: %v", len(big), err)
	}
	fits := minimal + strings.Repeat("Sig: k:"+strings.Repeat("A", 88)+"\n", (narinfo.MaxSize-len(minimal))/96)
	if _, err := narinfo.Parse(strings.NewReader(fits), storeDir); err != nil {
		t.Fatalf("Parse of %d bytes: %v", len(fits), err)
	}
}

func TestFingerprintErrors(t *testing.T) {
	good := func() *narinfo.NarInfo {
		n, err := narinfo.Parse(strings.NewReader(minimal+"References: "+refB+"\n"), storeDir)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	fp, err := good().Fingerprint(storeDir)
	if want := "1;" + pathA + ";sha256:" + nar32 + ";120;/nix/store/" + refB; err != nil || fp != want {
		t.Fatalf("Fingerprint = %q, %v; want %q", fp, err, want)
	}
	for name, mutate := range map[string]func(*narinfo.NarInfo){
		"other store":  func(n *narinfo.NarInfo) { n.StorePath = "/gnu/store/" + hashA + "-x" },
		"zero size":    func(n *narinfo.NarInfo) { n.NarSize = 0 },
		"no hash":      func(n *narinfo.NarInfo) { n.NarHash = nixhash.Hash{} },
		"sha1 hash":    func(n *narinfo.NarInfo) { n.NarHash, _ = nixhash.Parse("sha1:fd540npwk7x370s4s2jzpx74wf365jjm") },
		"bad ref":      func(n *narinfo.NarInfo) { n.References = []string{"x"} },
		"absolute ref": func(n *narinfo.NarInfo) { n.References = []string{"/nix/store/" + refB} },
	} {
		n := good()
		mutate(n)
		if fp, err := n.Fingerprint(storeDir); err == nil {
			t.Errorf("%s: Fingerprint = %q", name, fp)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(minimal)
	f.Add(minimal + "References: " + refB + "\nDeriver: " + hashA + "-x.drv\nSig: a:b\nCA: fixed:r:sha256:" + nar32 + "\n")
	f.Add(minimal + "References:\nCA: \n")
	f.Add("StorePath: /nix/store/x\n")
	f.Add("a:\n")
	f.Add(minimal + "Sig: \xff\xfe:" + strings.Repeat("A", 88) + "\n")
	f.Add(minimal + "Compression: \xff\n")
	f.Fuzz(func(t *testing.T, text string) {
		n, err := narinfo.Parse(strings.NewReader(text), storeDir)
		if err != nil {
			return
		}
		s := n.String()
		// Every field goes into a protobuf string: it must be UTF-8.
		if !utf8.ValidString(s) {
			t.Fatalf("Parse accepted a narinfo that is not UTF-8: %q", s)
		}
		again, err := narinfo.Parse(strings.NewReader(s), storeDir)
		if err != nil {
			t.Fatalf("Parse(String()) of %q: %v\n%s", text, err, s)
		}
		if s2 := again.String(); s2 != s {
			t.Fatalf("String not stable:\n%s\n%s", s, s2)
		}
		if _, err := n.Fingerprint(storeDir); err != nil && n.NarHash.Algo == nixhash.SHA256 {
			t.Fatalf("Fingerprint of a parsed narinfo: %v", err)
		}
	})
}
