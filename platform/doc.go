// Package platform holds what the three nixcache services share in how they
// run, as opposed to what they do: flags with environment twins, logging,
// gRPC server and client set-up with health, reflection and graceful
// shutdown, token auth with scopes (auth), and Prometheus metrics and
// health endpoints (metrics).
package platform
