// Package keyfile creates Nix binary-cache key files: the secret
// key file "<name>:<base64 of seed and public key>" and the public key file
// "<name>:<base64>", as nix-store --generate-binary-cache-key writes them.
package keyfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nixcache/nixcache/nix/signature"
)

const (
	secretMode = 0o600
	publicMode = 0o644
	dirMode    = 0o700
)

// PublicPath returns where the public key of the secret key file at
// secretPath is written when the signer generates it: secretPath + ".pub".
func PublicPath(secretPath string) string { return secretPath + ".pub" }

// Generate creates a new key pair named name, as nix-store
// --generate-binary-cache-key does: the secret key at secretPath (mode
// 0600) and the public key at publicPath (mode 0644). It refuses to
// overwrite either file and leaves neither behind when it fails.
func Generate(name, secretPath, publicPath string) (signature.PublicKey, error) {
	for _, p := range []string{secretPath, publicPath} {
		if _, err := os.Lstat(p); err == nil {
			return signature.PublicKey{}, fmt.Errorf("generate key %q: %s already exists; refusing to overwrite it", name, p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return signature.PublicKey{}, fmt.Errorf("generate key %q: %w", name, err)
		}
	}
	sk, err := signature.Generate(name)
	if err != nil {
		return signature.PublicKey{}, err
	}
	pub := sk.Public()
	if err := writeNew(secretPath, sk.Encode(), secretMode); err != nil {
		return signature.PublicKey{}, fmt.Errorf("generate key %q: %w", name, err)
	}
	if err := writeNew(publicPath, pub.String(), publicMode); err != nil {
		os.Remove(secretPath)
		return signature.PublicKey{}, fmt.Errorf("generate key %q: %w", name, err)
	}
	return pub, nil
}

// Ensure makes sure the secret key file at secretPath exists: when it does
// not, Ensure generates a key pair named name into it (creating its
// directory with mode 0700) and writes the public key to
// PublicPath(secretPath), replacing a stale one. created reports whether it
// did; an existing file is left alone for the keyring to read.
func Ensure(secretPath, name string) (pub signature.PublicKey, created bool, err error) {
	if _, err := os.Lstat(secretPath); err == nil {
		return signature.PublicKey{}, false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return signature.PublicKey{}, false, fmt.Errorf("generate key %q: %w", name, err)
	}
	sk, err := signature.Generate(name)
	if err != nil {
		return signature.PublicKey{}, false, err
	}
	if err := os.MkdirAll(filepath.Dir(secretPath), dirMode); err != nil {
		return signature.PublicKey{}, false, fmt.Errorf("generate key %q: %w", name, err)
	}
	if err := writeNew(secretPath, sk.Encode(), secretMode); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process created it in the meantime: use theirs.
			return signature.PublicKey{}, false, nil
		}
		return signature.PublicKey{}, false, fmt.Errorf("generate key %q: %w", name, err)
	}
	pub = sk.Public()
	if err := writeReplace(PublicPath(secretPath), pub.String(), publicMode); err != nil {
		return signature.PublicKey{}, false, fmt.Errorf("generate key %q: %w", name, err)
	}
	return pub, true, nil
}

// writeNew creates path with exactly mode perm (whatever the umask) and
// writes data to it; it fails with fs.ErrExist if path exists, and removes
// what it created when the write fails.
func writeNew(path, data string, perm fs.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		return err
	}
	return f.Sync()
}

// writeReplace writes data to path with mode perm, replacing path
// atomically if it exists.
func writeReplace(path, data string, perm fs.FileMode) error {
	tmp := path + ".tmp"
	os.Remove(tmp)
	if err := writeNew(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
