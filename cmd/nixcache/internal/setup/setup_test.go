package setup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	nixConf, netrc := filepath.Join(dir, "nix.conf"), filepath.Join(dir, "netrc")
	if err := os.WriteFile(nixConf, []byte("sandbox = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(netrc, []byte("machine other.example password keep\nmachine cache.example login nixcache password old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{URL: "https://cache.example", Keys: []string{"cache-1:AAAA", "cache-2:BBBB"}, NetrcFile: netrc,
		Host: "cache.example", Token: "new"}
	for range 2 {
		if err := cfg.Write(nixConf); err != nil {
			t.Fatal(err)
		}
	}
	conf, _ := os.ReadFile(nixConf)
	wantConf := "sandbox = true\nextra-substituters = https://cache.example\nextra-trusted-public-keys = cache-1:AAAA cache-2:BBBB\nnetrc-file = " + netrc + "\n"
	if string(conf) != wantConf {
		t.Errorf("nix.conf:\n%s\nwant:\n%s", conf, wantConf)
	}
	got, _ := os.ReadFile(netrc)
	wantNetrc := "machine other.example password keep\nmachine cache.example login nixcache password new\n"
	if string(got) != wantNetrc {
		t.Errorf("netrc:\n%s\nwant:\n%s", got, wantNetrc)
	}
	if fi, err := os.Stat(netrc); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("netrc mode: %v, %v", fi.Mode(), err)
	}

	// Without a token: no netrc line, no netrc-file setting.
	cfg.Token, cfg.NetrcFile = "", ""
	if strings.Contains(strings.Join(cfg.NixConf(), "\n"), "netrc") || cfg.NetrcLine() != "" {
		t.Errorf("a configuration without a token names a netrc: %q %q", cfg.NixConf(), cfg.NetrcLine())
	}
}
