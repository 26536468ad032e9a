package report

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestRatios(t *testing.T) {
	r := &Results{
		Rounds: 5,
		Servers: []Server{
			{Name: "nixcache-none", Baseline: "nginx-none", PushBaseline: "file-none"},
			{Name: "nixcache-local", Baseline: "nginx-none", Unavailable: "no -local-store"},
			{Name: "nginx-none"},
			{Name: "file-none"},
		},
		Measures: []Measure{
			{Server: "nixcache-none", Figure: Narinfo, Median: 0.11},
			{Server: "nginx-none", Figure: Narinfo, Median: 0.10},
			{Server: "nixcache-none", Figure: Nar1, Median: 2.0},
			{Server: "nginx-none", Figure: Nar1, Median: 1.0},
			{Server: "nixcache-none", Figure: Push, Median: 12},
			{Server: "file-none", Figure: Push, Median: 10},
			{Server: "nixcache-none", Figure: ClientPush, Median: 9, CPU: 2},
			{Server: "nixcache-none", Figure: Repush, Median: 0.05},
		},
	}
	r.ComputeRatios()
	tests := []struct {
		figure string
		ratio  float64
		pass   bool
	}{
		{Narinfo, 1.1, true},
		{Nar1, 2.0, false},
		{Push, 1.2, true},
		{ClientPush, 0.9, true}, // against file://'s nix copy
	}
	for _, tt := range tests {
		ra := r.Ratio("nixcache-none", tt.figure)
		if ra == nil {
			t.Fatalf("no ratio for %s", tt.figure)
		}
		if d := ra.Ratio - tt.ratio; d > 1e-9 || d < -1e-9 || ra.Pass != tt.pass {
			t.Errorf("%s: ratio %.3f pass %v, want %.3f %v", tt.figure, ra.Ratio, ra.Pass, tt.ratio, tt.pass)
		}
	}
	if r.Ratio("nixcache-none", Nar16) != nil || r.Ratio("nixcache-local", Narinfo) != nil {
		t.Error("a ratio without measures, or for an unavailable server")
	}
	var b strings.Builder
	r.RatioTable(&b)
	for _, want := range []string{"1.10x pass", "2.00x **miss**", "not available"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("ratio table lacks %q:\n%s", want, b.String())
		}
	}
	// The whole report and the plot render.
	b.Reset()
	r.Markdown(&b)
	if !strings.Contains(b.String(), "every path present (one missing-paths request): 0.050 s") {
		t.Errorf("the report lacks the re-push:\n%s", b.String())
	}
	if err := r.WritePNG(filepath.Join(t.TempDir(), "plot.png")); err != nil {
		t.Fatal(err)
	}
}
