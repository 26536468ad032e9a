// Command httpscache serves a directory over HTTPS: a binary cache written
// by `nix copy --to file://DIR`, the upstream of the compose pull-through
// test (e2e/compose_magnolia_test.go), which builds it static into an image
// of its own.
package main

import (
	"flag"
	"log"
	"net/http"
	"time"
)

func main() {
	listen := flag.String("listen", ":8443", "HTTPS listen address")
	dir := flag.String("dir", "/cache", "directory served")
	cert := flag.String("cert", "/tls/cert.pem", "PEM certificate")
	key := flag.String("key", "/tls/key.pem", "PEM private key of -cert")
	flag.Parse()
	srv := &http.Server{
		Addr:              *listen,
		Handler:           http.FileServer(http.Dir(*dir)),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Fatal(srv.ListenAndServeTLS(*cert, *key))
}
