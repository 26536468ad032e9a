# Many small paths that all refer to one big shared dependency, for the
# closure tests (closures_test.go): `n` paths, a dependency of `depBytes`
# random bytes. `seed` makes the store paths unique to one test.
{ seed, n ? 32, depBytes ? 5000000 }:
let
  mk = name: deps: script: derivation {
    inherit name deps seed;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  shared = mk "shared-${seed}" [ ] ''
    mkdir $out
    head -c ${toString depBytes} /dev/urandom > $out/blob
  '';
  small = i: mk "small-${toString i}-${seed}" [ shared ] ''
    echo ${shared} ${toString i} > $out
  '';
in
builtins.genList small n
