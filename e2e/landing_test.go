package e2e

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestLandingPage opens the gateway's landing page in headless Chromium
// (Debian's chromium package) after a push: the page shows the signer's
// real public key and the cache's statistics, and renders to a sensible
// screenshot. With NIXCACHE_ARTIFACTS set to a directory, the screenshot
// and the DOM are copied there.
func TestLandingPage(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("Debian's chromium is required (scripts/tools.sh installs it): %v", err)
	}
	c := newCluster(t)
	top, closure := buildClosure(t)
	mustNix(t, nixConfig("netrc-file = "+c.netrc(c.pushToken)), "nix", "copy", "--to", c.URL+"?compression=zstd", top)

	out := t.TempDir()
	// The DOM after 15 s of virtual time: the page's script has refreshed
	// the statistics from /api/v1/stats once.
	dom := headless(t, chromium, "--virtual-time-budget=15000", "--dump-dom", c.URL+"/")
	if err := os.WriteFile(filepath.Join(out, "landing.html"), []byte(dom), 0o644); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(out, "landing.png")
	headless(t, chromium, "--screenshot="+shot, "--window-size=1200,900", "--hide-scrollbars", c.URL+"/")
	t.Logf("landing page screenshot: %s", shot)
	keepArtifacts(t, out, "landing.png", "landing.html")

	// The key the signer made (keygen wrote it to public.key), trusted in
	// the snippet and listed as active.
	wantConf := "substituters = " + c.URL + "\ntrusted-public-keys = " + c.publicKey
	if got := elementText(t, dom, "pre", "nix-conf"); !strings.HasPrefix(got, wantConf) {
		t.Errorf("nix.conf snippet %q, want it to start with %q", got, wantConf)
	}
	if !strings.Contains(dom, `<code class="public-key">`+html.EscapeString(c.publicKey)+"</code>") {
		t.Errorf("the key list lacks %s", c.publicKey)
	}
	if got := elementText(t, dom, "pre", "netrc"); !strings.HasPrefix(got, "machine 127.0.0.1 login nixcache password <your push token>") {
		t.Errorf("netrc line %q", got)
	}
	// The statistics after pushing one closure into an empty cache.
	for id, want := range map[string]string{
		"stat-paths":        fmt.Sprint(len(closure)),
		"stat-pushed-paths": fmt.Sprint(len(closure)),
	} {
		if got := elementText(t, dom, "span", id); got != want {
			t.Errorf("statistic %s is %q, want %q (stats error on the page: %q)", id, got, want, elementText(t, dom, "p", "stats-error"))
		}
	}
	if got := elementText(t, dom, "span", "stat-nar-bytes"); !regexp.MustCompile(`^[0-9.]+ (B|KiB|MiB)$`).MatchString(got) {
		t.Errorf("NAR size %q", got)
	}
	if got := elementText(t, dom, "span", "stats-updated"); !strings.HasPrefix(got, "Live · updated") {
		t.Errorf("the statistics were not refreshed from the JSON API: %q", got)
	}

	checkScreenshot(t, shot, 1200, 900)

	// With the index gone the page still renders and says so.
	c.stop("index")
	resp, err := http.Get(c.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if text := html.UnescapeString(string(body)); resp.StatusCode != http.StatusOK ||
		!strings.Contains(text, "Statistics unavailable: the index is not answering.") || !strings.Contains(text, c.publicKey) {
		t.Errorf("with the index stopped: status %d, page:\n%s", resp.StatusCode, body)
	}
}

// headless runs Chromium headless on args and returns what it printed.
func headless(t *testing.T, chromium string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--user-data-dir=" + t.TempDir(),
	}
	cmd := exec.CommandContext(ctx, chromium, append(base, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// elementText returns the text of the first element <tag id="id"> (any
// <tag> when id is ""), tags inside it removed and entities decoded.
func elementText(t *testing.T, dom, tag, id string) string {
	t.Helper()
	attrs := `[^>]*`
	if id != "" {
		attrs = `[^>]*\bid="` + regexp.QuoteMeta(id) + `"[^>]*`
	}
	m := regexp.MustCompile(`(?s)<` + tag + attrs + `>(.*?)</` + tag + `>`).FindStringSubmatch(dom)
	if m == nil {
		return ""
	}
	return html.UnescapeString(regexp.MustCompile(`<[^>]*>`).ReplaceAllString(m[1], ""))
}

// checkScreenshot checks that file is a PNG of width×height that shows
// more than a blank page.
func checkScreenshot(t *testing.T, file string, width, height int) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", file, err)
	}
	if b := img.Bounds(); b.Dx() != width || b.Dy() != height {
		t.Errorf("screenshot is %dx%d, want %dx%d", b.Dx(), b.Dy(), width, height)
	}
	if n := colours(img); n < 64 {
		t.Errorf("screenshot has %d colours: a blank or broken page", n)
	}
}

// colours counts the distinct colours of img.
func colours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
		}
	}
	return len(seen)
}

// keepArtifacts copies files from dir to $NIXCACHE_ARTIFACTS, if set.
func keepArtifacts(t *testing.T, dir string, files ...string) {
	t.Helper()
	dest := os.Getenv("NIXCACHE_ARTIFACTS")
	if dest == "" {
		return
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		t.Fatalf("artifacts: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("artifacts: %v", err)
		}
		if err := os.WriteFile(filepath.Join(dest, name), b, 0o644); err != nil {
			t.Fatalf("artifacts: %v", err)
		}
		t.Logf("artifact: %s", filepath.Join(dest, name))
	}
}
