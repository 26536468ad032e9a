package nartest

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// StartVersitygw runs a real S3 server, Versity Gateway (installed by
// scripts/tools.sh into .tools/bin), on a free loopback port with the
// credentials access and secret, and returns its URL; the credentials are
// also set in the environment, as the index reads them. The server is
// stopped when the test ends.
func StartVersitygw(t *testing.T, access, secret string) string {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		_, file, _, _ := runtime.Caller(0)
		// This file is services/index/internal/nartest/: the repository
		// root is four levels up.
		bin = filepath.Join(filepath.Dir(file), "..", "..", "..", "..", ".tools", "bin", "versitygw")
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("versitygw is required (scripts/tools.sh installs it): %v", err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	var out bytes.Buffer
	cmd := exec.Command(bin, "--access", access, "--secret", secret, "--port", addr, "posix", t.TempDir())
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return "http://" + addr
		}
		select {
		case <-done:
			t.Fatalf("versitygw exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw not listening after 30s: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}
