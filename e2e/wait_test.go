package e2e

import (
	"testing"
	"time"
)

// pollInterval is how often eventually checks its condition.
const pollInterval = 50 * time.Millisecond

// eventually polls cond every pollInterval until it reports done, and
// fails the test if that takes longer than within, with what and the
// state cond reported last (when it is not ""). It returns how long it
// took. cond runs on the test's goroutine, so it may fail the test itself
// (say, when the process it waits for exited).
//
// It is the one way the end-to-end tests wait for a real process: a
// condition with a bounded deadline, never a sleep. Loops that measure a
// latency poll faster on their own, and say so.
func eventually(t testing.TB, within time.Duration, what string, cond func() (done bool, state string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(within)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		done, state := cond()
		if done {
			return time.Since(start)
		}
		select {
		case <-deadline:
			if state == "" {
				t.Fatalf("%s: not within %s", what, within)
			}
			t.Fatalf("%s: not within %s: %s", what, within, state)
		case <-tick.C:
		}
	}
}

// waitFor is eventually for a condition with no state to report.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return eventually(t, within, what, func() (bool, string) { return cond(), "" })
}
