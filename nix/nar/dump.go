package nar

import (
	"fmt"
	"io"
	"os"
	"slices"
)

// dumpBufSize is the chunk in which DumpPath copies file contents.
const dumpBufSize = 1 << 20

// DumpPath writes the NAR of the file system tree at path to w, as
// nix-store --dump does: streamed, file contents never held whole in memory.
func DumpPath(w io.Writer, path string) error {
	d := dumper{w: NewWriter(w), buf: make([]byte, dumpBufSize)}
	// path is used as given, as nix-store --dump does: "link/" is the
	// directory a symlink points to, not the symlink.
	if err := d.dump(path, "/"); err != nil {
		return err
	}
	return d.w.Close()
}

type dumper struct {
	w   *Writer
	buf []byte
}

// dump writes the node at the file system path fsPath as archive path
// narPath, as Nix does: lstat, so symlinks are never followed; only the
// owner's execute bit counts; entries sorted by name bytes.
func (d *dumper) dump(fsPath, narPath string) error {
	fi, err := os.Lstat(fsPath)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	mode := fi.Mode()
	switch {
	case mode.IsRegular():
		return d.file(fsPath, narPath, mode&0o100 != 0)
	case mode.IsDir():
		return d.dir(fsPath, narPath)
	case mode&os.ModeSymlink != 0:
		target, err := os.Readlink(fsPath)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		if err := d.w.WriteHeader(&Header{Path: narPath, Type: TypeSymlink, LinkTarget: target}); err != nil {
			return fmt.Errorf("dump %s: %w", fsPath, err)
		}
		return nil
	}
	return fmt.Errorf("nar: dump %s: unsupported file type %v", fsPath, mode.Type())
}

// file writes a regular file, sized by the open file so that the header and
// the contents agree.
func (d *dumper) file(fsPath, narPath string, executable bool) error {
	f, err := os.Open(fsPath)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("nar: dump %s: changed while being read: no longer a regular file", fsPath)
	}
	size := uint64(fi.Size())
	if err := d.w.WriteHeader(&Header{Path: narPath, Type: TypeRegular, Executable: executable, Size: size}); err != nil {
		return fmt.Errorf("dump %s: %w", fsPath, err)
	}
	for left := size; left > 0; {
		chunk := d.buf
		if uint64(len(chunk)) > left {
			chunk = chunk[:left]
		}
		n, err := io.ReadFull(f, chunk)
		if err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return fmt.Errorf("nar: dump %s: file shrank while being read (%d of %d bytes)", fsPath, size-left+uint64(n), size)
			}
			return fmt.Errorf("nar: dump: %w", err)
		}
		if _, err := d.w.Write(chunk[:n]); err != nil {
			return err
		}
		left -= uint64(n)
	}
	return nil
}

// dir writes a directory and, recursively, its entries.
func (d *dumper) dir(fsPath, narPath string) error {
	if err := d.w.WriteHeader(&Header{Path: narPath, Type: TypeDirectory}); err != nil {
		return fmt.Errorf("dump %s: %w", fsPath, err)
	}
	f, err := os.Open(fsPath)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := d.dump(fsPath+"/"+name, childPath(narPath, name)); err != nil {
			return err
		}
	}
	return nil
}
