// Package setup makes the client configuration of a cache: the nix.conf
// lines that add it as a substituter, with its keys as the cache
// announces them, and the netrc entry that carries a token.
package setup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nixcache/nixcache/cmd/nixcache/internal/cacheclient"
)

// Config is what a client needs to use a cache.
type Config struct {
	URL       string
	Keys      []string // "name:base64", the active ones
	NetrcFile string   // where the netrc entry goes; "" without a token
	Host      string
	Token     string
}

// Fetch asks the cache at c for its store directory and keys.
func Fetch(ctx context.Context, c *cacheclient.Client, storeDir, token, netrcFile string) (Config, error) {
	info, err := c.CacheInfo(ctx)
	if err != nil {
		return Config{}, err
	}
	if sd := info["StoreDir"]; sd != storeDir {
		return Config{}, fmt.Errorf("the cache serves store %q, not %q", sd, storeDir)
	}
	keys, err := c.Keys(ctx)
	if err != nil {
		return Config{}, fmt.Errorf("the cache's keys: %w", err)
	}
	cfg := Config{URL: c.URL(), Host: c.Host(), Token: token}
	for _, k := range keys {
		if k.Active {
			cfg.Keys = append(cfg.Keys, k.PublicKey)
		}
	}
	if len(cfg.Keys) == 0 {
		return Config{}, errors.New("the cache announces no active signing key")
	}
	if token != "" {
		cfg.NetrcFile = netrcFile
	}
	return cfg, nil
}

// NixConf returns the nix.conf lines.
func (c Config) NixConf() []string {
	lines := []string{
		"extra-substituters = " + c.URL,
		"extra-trusted-public-keys = " + strings.Join(c.Keys, " "),
	}
	if c.NetrcFile != "" {
		lines = append(lines, "netrc-file = "+c.NetrcFile)
	}
	return lines
}

// NetrcLine returns the netrc entry; "" without a token.
func (c Config) NetrcLine() string {
	if c.Token == "" {
		return ""
	}
	return "machine " + c.Host + " login nixcache password " + c.Token
}

// Write adds the nix.conf lines to nixConf and the netrc entry to the
// netrc file (mode 0600), leaving lines already there and replacing an
// older entry of the same machine.
func (c Config) Write(nixConf string) error {
	if err := addLines(nixConf, 0o644, c.NixConf(), func(string) bool { return false }); err != nil {
		return err
	}
	if line := c.NetrcLine(); line != "" {
		prefix := "machine " + c.Host + " "
		return addLines(c.NetrcFile, 0o600, []string{line}, func(l string) bool { return strings.HasPrefix(strings.TrimSpace(l), prefix) })
	}
	return nil
}

// addLines appends to the file at path the lines it lacks, dropping the
// lines replace matches.
func addLines(path string, perm os.FileMode, lines []string, replace func(string) bool) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	var kept []string
	have := map[string]bool{}
	for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
		if l == "" && len(kept) == 0 {
			continue
		}
		if replace(l) && !contains(lines, l) {
			continue
		}
		kept = append(kept, l)
		have[l] = true
	}
	for _, l := range lines {
		if !have[l] {
			kept = append(kept, l)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".nixcache-tmp"
	//nolint:gosec // the path is the user's own nix.conf or netrc, named on the command line
	if err := os.WriteFile(tmp, []byte(strings.Join(kept, "\n")+"\n"), perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}
