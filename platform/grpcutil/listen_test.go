package grpcutil

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSocketPath(t *testing.T) {
	for addr, want := range map[string]string{
		"unix:data/index.sock":    "data/index.sock",
		"unix:/run/x.sock":        "/run/x.sock",
		"unix:///run/x.sock":      "/run/x.sock",
		"127.0.0.1:5011":          "",
		"dns:///index:5011":       "",
		"unixish.example.org:501": "",
	} {
		got, ok := SocketPath(addr)
		if got != want || ok != (want != "") {
			t.Errorf("SocketPath(%q) = %q, %v; want %q", addr, got, ok, want)
		}
	}
}

func TestListenUnix(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	path := filepath.Join(dir, "svc.sock")
	lis, err := ListenConfig{Addr: "unix:" + path}.Listen(nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", p, got, want)
		}
	}

	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cred, ok := conn.RemoteAddr().(PeerCred)
	if !ok || cred.PID != os.Getpid() || cred.UID != os.Getuid() {
		t.Errorf("RemoteAddr %#v; want this process's pid %d and uid %d", conn.RemoteAddr(), os.Getpid(), os.Getuid())
	}

	// A second service on a live socket is refused; after the first one
	// is gone (its file left behind, as after a crash) it takes over.
	if l2, err := (ListenConfig{Addr: "unix:" + path}).Listen(nil, nil); err == nil {
		l2.Close()
		t.Error("listened on a socket another listener serves")
	}
	lis.(peerCredListener).SetUnlinkOnClose(false)
	lis.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the stale socket file is gone already: %v", err)
	}
	l3, err := ListenConfig{Addr: "unix:" + path}.Listen(nil, nil)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	l3.Close()

	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if l4, err := (ListenConfig{Addr: "unix:" + file}).Listen(nil, nil); err == nil {
		l4.Close()
		t.Error("listened over a regular file")
	}
}

func TestListenTCPNeedsTLSOrInsecure(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	_, err := ListenConfig{Addr: "127.0.0.1:0"}.Listen(nil, log)
	if err == nil || !strings.Contains(err.Error(), "-insecure-tcp") {
		t.Errorf("plain TCP without -insecure-tcp: %v; want an error naming -insecure-tcp", err)
	}
	lis, err := ListenConfig{Addr: "127.0.0.1:0", InsecureTCP: true}.Listen(nil, log)
	if err != nil {
		t.Fatalf("plain TCP with -insecure-tcp: %v", err)
	}
	lis.Close()
}

func TestSpoolSocket(t *testing.T) {
	for _, tt := range []struct {
		flag, grpcAddr, want string
		bad                  bool
	}{
		{flag: "auto", grpcAddr: "unix:data/index.sock", want: "data/upload-spool.sock"},
		{flag: "auto", grpcAddr: "unix:///run/nixcache/index/index.sock", want: "/run/nixcache/index/upload-spool.sock"},
		{flag: "auto", grpcAddr: "127.0.0.1:5011", want: ""},
		{flag: "", grpcAddr: "unix:data/index.sock", want: ""},
		{flag: "unix:/tmp/x.sock", grpcAddr: "127.0.0.1:5011", want: "/tmp/x.sock"},
		{flag: "/tmp/x.sock", grpcAddr: "unix:data/index.sock", bad: true},
		{flag: "unix:", grpcAddr: "unix:data/index.sock", bad: true},
	} {
		got, err := SpoolSocket(tt.flag, tt.grpcAddr)
		if tt.bad {
			if err == nil {
				t.Errorf("SpoolSocket(%q, %q) = %q, want an error", tt.flag, tt.grpcAddr, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("SpoolSocket(%q, %q) = %q, %v; want %q", tt.flag, tt.grpcAddr, got, err, tt.want)
		}
	}
}
