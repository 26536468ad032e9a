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
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("invalid environment: %s", strings.Join(errs, "; "))
	}
	return fs.Parse(args)
}
