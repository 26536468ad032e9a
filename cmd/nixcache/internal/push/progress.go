package push

import (
	"fmt"
	"io"
	"time"
)

// Printer returns a Progress function that redraws one status line on a
// terminal: paths, bytes, rate and time left.
func Printer(w io.Writer) func(Progress) {
	return func(p Progress) {
		elapsed := time.Since(p.Start)
		rate := 0.0
		if s := elapsed.Seconds(); s > 0 {
			rate = float64(p.BytesDone) / s
		}
		eta := "?"
		if rate > 0 {
			eta = time.Duration(float64(p.Bytes-p.BytesDone) / rate * float64(time.Second)).Round(time.Second).String()
		}
		fmt.Fprintf(w, "\r\033[K%d/%d paths, %s/%s, %s/s, %s left", p.PathsDone, p.Paths,
			Size(p.BytesDone), Size(p.Bytes), Size(int64(rate)), eta)
	}
}

// Size formats a byte count for people.
func Size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
