package httpapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errIndexStalled is the cause of a stream cancelled by its stallGuard.
var errIndexStalled = errors.New("index stalled")

// stallGuard bounds each blocking step of a stream to the index, so that
// an index that stops answering (frozen, a hung disk, a dead peer TCP has
// not noticed yet) cannot hold a request forever: past the bound the
// stream is cancelled, which the index sees too. The time spent on the
// HTTP client is not counted; it has its own deadlines.
type stallGuard struct {
	cancel context.CancelCauseFunc
	// step bounds one Send or Recv of a chunk (0: unbounded).
	step time.Duration
	// final bounds CloseAndRecv: the index's answer after the last chunk.
	final time.Duration
}

// newStallGuard is the guard of this handler's streams: a chunk within
// TransferIdleTimeout, the final answer within RequestTimeout.
func (h *Handler) newStallGuard(cancel context.CancelCauseFunc) stallGuard {
	return stallGuard{cancel: cancel, step: h.TransferIdleTimeout, final: h.RequestTimeout}
}

// run runs op, cancelling the stream if it takes longer than d.
func (g stallGuard) run(d time.Duration, what string, op func() error) error {
	if d <= 0 {
		return op()
	}
	t := time.AfterFunc(d, func() {
		g.cancel(fmt.Errorf("%w: no %s within %s", errIndexStalled, what, d))
	})
	defer t.Stop()
	return op()
}

// open opens a stream with op within the final bound: while the
// connection to the index is still being made (an address that takes
// TCP connections and never answers), opening a stream waits.
func (g stallGuard) open(what string, op func() error) error {
	return g.run(g.final, what+" stream opened", op)
}

// stalledError is what to answer for err, an error of a stream on ctx: a
// stream its guard cancelled is Unavailable (503), saying so.
func stalledError(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, errIndexStalled) {
		return status.Error(codes.Unavailable, cause.Error())
	}
	return err
}

// stepTimer bounds each chunk step of one stream to the guard's step
// bound with a single timer, armed for every step: nothing is made per
// chunk. A nil stepTimer (no bound) does nothing.
type stepTimer struct {
	t *time.Timer
	d time.Duration
}

// stepTimer returns the step timer of a stream whose steps wait for what.
func (g stallGuard) stepTimer(what string) *stepTimer {
	if g.step <= 0 {
		return nil
	}
	d := g.step
	t := time.AfterFunc(d, func() {
		g.cancel(fmt.Errorf("%w: no %s within %s", errIndexStalled, what, d))
	})
	t.Stop()
	return &stepTimer{t: t, d: d}
}

func (st *stepTimer) start() {
	if st != nil {
		st.t.Reset(st.d)
	}
}

func (st *stepTimer) stop() {
	if st != nil {
		st.t.Stop()
	}
}

// guardedRecv is a server stream whose every Recv is bounded.
type guardedRecv[M any] struct {
	grpc.ServerStreamingClient[M]
	step *stepTimer
}

func guardRecv[M any](s grpc.ServerStreamingClient[M], g stallGuard) guardedRecv[M] {
	return guardedRecv[M]{ServerStreamingClient: s, step: g.stepTimer("data from the index")}
}

func (s guardedRecv[M]) Recv() (*M, error) {
	s.step.start()
	m, err := s.ServerStreamingClient.Recv()
	s.step.stop()
	return m, err
}

// guardedSend is a client stream whose every Send, and CloseAndRecv, is
// bounded.
type guardedSend[Req, Res any] struct {
	grpc.ClientStreamingClient[Req, Res]
	g    stallGuard
	step *stepTimer
}

func guardSend[Req, Res any](s grpc.ClientStreamingClient[Req, Res], g stallGuard) guardedSend[Req, Res] {
	return guardedSend[Req, Res]{ClientStreamingClient: s, g: g, step: g.stepTimer("room to send to the index")}
}

func (s guardedSend[Req, Res]) Send(m *Req) error {
	s.step.start()
	err := s.ClientStreamingClient.Send(m)
	s.step.stop()
	return err
}

func (s guardedSend[Req, Res]) CloseAndRecv() (*Res, error) {
	var res *Res
	err := s.g.run(s.g.final, "answer from the index after the upload", func() (err error) {
		res, err = s.ClientStreamingClient.CloseAndRecv()
		return err
	})
	return res, err
}
