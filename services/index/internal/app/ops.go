package app

import (
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/nixcache/nixcache/platform/auth"
	"github.com/nixcache/nixcache/platform/metrics"
	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
)

// metricsShutdownGrace bounds how long a scrape may finish at shutdown.
const metricsShutdownGrace = 2 * time.Second

// ops is how the index is watched and guarded: the metrics registry (the
// services register their counters in it: metrics.NewCache,
// metrics.RegisterCatalog), the gRPC interceptors (metrics, then auth) and
// the /metrics and /healthz server.
type ops struct {
	registry *prometheus.Registry
	server   *metrics.GRPCServer
	client   *metrics.GRPCClient
	policy   auth.Policy
	rules    auth.Rules
	// fileTokens are the token file's; nil without one. The policy
	// checks these until Run gives it the store of these and the
	// catalogue's.
	fileTokens *auth.Tokens
}

// authRules are the scopes the index's methods need. AdminService: GetStats
// and ListKeys need read (anonymous while reads are public: the landing
// page shows them), so does FindMissingPaths (a narinfo per path tells the
// same), every other method admin. IndexService: the writes
// need push, checked here as well as in the gateway, which forwards its
// caller's credentials: a gateway taken over cannot publish without a
// valid token. IndexService's reads are not checked here: the gateway
// checks its callers, and the Unix socket or mutual TLS keeps everyone
// but the services out.
func authRules() (auth.Rules, error) {
	rules, err := auth.ServiceRules(&indexv1.AdminService_ServiceDesc, auth.Admin, map[string]auth.Scope{
		"GetStats":         auth.Read,
		"ListKeys":         auth.Read,
		"FindMissingPaths": auth.Read,
	})
	if err != nil {
		return nil, err
	}
	for _, m := range pushMethods {
		rules[m] = auth.Push
	}
	return rules, nil
}

// pushMethods are IndexService's writes, which need the push scope.
var pushMethods = []string{
	indexv1.IndexService_PutNar_FullMethodName,
	indexv1.IndexService_PutPathInfo_FullMethodName,
	indexv1.IndexService_PutArtifact_FullMethodName,
}

// newOps loads the token file and builds the metrics.
func newOps(o Options) (*ops, error) {
	rules, err := authRules()
	if err != nil {
		return nil, err
	}
	p := &ops{registry: metrics.NewRegistry(), rules: rules}
	p.server = metrics.NewGRPCServer(p.registry)
	p.client = metrics.NewGRPCClient(p.registry)
	if o.AuthFile == "" {
		if o.PrivateRead {
			return nil, fmt.Errorf("-public-read=false needs -auth-file: nobody could read")
		}
		o.Log.Warn("no -auth-file: only tokens made by CreateToken are accepted, for pushes and the admin RPCs alike")
	}
	if p.policy, p.fileTokens, err = auth.LoadPolicy(o.AuthFile, !o.PrivateRead, o.Log); err != nil {
		return nil, err
	}
	return p, nil
}

// serverOptions measure every call, then check the scopes of authRules.
func (p *ops) serverOptions() []grpc.ServerOption {
	return append(p.server.ServerOptions(), p.policy.ServerOptions(p.rules)...)
}

// dialOptions measure the calls to the signer.
func (p *ops) dialOptions() []grpc.DialOption { return p.client.DialOptions() }

// serveMetrics serves /metrics and /healthz (following hs) on lis, when
// set, until the returned function is called.
func (p *ops) serveMetrics(lis net.Listener, hs *health.Server, o Options) (stop func()) {
	if lis == nil {
		return func() {}
	}
	s := metrics.Start(lis, metrics.OpsHandler(p.registry, metrics.GRPCHealthz(hs)), o.Log)
	return func() {
		if err := s.Shutdown(metricsShutdownGrace); err != nil {
			o.Log.Warn("metrics server", "err", err)
		}
	}
}
