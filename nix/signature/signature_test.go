package signature_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/internal/nixtest"
	"github.com/nixcache/nixcache/nix/narinfo"
	"github.com/nixcache/nixcache/nix/nixhash"
	"github.com/nixcache/nixcache/nix/signature"
)

const storeDir = nixtest.StoreDir

// TestNixKeyPair parses a pair made by nix-store --generate-binary-cache-key.
func TestNixKeyPair(t *testing.T) {
	secFile, pubFile := nixtest.GenerateKey(t, "cache.example.org-1")
	sec := string(nixtest.ReadFile(t, secFile))
	pub := string(nixtest.ReadFile(t, pubFile))

	k, err := signature.LoadSecretKeyFile(secFile)
	if err != nil {
		t.Fatal(err)
	}
	if k.Name != "cache.example.org-1" {
		t.Errorf("Name = %q", k.Name)
	}
	if k.Encode() != sec {
		t.Error("Encode() differs from the file nix wrote")
	}
	if got := k.Public().String(); got != pub {
		t.Errorf("Public() = %s, nix wrote %s", got, pub)
	}
	p, err := signature.ParsePublicKey(pub)
	if err != nil || p.String() != pub || !bytes.Equal(p.Key, k.Public().Key) {
		t.Errorf("ParsePublicKey(%s) = %v, %v", pub, p, err)
	}
}

// cacheNarinfos parses every narinfo of a file:// cache.
func cacheNarinfos(t *testing.T, dir string) []*narinfo.NarInfo {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.narinfo"))
	if len(files) == 0 {
		t.Fatalf("no narinfo in %s", dir)
	}
	var out []*narinfo.NarInfo
	for _, f := range files {
		n, err := narinfo.Parse(bytes.NewReader(nixtest.ReadFile(t, f)), storeDir)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

// TestSignLikeNix signs with a key nix made the fingerprints of paths nix
// signed with it (nix copy secret-key=): ed25519 is deterministic, so the
// signatures must be identical.
func TestSignLikeNix(t *testing.T) {
	secFile, pubFile := nixtest.GenerateKey(t, "test-1")
	store := nixtest.NewStore(t)
	top := store.BuildSample(t)
	cache := store.CopyToFileCache(t, "none", secFile, top)

	k, err := signature.LoadSecretKeyFile(secFile)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := signature.ParsePublicKey(string(nixtest.ReadFile(t, pubFile)))
	if err != nil {
		t.Fatal(err)
	}
	infos := cacheNarinfos(t, cache)
	if len(infos) != 3 {
		t.Fatalf("%d narinfos, want 3", len(infos))
	}
	refs := 0
	for _, n := range infos {
		refs += len(n.References)
		fp, err := n.Fingerprint(storeDir)
		if err != nil {
			t.Fatal(err)
		}
		if len(n.Sigs) != 1 {
			t.Fatalf("%s: %d signatures, want 1", n.StorePath, len(n.Sigs))
		}
		if got := k.Sign(fp); got != n.Sigs[0] {
			t.Errorf("%s: we sign %s, nix signed %s (fingerprint %q)", n.StorePath, got, n.Sigs[0], fp)
		}
		if !pub.Verify(fp, n.Sigs[0]) {
			t.Errorf("%s: Verify rejects nix's signature", n.StorePath)
		}
		if _, err := signature.ParseFingerprint(storeDir, fp); err != nil {
			t.Errorf("ParseFingerprint(%q): %v", fp, err)
		}
	}
	if refs < 3 {
		t.Fatalf("the sample has %d references, want 3: fingerprints with references untested", refs)
	}
}

// TestNixAcceptsOurKey signs a cache with a key made by Generate, through
// nix copy, and has nix verify it with our public key.
func TestNixAcceptsOurKey(t *testing.T) {
	k, err := signature.Generate("nixcache-test-1")
	if err != nil {
		t.Fatal(err)
	}
	secFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secFile, []byte(k.Encode()), 0o600); err != nil {
		t.Fatal(err)
	}
	store := nixtest.NewStore(t)
	top := store.BuildSample(t)
	cache := store.CopyToFileCache(t, "none", secFile, top)
	for _, n := range cacheNarinfos(t, cache) {
		fp, err := n.Fingerprint(storeDir)
		if err != nil {
			t.Fatal(err)
		}
		if len(n.Sigs) != 1 || n.Sigs[0] != k.Sign(fp) {
			t.Errorf("%s: nix signed %q with our key, we sign %q", n.StorePath, n.Sigs, k.Sign(fp))
		}
	}
	cacheURI := "file://" + cache
	nixtest.Run(t, "nix", "store", "verify", "--store", cacheURI, "--trusted-public-keys", k.Public().String(), "--all")

	// Another key of the same name: nix must refuse, or the check above
	// proves nothing.
	other, _ := signature.Generate("nixcache-test-1")
	if _, err := nixtest.Try(t, nil, "nix", "store", "verify", "--store", cacheURI, "--trusted-public-keys", other.Public().String(), "--all"); err == nil {
		t.Fatal("nix store verify accepted the signatures with the wrong public key")
	}
}

func TestLoadSecretKeyFilePermissions(t *testing.T) {
	k, _ := signature.Generate("perm-test")
	tests := []struct {
		mode    os.FileMode
		content string
		wantErr string
	}{
		{0o600, k.Encode(), ""},
		{0o400, k.Encode(), ""},
		{0o600, k.Encode() + "\n", ""},
		{0o640, k.Encode(), "chmod 600"},
		{0o604, k.Encode(), "group or others"},
		{0o620, k.Encode(), "chmod 600"},
		{0o602, k.Encode(), "chmod 600"},
		{0o644, k.Encode(), "0644"},
		{0o600, "", "no ':'"},
		{0o600, "perm-test:" + base64.StdEncoding.EncodeToString(make([]byte, 63)), "63 bytes, want 64"},
		{0o600, strings.Repeat("x", 5000), "larger than"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%04o/%.12s", tt.mode, tt.wantErr), func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "key")
			if err := os.WriteFile(file, []byte(tt.content), tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, tt.mode); err != nil {
				t.Fatal(err)
			}
			got, err := signature.LoadSecretKeyFile(file)
			if tt.wantErr == "" {
				if err != nil || got.Encode() != k.Encode() {
					t.Fatalf("LoadSecretKeyFile: %v, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("LoadSecretKeyFile = %v; want error containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), k.Encode()[10:]) {
				t.Fatalf("error reveals the key: %v", err)
			}
		})
	}
	if _, err := signature.LoadSecretKeyFile(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("LoadSecretKeyFile of a missing file succeeded")
	}
	if _, err := signature.LoadSecretKeyFile(t.TempDir()); err == nil {
		t.Error("LoadSecretKeyFile of a directory succeeded")
	}
}

// secretForms lists ways the key material of k could show up in text.
func secretForms(t *testing.T, k signature.SecretKey) []string {
	t.Helper()
	_, b64, _ := strings.Cut(k.Encode(), ":")
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 64 {
		t.Fatalf("Encode() = %q: not 64 bytes of base64", k.Encode())
	}
	seed := raw[:32]
	dec := strings.Trim(fmt.Sprint(seed[:6]), "[]") // as fmt prints a []byte: "12 200 3 ..."
	return []string{
		b64[:20],
		base64.StdEncoding.EncodeToString(seed)[:20],
		base64.RawURLEncoding.EncodeToString(seed)[:20],
		hex.EncodeToString(seed[:8]),
		strings.ToUpper(hex.EncodeToString(seed[:8])),
		string(seed[:8]),
		dec,
		fmt.Sprintf("%q", seed)[1:20],
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	k, err := signature.Generate("redact-test")
	if err != nil {
		t.Fatal(err)
	}
	forms := secretForms(t, k)
	// The forms do find the key where it is: Encode.
	if !strings.Contains(k.Encode(), forms[0]) {
		t.Fatal("secretForms does not match Encode()")
	}

	type exported struct {
		Key   signature.SecretKey
		Other int
	}
	type unexported struct {
		key   signature.SecretKey
		other int //nolint:unused // an unexported field beside the key, as in a real struct
	}
	var outputs []string
	for _, v := range []any{k, &k, exported{Key: k}, &exported{Key: k}, unexported{key: k}, &unexported{key: k}, []signature.SecretKey{k}, map[string]signature.SecretKey{"k": k}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
		outputs = append(outputs, fmt.Sprint(v), fmt.Sprintln(v))
	}
	outputs = append(outputs, k.String(), k.GoString())

	for _, newHandler := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
	} {
		var buf bytes.Buffer
		log := slog.New(newHandler(&buf))
		log.Info("key", "key", k, "ptr", &k, "struct", exported{Key: k}, "any", any(k))
		log.Info("attr", slog.Any("key", k))
		outputs = append(outputs, buf.String())
	}

	if want := "SecretKey(redact-test, redacted)"; k.String() != want {
		t.Errorf("String() = %q, want %q", k.String(), want)
	}
	for _, out := range outputs {
		for _, f := range forms {
			if strings.Contains(out, f) {
				t.Errorf("output reveals the key (%q): %s", f, out)
			}
		}
	}
}

func TestSecretNotInErrors(t *testing.T) {
	k, _ := signature.Generate("err-test")
	enc := k.Encode()
	_, b64, _ := strings.Cut(enc, ":")
	raw, _ := base64.StdEncoding.DecodeString(b64)
	mismatched := append(append([]byte{}, raw[:32]...), make([]byte, 32)...)
	for _, in := range []string{
		b64,                            // no name
		":" + b64,                      // empty name
		"a b:" + b64,                   // bad name
		"err-test:" + b64[:len(b64)-4], // truncated
		"err-test:" + b64 + "!",        // not base64
		"err-test:" + base64.StdEncoding.EncodeToString(raw[:32]),   // seed only
		"err-test:" + base64.StdEncoding.EncodeToString(mismatched), // wrong public half
		"err-test:" + strings.TrimRight(b64, "=") + "\x00",          // NUL
	} {
		_, err := signature.ParseSecretKey(in)
		if err == nil {
			t.Errorf("ParseSecretKey(%.20q...) succeeded", in)
			continue
		}
		for _, f := range secretForms(t, k) {
			if strings.Contains(err.Error(), f) {
				t.Errorf("error reveals the key: %v", err)
			}
		}
	}
}

func TestGenerateAndParse(t *testing.T) {
	k, err := signature.Generate("gen-1")
	if err != nil {
		t.Fatal(err)
	}
	k2, err := signature.ParseSecretKey(k.Encode())
	if err != nil || k2.Encode() != k.Encode() || k2.Name != "gen-1" {
		t.Fatalf("ParseSecretKey(Encode()) = %v, %v", k2, err)
	}
	sig := k.Sign("1;x")
	if !k.Public().Verify("1;x", sig) || !k2.Public().Verify("1;x", sig) {
		t.Error("Verify rejects our own signature")
	}
	for _, name := range []string{"", "a:b", "a b", "a\nb", "a\tb", strings.Repeat("n", 300), "\xff"} {
		if _, err := signature.Generate(name); err == nil {
			t.Errorf("Generate(%q) succeeded", name)
		}
	}
}

func TestVerify(t *testing.T) {
	k, _ := signature.Generate("v-1")
	other, _ := signature.Generate("v-2")
	pub := k.Public()
	fp := "1;/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-a;sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;1;"
	sig := k.Sign(fp)
	_, b64, _ := strings.Cut(sig, ":")
	tests := []struct {
		name string
		fp   string
		sig  string
		want bool
	}{
		{"valid", fp, sig, true},
		{"other fingerprint", fp + "x", sig, false},
		{"other key's signature", fp, other.Sign(fp), false},
		{"other key's signature renamed", fp, "v-1:" + strings.TrimPrefix(other.Sign(fp), "v-2:"), false},
		{"our signature under another name", fp, "v-2:" + b64, false},
		{"no name", fp, b64, false},
		{"truncated", fp, sig[:len(sig)-4], false},
		{"garbage", fp, "v-1:!!!!", false},
		{"empty", fp, "", false},
	}
	for _, tt := range tests {
		if got := pub.Verify(tt.fp, tt.sig); got != tt.want {
			t.Errorf("%s: Verify = %v, want %v", tt.name, got, tt.want)
		}
	}
	if (signature.PublicKey{Name: "v-1"}).Verify(fp, sig) {
		t.Error("a PublicKey without key verified a signature")
	}
}

func TestSplitSignature(t *testing.T) {
	sig64 := base64.StdEncoding.EncodeToString(make([]byte, 64))
	tests := []struct {
		in, wantErr string
	}{
		{"k:" + sig64, ""},
		{"k:" + base64.StdEncoding.EncodeToString(make([]byte, 63)), "63 bytes, want 64"},
		{"k:" + strings.TrimRight(sig64, "="), "not valid base64"},
		{sig64, "no ':'"},
		{":" + sig64, "empty key name"},
		{"k:", "empty after the name"},
		{"k k:" + sig64, "contains ' '"},
	}
	for _, tt := range tests {
		name, raw, err := signature.SplitSignature(tt.in)
		if tt.wantErr == "" {
			if err != nil || name != "k" || len(raw) != ed25519.SignatureSize {
				t.Errorf("SplitSignature(%q) = %q, %d bytes, %v", tt.in, name, len(raw), err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("SplitSignature(%q) = %v; want error containing %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestParsePublicKeyErrors(t *testing.T) {
	for _, in := range []string{
		"", "k", "k:", ":" + base64.StdEncoding.EncodeToString(make([]byte, 32)),
		"k:" + base64.StdEncoding.EncodeToString(make([]byte, 31)),
		"k:" + base64.StdEncoding.EncodeToString(make([]byte, 64)),
		"k:" + strings.Repeat("!", 44),
	} {
		if p, err := signature.ParsePublicKey(in); err == nil {
			t.Errorf("ParsePublicKey(%q) = %v", in, p)
		}
	}
}

const (
	fpPath = "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-hello-2.12"
	fpHash = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
	fpRef1 = "/nix/store/1mdqa9w1p6cmli6976v4wi0sw9r4p5pr-glibc"
	fpRef2 = "/nix/store/2mdqa9w1p6cmli6976v4wi0sw9r4p5pr-hello-2.12"
)

func TestFingerprint(t *testing.T) {
	h, err := nixhash.Parse(fpHash)
	if err != nil {
		t.Fatal(err)
	}
	refs := []string{"2mdqa9w1p6cmli6976v4wi0sw9r4p5pr-hello-2.12", "1mdqa9w1p6cmli6976v4wi0sw9r4p5pr-glibc", "1mdqa9w1p6cmli6976v4wi0sw9r4p5pr-glibc"}
	got := signature.Fingerprint(storeDir, fpPath, h, 1234, refs)
	want := "1;" + fpPath + ";" + fpHash + ";1234;" + fpRef1 + "," + fpRef2
	if got != want {
		t.Errorf("Fingerprint = %q, want %q", got, want)
	}
	if refs[0] != "2mdqa9w1p6cmli6976v4wi0sw9r4p5pr-hello-2.12" {
		t.Error("Fingerprint reordered its argument")
	}
	if got := signature.Fingerprint(storeDir, fpPath, h, 1, nil); got != "1;"+fpPath+";"+fpHash+";1;" {
		t.Errorf("Fingerprint without references = %q", got)
	}
	p, err := signature.ParseFingerprint(storeDir, want)
	if err != nil {
		t.Fatal(err)
	}
	if p.StorePath != fpPath || !p.NarHash.Equal(h) || p.NarSize != 1234 || strings.Join(p.References, ",") != fpRef1+","+fpRef2 {
		t.Errorf("ParseFingerprint = %+v", p)
	}
}

func TestParseFingerprintHostile(t *testing.T) {
	base := func(size, refs string) string { return "1;" + fpPath + ";" + fpHash + ";" + size + ";" + refs }
	tests := []struct {
		name, fp, wantErr string
	}{
		{"valid", base("1", ""), ""},
		{"valid refs", base("1", fpRef1+","+fpRef2), ""},
		{"valid self reference", base("1", fpPath), ""},
		{"max size", base("18446744073709551615", ""), ""},
		{"empty", "", "1 ';'-separated fields"},
		{"version 2", "2" + base("1", "")[1:], `version "2"`},
		{"version 01", "0" + base("1", ""), `version "01"`},
		{"version empty", base("1", "")[1:], "version"},
		{"extra field", base("1", "") + ";", "6 ';'-separated"},
		{"missing field", "1;" + fpPath + ";" + fpHash + ";1", "4 ';'-separated"},
		{"trailing newline", base("1", "") + "\n", "reference"},
		{"trailing newline after refs", base("1", fpRef1+"\n"), "reference 1"},
		{"newline in path", "1;" + fpPath + "\n;" + fpHash + ";1;", "store path"},
		{"CRLF", base("1", "") + "\r\n", "reference"},
		{"NUL", base("1", "\x00"), "reference"},
		{"relative path", "1;" + fpPath[11:] + ";" + fpHash + ";1;", "not in the store"},
		{"other store", "1;/gnu/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-x;" + fpHash + ";1;", "not in the store"},
		{"dotdot", "1;/nix/store/../etc/passwd;" + fpHash + ";1;", "not directly inside"},
		{"subpath", "1;" + fpPath + "/bin;" + fpHash + ";1;", "not directly inside"},
		{"bad name", "1;/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-a b;" + fpHash + ";1;", "illegal character"},
		{"hash hex", "1;" + fpPath + ";sha256:" + strings.Repeat("ab", 32) + ";1;", "not sha256:<52 nix32"},
		{"hash SRI", "1;" + fpPath + ";sha256-" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + ";1;", "not sha256:<52 nix32"},
		{"hash base64", "1;" + fpPath + ";sha256:" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + ";1;", "not sha256:<52 nix32"},
		{"hash untyped", "1;" + fpPath + ";" + fpHash[7:] + ";1;", "not sha256"},
		{"hash sha512", "1;" + fpPath + ";sha512:" + fpHash[7:] + ";1;", "not sha256"},
		{"hash bad char", "1;" + fpPath + ";sha256:e" + fpHash[8:] + ";1;", "invalid nix32"},
		{"hash padding bits", "1;" + fpPath + ";sha256:2" + fpHash[8:] + ";1;", "non-zero padding"},
		{"size 0", base("0", ""), "> 0 without leading zeros"},
		{"size 00", base("00", ""), "leading zeros"},
		{"size 01", base("01", ""), "leading zeros"},
		{"size empty", base("", ""), "not a decimal"},
		{"size negative", base("-1", ""), "not a decimal"},
		{"size plus", base("+1", ""), "not a decimal"},
		{"size space", base(" 1", ""), "not a decimal"},
		{"size hex", base("0x10", ""), "not a decimal"},
		{"size exponent", base("1e3", ""), "not a decimal"},
		{"size overflow", base("18446744073709551616", ""), "does not fit in 64 bits"},
		{"size unicode digit", base("١", ""), "not a decimal"},
		{"refs unsorted", base("1", fpRef2+","+fpRef1), "not sorted"},
		{"refs duplicate", base("1", fpRef1+","+fpRef1), "not sorted and unique"},
		{"refs empty element", base("1", fpRef1+",,"+fpRef2), "reference 2"},
		{"refs trailing comma", base("1", fpRef1+","), "reference 2"},
		{"refs leading comma", base("1", ","+fpRef1), "reference 1"},
		{"refs base name", base("1", fpRef1[11:]), "not in the store"},
		{"refs space separated", base("1", fpRef1+" "+fpRef2), "reference 1"},
		{"refs other store", base("1", "/gnu/store/"+fpRef1[11:]), "not in the store"},
		{"refs bad name", base("1", "/nix/store/1mdqa9w1p6cmli6976v4wi0sw9r4p5pr-a~x"), "illegal character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := signature.ParseFingerprint(storeDir, tt.fp)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseFingerprint(%q): %v", tt.fp, err)
				}
				if again := fingerprintOf(p); again != tt.fp {
					t.Fatalf("ParseFingerprint(%q) rebuilt as %q", tt.fp, again)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseFingerprint(%q) = %+v, %v; want error containing %q", tt.fp, p, err, tt.wantErr)
			}
		})
	}
	if _, err := signature.ParseFingerprint("/nix/store/", base("1", "")); err == nil {
		t.Error("ParseFingerprint with an unclean store dir succeeded")
	}
}

// fingerprintOf builds the fingerprint of a parsed one again.
func fingerprintOf(p signature.ParsedFingerprint) string {
	var refs []string
	for _, r := range p.References {
		refs = append(refs, strings.TrimPrefix(r, storeDir+"/"))
	}
	return signature.Fingerprint(storeDir, p.StorePath, p.NarHash, p.NarSize, refs)
}

func FuzzParseFingerprint(f *testing.F) {
	f.Add("1;" + fpPath + ";" + fpHash + ";1;")
	f.Add("1;" + fpPath + ";" + fpHash + ";1234;" + fpRef1 + "," + fpRef2)
	f.Add("1;" + fpPath + ";" + fpHash + ";01;" + fpRef2 + "," + fpRef1)
	f.Add("1;;;;")
	f.Add(";;;;;")
	f.Fuzz(func(t *testing.T, fp string) {
		p, err := signature.ParseFingerprint(storeDir, fp)
		if err != nil {
			return
		}
		if again := fingerprintOf(p); again != fp {
			t.Fatalf("ParseFingerprint(%q) accepted a non-canonical fingerprint (canonical: %q)", fp, again)
		}
		if strings.ContainsAny(fp, "\n\r\x00 ") {
			t.Fatalf("ParseFingerprint accepted %q", fp)
		}
	})
}
