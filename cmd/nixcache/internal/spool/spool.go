// Package spool is the push queue of a builder: a bbolt file that the
// post-build hook appends store paths to and the daemon drains. The file
// is opened for each operation and closed at once (bbolt locks it for
// one process), so the hook and the daemon share it without waiting on
// each other for longer than a transaction. A path leaves the queue only
// after it was pushed: a crash at any moment loses nothing.
package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket names.
var (
	queueBucket = []byte("queue") // 8-byte big-endian sequence -> store path
	stateBucket = []byte("state") // the keys below -> values
)

// Keys of the state bucket.
var (
	keyLastError     = []byte("last_error")
	keyLastErrorTime = []byte("last_error_time")
	keyLastPushTime  = []byte("last_push_time")
	keyPushed        = []byte("pushed") // 8-byte big-endian count
)

// openTimeout bounds the wait for the other process's transaction.
const openTimeout = 5 * time.Second

// Spool is a queue file; its methods open and close it each time.
type Spool struct {
	path string
}

// New returns the spool at path; its directory is made when missing.
func New(path string) (*Spool, error) {
	if path == "" {
		return nil, errors.New("spool: no file given")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("spool directory: %w", err)
	}
	return &Spool{path: path}, nil
}

// Path is the spool's file.
func (s *Spool) Path() string { return s.path }

// preallocSize is what a new spool file is written out to at once. A
// file that grows as paths are queued costs each commit a block
// allocation and a journal commit, which waits for the whole disk's: up to
// a second per queued path on a busy disk (a few milliseconds into blocks
// already written). bbolt never reads beyond its high-water mark, so the
// zeros are free pages to it.
const preallocSize = 4 << 20

func (s *Spool) update(fn func(tx *bolt.Tx) error) error {
	_, statErr := os.Stat(s.path)
	fresh := errors.Is(statErr, os.ErrNotExist)
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: openTimeout})
	if err != nil {
		return fmt.Errorf("open spool %s: %w", s.path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{queueBucket, stateBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return fn(tx)
	})
	if err == nil && fresh {
		// Still under bbolt's lock: no other process writes the file.
		err = prealloc(s.path, preallocSize)
	}
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close spool %s: %w", s.path, cerr)
	}
	return err
}

// prealloc writes the file at path out with zeros to size bytes.
func prealloc(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("preallocate spool: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("preallocate spool: %w", err)
	}
	zeros := make([]byte, 64<<10)
	for off := fi.Size(); off < size; off += int64(len(zeros)) {
		if _, err := f.WriteAt(zeros[:min(int64(len(zeros)), size-off)], off); err != nil {
			return fmt.Errorf("preallocate spool: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("preallocate spool: %w", err)
	}
	return nil
}

func (s *Spool) view(fn func(tx *bolt.Tx) error) error {
	if _, err := os.Stat(s.path); errors.Is(err, os.ErrNotExist) {
		return fn(nil)
	}
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: openTimeout, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("open spool %s: %w", s.path, err)
	}
	defer db.Close()
	return db.View(fn)
}

// Enqueue appends paths, durably, in one transaction.
func (s *Spool) Enqueue(paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	return s.update(func(tx *bolt.Tx) error {
		q := tx.Bucket(queueBucket)
		for _, p := range paths {
			seq, err := q.NextSequence()
			if err != nil {
				return err
			}
			if err := q.Put(u64(seq), []byte(p)); err != nil {
				return fmt.Errorf("enqueue %s: %w", p, err)
			}
		}
		return nil
	})
}

// Entry is a queued path.
type Entry struct {
	Seq  uint64
	Path string
}

// Peek returns up to max queued entries, oldest first.
func (s *Spool) Peek(max int) ([]Entry, error) {
	var entries []Entry
	err := s.view(func(tx *bolt.Tx) error {
		if tx == nil {
			return nil
		}
		q := tx.Bucket(queueBucket)
		if q == nil {
			return nil
		}
		c := q.Cursor()
		for k, v := c.First(); k != nil && len(entries) < max; k, v = c.Next() {
			entries = append(entries, Entry{Seq: binary.BigEndian.Uint64(k), Path: string(v)})
		}
		return nil
	})
	return entries, err
}

// Done removes entries that were pushed and records the success.
func (s *Spool) Done(entries []Entry, now time.Time) error {
	return s.update(func(tx *bolt.Tx) error {
		q, st := tx.Bucket(queueBucket), tx.Bucket(stateBucket)
		for _, e := range entries {
			if err := q.Delete(u64(e.Seq)); err != nil {
				return err
			}
		}
		pushed := uint64(0)
		if v := st.Get(keyPushed); len(v) == 8 {
			pushed = binary.BigEndian.Uint64(v)
		}
		for k, v := range map[string][]byte{
			string(keyPushed):       u64(pushed + uint64(len(entries))),
			string(keyLastPushTime): []byte(now.UTC().Format(time.RFC3339Nano)),
			string(keyLastError):    nil,
		} {
			var err error
			if v == nil {
				err = st.Delete([]byte(k))
			} else {
				err = st.Put([]byte(k), v)
			}
			if err != nil {
				return err
			}
		}
		return st.Delete(keyLastErrorTime)
	})
}

// Failed records why the queue could not be pushed.
func (s *Spool) Failed(cause error, now time.Time) error {
	return s.update(func(tx *bolt.Tx) error {
		st := tx.Bucket(stateBucket)
		if err := st.Put(keyLastError, []byte(cause.Error())); err != nil {
			return err
		}
		return st.Put(keyLastErrorTime, []byte(now.UTC().Format(time.RFC3339Nano)))
	})
}

// Status is what the spool says about the queue.
type Status struct {
	Queued        int
	Oldest        []string // the first queued paths, at most 10
	Pushed        uint64   // entries pushed since the spool was made
	LastPush      time.Time
	LastError     string // "" since the last success
	LastErrorTime time.Time
}

// Status reads the queue's state.
func (s *Spool) Status() (Status, error) {
	var st Status
	err := s.view(func(tx *bolt.Tx) error {
		if tx == nil {
			return nil
		}
		if q := tx.Bucket(queueBucket); q != nil {
			st.Queued = q.Stats().KeyN
			c := q.Cursor()
			for k, v := c.First(); k != nil && len(st.Oldest) < 10; k, v = c.Next() {
				st.Oldest = append(st.Oldest, string(v))
			}
		}
		b := tx.Bucket(stateBucket)
		if b == nil {
			return nil
		}
		if v := b.Get(keyPushed); len(v) == 8 {
			st.Pushed = binary.BigEndian.Uint64(v)
		}
		st.LastError = string(b.Get(keyLastError))
		st.LastPush, _ = time.Parse(time.RFC3339Nano, string(b.Get(keyLastPushTime)))
		st.LastErrorTime, _ = time.Parse(time.RFC3339Nano, string(b.Get(keyLastErrorTime)))
		return nil
	})
	return st, err
}

func u64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
