package server

// ToStatus turns a domain error into a gRPC status error with the one
// table of errors.go, for the index's other services (AdminService).
func ToStatus(err error) error { return toStatus(err) }
