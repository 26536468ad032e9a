package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAdminToken(t *testing.T) {
	dir := t.TempDir()
	write := func(content string) string {
		path := filepath.Join(dir, "tokens")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	path := write("# name scopes token\n# old admin,read commented\nci push,read pushtok\nops read,admin admintok\nroot admin othertok\n")
	if got, err := adminToken(path); err != nil || got != "admintok" {
		t.Errorf("adminToken = %q, %v; want the first admin token, admintok", got, err)
	}
	path = write("ci push,read pushtok\n")
	if _, err := adminToken(path); err == nil || !strings.Contains(err.Error(), "no token with the admin scope") {
		t.Errorf("adminToken of a file without an admin token: %v", err)
	}
	if _, err := adminToken(filepath.Join(dir, "missing")); err == nil {
		t.Error("adminToken of a missing file succeeded")
	}
}
