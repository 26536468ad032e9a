package narstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/nix/compression"
	"github.com/nixcache/nixcache/nix/nixhash"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/fault"
	"github.com/nixcache/nixcache/services/index/internal/narstore"
	"github.com/nixcache/nixcache/services/index/internal/nartest"
)

const testLimit = 1 << 20

func open(t *testing.T, dir string, limit uint64) *narstore.Store {
	t.Helper()
	s, err := narstore.Open(dir, limit)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// storedFiles lists the files under dir/sub.
func storedFiles(t *testing.T, dir, sub string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(dir, sub), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// ingestModes are the two ways in: streamed (Ingest), and spooled into a
// file the store handed out and the uploader closed (IngestSpooled).
var ingestModes = []string{"streamed", "spooled"}

// ingest stores file the way mode names.
func ingest(t *testing.T, s *narstore.Store, mode string, file []byte, want narstore.Expect) (*indexv1.NarFile, error) {
	t.Helper()
	if mode == "streamed" {
		return s.Ingest(context.Background(), bytes.NewReader(file), want)
	}
	w, r, err := s.SpoolFile()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(file); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return s.IngestSpooled(context.Background(), r, want)
}

func TestIngestValid(t *testing.T) {
	for _, mode := range ingestModes {
		t.Run(mode, func(t *testing.T) { testIngestValid(t, mode) })
	}
}

func testIngestValid(t *testing.T, mode string) {
	narData := nartest.Small(t, 1)
	tests := []struct {
		name string
		comp string
		file []byte
	}{
		{"none", compression.None, narData},
		{"xz", compression.XZ, nartest.Compress(t, compression.XZ, narData)},
		{"zstd", compression.Zstd, nartest.Compress(t, compression.Zstd, narData)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, testLimit)
			want := &indexv1.NarFile{
				FileHash:    nartest.Hash(tt.file).String(),
				FileSize:    uint64(len(tt.file)),
				Compression: tt.comp,
				NarHash:     nartest.Hash(narData).String(),
				NarSize:     uint64(len(narData)),
			}
			got, err := ingest(t, s, mode, tt.file, narstore.Expect{
				FileHash: nartest.Hash(tt.file), Compression: tt.comp,
			})
			if err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			assertNarFile(t, got, want)
			assertStored(t, dir, s, got, tt.file, narData)

			// The same file again: same answer, one file.
			again, err := ingest(t, s, mode, tt.file, narstore.Expect{})
			if err != nil {
				t.Fatalf("second Ingest: %v", err)
			}
			assertNarFile(t, again, want)
			if files := storedFiles(t, dir, "nars"); len(files) != 1 {
				t.Errorf("stored files after two uploads: %v, want one", files)
			}
		})
	}
}

// TestIngestRepairsRottedFile: a stored file damaged on disk is replaced
// by the verified bytes of the same file uploaded again.
func TestIngestRepairsRottedFile(t *testing.T) {
	narData := nartest.Small(t, 2)
	dir := t.TempDir()
	s := open(t, dir, testLimit)
	if _, err := s.Ingest(context.Background(), bytes.NewReader(narData), narstore.Expect{}); err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	files := storedFiles(t, dir, "nars")
	if len(files) != 1 {
		t.Fatalf("stored files: %v, want one", files)
	}
	rotted := bytes.Clone(narData)
	rotted[len(rotted)/2] ^= 0xff
	if err := os.WriteFile(files[0], rotted, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ingest(context.Background(), bytes.NewReader(narData), narstore.Expect{}); err != nil {
		t.Fatalf("Ingest again: %v", err)
	}
	got, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, narData) {
		t.Error("the rotted file was kept; want it replaced by the verified upload")
	}
}

// TestIngestRealNix uploads files the real Nix wrote with nix copy, in
// every compression, and compares with the hashes its narinfo states.
func TestIngestRealNix(t *testing.T) {
	for _, comp := range []string{compression.None, compression.XZ, compression.Zstd, compression.Bzip2} {
		t.Run(comp, func(t *testing.T) {
			c := nartest.NixCopy(t, comp)
			dir := t.TempDir()
			s := open(t, dir, testLimit)
			got, err := s.Ingest(context.Background(), bytes.NewReader(c.File), narstore.Expect{FileHash: c.Info.FileHash, Compression: c.Info.EffectiveCompression()})
			if err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			want := &indexv1.NarFile{
				FileHash:    c.Info.FileHash.String(),
				FileSize:    c.Info.FileSize,
				Compression: c.Info.EffectiveCompression(),
				NarHash:     c.Info.NarHash.String(),
				NarSize:     c.Info.NarSize,
			}
			assertNarFile(t, got, want)
			assertStored(t, dir, s, got, c.File, c.NAR)
			ext, _ := compression.Extension(comp)
			if !strings.HasSuffix(c.Info.URL, "/"+c.Info.FileHash.NixBase32()+".nar"+ext) {
				t.Errorf("nix named the file %s; the store names it %s.nar%s", c.Info.URL, c.Info.FileHash.NixBase32(), ext)
			}
		})
	}
}

func assertNarFile(t *testing.T, got, want *indexv1.NarFile) {
	t.Helper()
	if got.GetFileHash() != want.GetFileHash() || got.GetFileSize() != want.GetFileSize() ||
		got.GetCompression() != want.GetCompression() || got.GetNarHash() != want.GetNarHash() ||
		got.GetNarSize() != want.GetNarSize() {
		t.Errorf("NarFile:\n got %v\nwant %v", got, want)
	}
}

// assertStored checks the file on disk and what Open reads back.
func assertStored(t *testing.T, dir string, s *narstore.Store, nf *indexv1.NarFile, file, narData []byte) {
	t.Helper()
	h, _ := nixhash.Parse(nf.GetFileHash())
	ext, _ := compression.Extension(nf.GetCompression())
	name := filepath.Join(dir, "nars", h.NixBase32()[:2], h.NixBase32()+".nar"+ext)
	onDisk, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("stored file: %v", err)
	}
	if !bytes.Equal(onDisk, file) {
		t.Errorf("stored file differs from the upload")
	}
	if tmp := storedFiles(t, dir, "tmp"); len(tmp) != 0 {
		t.Errorf("tmp/ holds %v after the upload", tmp)
	}
	for _, decompress := range []bool{false, true} {
		want := file
		if decompress {
			want = narData
		}
		got := readRange(t, s, nf, decompress, 0, 0)
		if !bytes.Equal(got, want) {
			t.Errorf("Open(decompress=%v) read %d bytes, want the %d bytes", decompress, len(got), len(want))
		}
	}
}

func readRange(t *testing.T, s *narstore.Store, nf *indexv1.NarFile, decompress bool, off, n uint64) []byte {
	t.Helper()
	rg, err := s.Open(context.Background(), nf, decompress, off, n)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer rg.Close()
	got, err := io.ReadAll(rg)
	if err != nil {
		t.Fatalf("read range: %v", err)
	}
	if uint64(len(got)) != rg.Length {
		t.Errorf("read %d bytes, Length says %d", len(got), rg.Length)
	}
	return got
}

func TestIngestRefused(t *testing.T) {
	for _, mode := range ingestModes {
		t.Run(mode, func(t *testing.T) { testIngestRefused(t, mode) })
	}
}

func testIngestRefused(t *testing.T, mode string) {
	narData := nartest.Small(t, 2)
	xzFile := nartest.Compress(t, compression.XZ, narData)
	zstdFile := nartest.Compress(t, compression.Zstd, narData)

	corrupted := bytes.Clone(narData)
	// Byte 32 is the "(" token after the magic.
	corrupted[32] = 'X'
	badXZ := bytes.Clone(xzFile)
	badXZ[len(badXZ)/2] ^= 0xff
	// 4 MiB of zeros in one file compresses to a few hundred bytes.
	bomb := nartest.Compress(t, compression.Zstd, nartest.Build(t, 3, nartest.File{Name: "zeros", Contents: make([]byte, 4<<20)}))
	big := nartest.Build(t, 4, nartest.File{Name: "big", Contents: make([]byte, testLimit)})

	tests := []struct {
		name   string
		file   []byte
		expect narstore.Expect
		want   string
	}{
		{"empty", nil, narstore.Expect{}, "empty upload"},
		{"not a NAR", []byte("<html>this is not a NAR file at all</html>"), narstore.Expect{}, "not a NAR file"},
		{"too short to tell", []byte{0x0d, 0, 0}, narstore.Expect{}, "invalid NAR"},
		{"corrupted NAR", corrupted, narstore.Expect{}, "invalid NAR"},
		{"truncated NAR", narData[:len(narData)-9], narstore.Expect{}, "invalid NAR"},
		{"trailing bytes after NAR", append(bytes.Clone(narData), 0, 0, 0, 0, 0, 0, 0, 0), narstore.Expect{}, "trailing"},
		{"truncated xz", xzFile[:len(xzFile)-20], narstore.Expect{}, "decompress xz"},
		{"corrupted xz", badXZ, narstore.Expect{}, "decompress xz"},
		{"truncated zstd", zstdFile[:len(zstdFile)-10], narstore.Expect{}, "decompress zstd"},
		{"compressed non-NAR", nartest.Compress(t, compression.Zstd, []byte("hello, not a nar, but long enough")), narstore.Expect{}, "invalid NAR"},
		{"wrong expected hash", xzFile, narstore.Expect{FileHash: nartest.Hash(narData)}, "file hash mismatch: the URL names " + nartest.Hash(narData).String() + " but the uploaded file hashes to " + nartest.Hash(xzFile).String()},
		{"wrong expected compression", xzFile, narstore.Expect{Compression: compression.Zstd}, "compression mismatch: the URL names zstd but the uploaded file is xz"},
		{"unknown expected compression", xzFile, narstore.Expect{Compression: "gzip"}, "expected compression"},
		{"file over the limit", big, narstore.Expect{}, "NAR file exceeds the limit of 1048576 bytes"},
		{"decompresses over the limit", bomb, narstore.Expect{}, "decompressed NAR exceeds the limit of 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, testLimit)
			nf, err := ingest(t, s, mode, tt.file, tt.expect)
			if err == nil {
				t.Fatalf("Ingest succeeded (%v), want an error saying %q", nf, tt.want)
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, fault.ErrInvalid) {
				t.Errorf("error %q is not of class ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if files := append(storedFiles(t, dir, "nars"), storedFiles(t, dir, "tmp")...); len(files) != 0 {
				t.Errorf("files left behind: %v", files)
			}
		})
	}
}

// TestIngestExactLimit accepts a NAR exactly as large as the limit.
func TestIngestExactLimit(t *testing.T) {
	narData := nartest.Small(t, 5)
	s := open(t, t.TempDir(), uint64(len(narData)))
	if _, err := s.Ingest(context.Background(), bytes.NewReader(narData), narstore.Expect{}); err != nil {
		t.Fatalf("Ingest of a NAR of exactly the limit: %v", err)
	}
	zs := nartest.Compress(t, compression.Zstd, narData)
	if _, err := s.Ingest(context.Background(), bytes.NewReader(zs), narstore.Expect{}); err != nil {
		t.Fatalf("Ingest of a zstd NAR decompressing to exactly the limit: %v", err)
	}
}

// TestIngestUploaderGone: the upload stream fails midway (the client went
// away); nothing is left behind and the stream's error comes back.
func TestIngestUploaderGone(t *testing.T) {
	narData := nartest.Build(t, 6, nartest.File{Name: "f", Contents: bytes.Repeat([]byte("abc"), 200000)})
	for _, comp := range []string{compression.None, compression.XZ} {
		t.Run(comp, func(t *testing.T) {
			file := nartest.Compress(t, comp, narData)
			dir := t.TempDir()
			s := open(t, dir, testLimit)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, err := s.Ingest(ctx, nartest.FailingReader(file, len(file)/2, context.Canceled), narstore.Expect{})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Ingest error %v, want context.Canceled", err)
			}
			if files := append(storedFiles(t, dir, "nars"), storedFiles(t, dir, "tmp")...); len(files) != 0 {
				t.Errorf("files left behind: %v", files)
			}
		})
	}
}

// TestOpenClearsTmp: an upload an earlier run left in tmp/ is removed.
func TestOpenClearsTmp(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, testLimit)
	stale := filepath.Join(dir, "tmp", "upload-123")
	if err := os.WriteFile(stale, []byte("half an upload"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir, testLimit)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale upload still there after Open: %v", err)
	}
	if n := s.LeftoverUploads(); n != 1 {
		t.Errorf("LeftoverUploads = %d, want 1", n)
	}
	if n := open(t, dir, testLimit).LeftoverUploads(); n != 0 {
		t.Errorf("LeftoverUploads of a clean start = %d, want 0", n)
	}
}

func TestOpenRange(t *testing.T) {
	narData := nartest.Build(t, 7, nartest.File{Name: "f", Contents: bytes.Repeat([]byte("0123456789"), 100000)})
	dir := t.TempDir()
	s := open(t, dir, 16<<20)
	for _, comp := range []string{compression.None, compression.Zstd} {
		file := nartest.Compress(t, comp, narData)
		nf, err := s.Ingest(context.Background(), bytes.NewReader(file), narstore.Expect{})
		if err != nil {
			t.Fatal(err)
		}
		total := uint64(len(narData))
		tests := []struct {
			name     string
			off, n   uint64
			from, to uint64
		}{
			{"whole", 0, 0, 0, total},
			{"prefix", 0, 100, 0, 100},
			{"middle", 12345, 54321, 12345, 12345 + 54321},
			{"suffix", total - 10, 0, total - 10, total},
			{"length past the end", total - 10, 1000, total - 10, total},
			{"last byte", total - 1, 1, total - 1, total},
		}
		for _, tt := range tests {
			t.Run(comp+"/"+tt.name, func(t *testing.T) {
				got := readRange(t, s, nf, true, tt.off, tt.n)
				if !bytes.Equal(got, narData[tt.from:tt.to]) {
					t.Errorf("read %d bytes, want bytes %d..%d", len(got), tt.from, tt.to)
				}
			})
		}
		t.Run(comp+"/offset at the end", func(t *testing.T) {
			_, err := s.Open(context.Background(), nf, true, total, 0)
			if !errors.Is(err, fault.ErrOutOfRange) {
				t.Errorf("Open at the end: %v, want ErrOutOfRange", err)
			}
		})
	}
}

// TestRangeDamagedFile: a stored file cut short reads as an error, never
// as a short NAR.
func TestRangeDamagedFile(t *testing.T) {
	narData := nartest.Small(t, 8)
	dir := t.TempDir()
	s := open(t, dir, testLimit)
	nf, err := s.Ingest(context.Background(), bytes.NewReader(narData), narstore.Expect{})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := nixhash.Parse(nf.GetFileHash())
	name := filepath.Join(dir, "nars", h.NixBase32()[:2], h.NixBase32()+".nar")
	if err := os.Truncate(name, 100); err != nil {
		t.Fatal(err)
	}
	rg, err := s.Open(context.Background(), nf, false, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rg.Close()
	if _, err := io.ReadAll(rg); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading a truncated file: %v, want io.ErrUnexpectedEOF", err)
	}
}

// chunked delivers data in chunks through WriteTo, as the gRPC upload
// stream does, and through Read for what is read before.
type chunked struct {
	data  []byte
	chunk int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data[:min(len(c.data), c.chunk)])
	c.data = c.data[n:]
	return n, nil
}

func (c *chunked) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for len(c.data) > 0 {
		n, err := w.Write(c.data[:min(len(c.data), c.chunk)])
		total += int64(n)
		c.data = c.data[n:]
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// TestIngestLarge streams a NAR of several writeback windows, as chunks
// written straight through (WriteTo) and as plain reads: both store the
// same verified file.
func TestIngestLarge(t *testing.T) {
	big := make([]byte, 20<<20)
	for i := range big {
		big[i] = byte(i * 7 / 3)
	}
	narData := nartest.Build(t, 9, nartest.File{Name: "big", Contents: big})
	want := &indexv1.NarFile{FileHash: nartest.Hash(narData).String(), FileSize: uint64(len(narData)), Compression: compression.None,
		NarHash: nartest.Hash(narData).String(), NarSize: uint64(len(narData))}
	for _, tt := range []struct {
		name string
		r    io.Reader
	}{
		{"WriteTo", &chunked{data: narData, chunk: 256 << 10}},
		{"Read", struct{ io.Reader }{bytes.NewReader(narData)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, 64<<20)
			got, err := s.Ingest(context.Background(), tt.r, narstore.Expect{FileHash: nartest.Hash(narData)})
			if err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			assertNarFile(t, got, want)
			assertStored(t, dir, s, got, narData, narData)
		})
	}
	// Over the limit, through WriteTo: refused, nothing left behind.
	dir := t.TempDir()
	s := open(t, dir, 8<<20)
	_, err := s.Ingest(context.Background(), &chunked{data: narData, chunk: 256 << 10}, narstore.Expect{})
	if !errors.Is(err, fault.ErrInvalid) || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("Ingest over the limit: %v", err)
	}
	if files := append(storedFiles(t, dir, "nars"), storedFiles(t, dir, "tmp")...); len(files) != 0 {
		t.Errorf("left behind: %v", files)
	}
}

// TestIngestSpooledOpenForWriting: a spool file that a descriptor open
// for writing can still change, the uploader's or one opened since, is
// refused before a byte of it is verified, and removed.
func TestIngestSpooledOpenForWriting(t *testing.T) {
	narData := nartest.Small(t, 6)
	for _, tt := range []struct {
		name   string
		writer func(t *testing.T, w *os.File) *os.File
	}{
		{"the uploader's, never closed", func(t *testing.T, w *os.File) *os.File { return w }},
		{"another, opened by name", func(t *testing.T, w *os.File) *os.File {
			w.Close()
			other, err := os.OpenFile(w.Name(), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			return other
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, testLimit)
			w, r, err := s.SpoolFile()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(narData); err != nil {
				t.Fatal(err)
			}
			writer := tt.writer(t, w)
			defer writer.Close()
			nf, err := s.IngestSpooled(context.Background(), r, narstore.Expect{})
			if err == nil {
				t.Fatalf("IngestSpooled succeeded (%v) with a descriptor open for writing", nf)
			}
			if !errors.Is(err, fault.ErrInvalid) || !strings.Contains(err.Error(), "still open for writing") {
				t.Errorf("error %q: want ErrInvalid saying the file is still open for writing", err)
			}
			if files := append(storedFiles(t, dir, "nars"), storedFiles(t, dir, "tmp")...); len(files) != 0 {
				t.Errorf("files left behind: %v", files)
			}
		})
	}
}
