// Package envflag gives every command-line flag an environment-variable
// twin: flag -index-addr is also NIXCACHE_INDEX_ADDR. A flag given on the
// command line wins over its environment variable, which wins over the
// default.
package envflag

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"unicode"
)

// Prefix is the prefix of every nixcache environment variable.
const Prefix = "NIXCACHE_"

// EnvName returns the environment twin of a flag name: "index-addr" gives
// "NIXCACHE_INDEX_ADDR".
func EnvName(flagName string) string {
	return Prefix + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(flagName))
}

// Parse sets the flags of fs from their environment twins, then parses
// args. Each flag's usage text gains its variable's name, so -h documents
// both.
func Parse(fs *flag.FlagSet, args []string) error {
	return parse(fs, args, func(string) bool { return true })
}

// ParseOnly is Parse with only the flags named taking their environment
// twins (those that exist in fs); the others are set on the command line
// only.
func ParseOnly(fs *flag.FlagSet, args []string, names ...string) error {
	return parse(fs, args, func(name string) bool { return slices.Contains(names, name) })
}

func parse(fs *flag.FlagSet, args []string, twinned func(string) bool) error {
	var errs []string
	fs.VisitAll(func(f *flag.Flag) {
		if !twinned(f.Name) {
			return
		}
		name := EnvName(f.Name)
		f.Usage = fmt.Sprintf("%s [$%s]", f.Usage, name)
		if v, ok := os.LookupEnv(name); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Sprintf("$%s=%q: %v", name, v, err))
			}
			if l, ok := f.Value.(*List); ok {
				l.fromEnv = true
			}
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("invalid environment: %s", strings.Join(errs, "; "))
	}
	return fs.Parse(args)
}

// List is a flag that may be repeated, each value a comma- or
// space-separated list: -upstream a -upstream b,c gives [a b c]. Its
// environment twin takes a list too; command-line values replace the
// twin's instead of adding to them.
type List struct {
	Values  []string
	fromEnv bool // Values came from the environment
}

// String joins the values with commas.
func (l *List) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(l.Values, ",")
}

// Set adds the values of s, after dropping those of the environment.
func (l *List) Set(s string) error {
	if l.fromEnv {
		l.Values, l.fromEnv = nil, false
	}
	l.Values = append(l.Values, strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })...)
	return nil
}
