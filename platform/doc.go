// Package platform holds what the three nixcache services share in how they
// run, as opposed to what they do: flags with environment twins, logging,
// and gRPC server and client set-up with health, reflection and graceful
// shutdown.
package platform
