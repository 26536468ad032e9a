package spool

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestQueue(t *testing.T) {
	s, err := New(filepath.Join(t.TempDir(), "sub", "spool.db"))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := s.Status(); err != nil || st.Queued != 0 {
		t.Fatalf("status of a spool never written: %+v, %v", st, err)
	}
	if err := s.Enqueue([]string{"/nix/store/a", "/nix/store/b"}); err != nil {
		t.Fatal(err)
	}
	// The first commit wrote the file out, so that later ones allocate
	// nothing.
	if fi, err := os.Stat(s.Path()); err != nil || fi.Size() < preallocSize {
		t.Errorf("new spool file: %v, %v; want %d bytes written out", fi.Size(), err, preallocSize)
	}
	if err := s.Enqueue([]string{"/nix/store/c"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Peek(2)
	if err != nil || len(got) != 2 || got[0].Path != "/nix/store/a" || got[1].Path != "/nix/store/b" {
		t.Fatalf("Peek(2) = %+v, %v", got, err)
	}
	now := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	if err := s.Failed(errors.New("cache down"), now); err != nil {
		t.Fatal(err)
	}
	st, err := s.Status()
	if err != nil || st.Queued != 3 || st.LastError != "cache down" || !st.LastErrorTime.Equal(now) {
		t.Fatalf("status after a failure: %+v, %v", st, err)
	}
	if err := s.Done(got, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	st, err = s.Status()
	if err != nil || st.Queued != 1 || st.Oldest[0] != "/nix/store/c" || st.Pushed != 2 || st.LastError != "" || !st.LastPush.Equal(now.Add(time.Minute)) {
		t.Fatalf("status after a push: %+v, %v", st, err)
	}
	// Another process's Spool (the hook's) sees the same queue.
	other, _ := New(s.Path())
	if rest, err := other.Peek(10); err != nil || len(rest) != 1 || rest[0].Path != "/nix/store/c" {
		t.Errorf("the queue seen again: %+v, %v", rest, err)
	}
}
