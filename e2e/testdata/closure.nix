# A small closure for the end-to-end tests: three paths with references,
# holding a regular file, an executable, a symlink and an empty directory.
# `seed` makes the store paths unique to one test; `randomBytes` is the
# size of the leaf's random file.
{ seed, randomBytes ? 300000 }:
let
  mk = name: deps: script: derivation {
    inherit name deps seed;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  leaf = mk "leaf-${seed}" [ ] ''
    mkdir -p $out/empty $out/bin
    echo "hello ${seed}" > $out/hello
    printf '#!/bin/sh\necho hi\n' > $out/bin/run
    chmod +x $out/bin/run
    ln -s hello $out/link
    head -c ${toString randomBytes} /dev/urandom > $out/random
  '';
  mid = mk "mid-${seed}" [ leaf ] ''
    mkdir $out
    echo ${leaf} > $out/dep
    seq 1 20000 > $out/numbers
  '';
  top = mk "top-${seed}" [ mid leaf ] ''
    echo ${mid} ${leaf} > $out
  '';
in
top
