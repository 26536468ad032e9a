// Package netrc reads the password of a machine from a netrc file, the
// file Nix sends HTTP credentials from (its netrc-file setting).
package netrc

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// MaxSize bounds the netrc file read.
const MaxSize = 1 << 20

// Password returns the password of host in the netrc file at path; found
// is false when the file does not exist or names no such machine (nor a
// default entry).
func Password(path, host string) (password string, found bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read netrc: %w", err)
	}
	if len(b) > MaxSize {
		return "", false, fmt.Errorf("netrc %s: larger than %d bytes", path, MaxSize)
	}
	p, ok := Parse(string(b), host)
	return p, ok, nil
}

// Parse returns the password of host in a netrc's text: the entry of the
// machine named host, else the default entry. Macros (macdef) are
// skipped to their blank line.
func Parse(text, host string) (password string, found bool) {
	type entry struct {
		machine  string
		dflt     bool
		password string
	}
	var entries []entry
	var cur *entry
	sc := bufio.NewScanner(strings.NewReader(text))
	inMacro := false
	for sc.Scan() {
		line := sc.Text()
		if inMacro {
			if strings.TrimSpace(line) == "" {
				inMacro = false
			}
			continue
		}
		fields := strings.Fields(line)
		for i := 0; i < len(fields); i++ {
			switch fields[i] {
			case "machine":
				entries = append(entries, entry{})
				cur = &entries[len(entries)-1]
				if i+1 < len(fields) {
					i++
					cur.machine = fields[i]
				}
			case "default":
				entries = append(entries, entry{dflt: true})
				cur = &entries[len(entries)-1]
			case "password":
				if i+1 < len(fields) && cur != nil {
					i++
					cur.password = fields[i]
				}
			case "login", "account":
				i++ // skip the value
			case "macdef":
				inMacro = true
				i = len(fields)
			}
		}
	}
	for _, e := range entries {
		if e.machine == host && e.password != "" {
			return e.password, true
		}
	}
	for _, e := range entries {
		if e.dflt && e.password != "" {
			return e.password, true
		}
	}
	return "", false
}
