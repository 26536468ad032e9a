package report

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Plot colours.
var (
	white   = color.RGBA{255, 255, 255, 255}
	black   = color.RGBA{0, 0, 0, 255}
	grey    = color.RGBA{190, 190, 190, 255}
	red     = color.RGBA{200, 30, 30, 255}
	palette = []color.RGBA{{31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255}, {148, 103, 189, 255},
		{140, 86, 75, 255}, {227, 119, 194, 255}, {127, 127, 127, 255}, {188, 189, 34, 255}}
)

// WritePNG draws the ratio table: per figure a bar per nixcache server
// (its time as a multiple of nginx's), the nginx line at 1 and the
// figure's target in red.
func (r *Results) WritePNG(path string) error {
	var names []string
	for _, s := range r.Servers {
		if s.compared() && s.Unavailable == "" {
			names = append(names, s.Name)
		}
	}
	const (
		width, left, right, top = 960, 260, 40, 60
		barH, gap               = 18, 22
	)
	groupH := len(names)*barH + gap
	// The legend: as many lines as its entries need.
	legendW := func(n string) int { return 30 + 7*len(n) }
	legendLines, lw := 1, left
	for _, n := range names {
		if lw+legendW(n) > width-right {
			legendLines, lw = legendLines+1, left
		}
		lw += legendW(n)
	}
	height := top + len(Figures)*groupH + 70 + 18*(legendLines-1)
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{white}, image.Point{}, draw.Src)

	maxRatio := 2.0
	for _, ra := range r.Ratios {
		maxRatio = max(maxRatio, ra.Ratio*1.08)
	}
	maxRatio = min(maxRatio, 12)
	plotW := width - left - right
	x := func(v float64) int { return left + int(v/maxRatio*float64(plotW)) }

	text(img, 10, 20, black, fmt.Sprintf("nixcache vs nginx, %s, %s run, median of %d rounds (time as a multiple of nginx's; lower is better)",
		r.Date.Format("2006-01-02"), r.Mode, r.Rounds))
	text(img, 10, 38, black, fmt.Sprintf("%d cores, %s, %s", r.Machine.Cores, r.Machine.CPU, r.Machine.Go))

	plotBottom := top + len(Figures)*groupH
	// Grid and axis labels every 0.5.
	step := 0.5
	if maxRatio > 6 {
		step = 1
	}
	for v := 0.0; v <= maxRatio+1e-9; v += step {
		vline(img, x(v), top-4, plotBottom, grey)
		text(img, x(v)-8, plotBottom+16, black, fmt.Sprintf("%.1f", v))
	}
	vline(img, x(1), top-4, plotBottom, black)
	text(img, x(1)+3, top-6, black, "nginx = 1")

	for gi, f := range Figures {
		y0 := top + gi*groupH
		text(img, 10, y0+barH, black, strings.ReplaceAll(FigureTitle[f], "`", ""))
		tx := x(Target[f])
		for dy := y0 - 2; dy < y0+len(names)*barH+2; dy += 6 {
			vline(img, tx, dy, dy+3, red)
			vline(img, tx+1, dy, dy+3, red)
		}
		for si, n := range names {
			ra := r.Ratio(n, f)
			yb := y0 + si*barH
			if ra == nil {
				continue
			}
			c := palette[si%len(palette)]
			w := x(min(ra.Ratio, maxRatio)) - left
			draw.Draw(img, image.Rect(left, yb+2, left+w, yb+barH-2), &image.Uniform{c}, image.Point{}, draw.Src)
			text(img, left+w+4, yb+barH-5, black, fmt.Sprintf("%.2fx", ra.Ratio))
		}
	}
	// Legend.
	ly := plotBottom + 40
	lx := left
	for si, n := range names {
		if lx+legendW(n) > width-right {
			lx, ly = left, ly+18
		}
		c := palette[si%len(palette)]
		draw.Draw(img, image.Rect(lx, ly-10, lx+14, ly+2), &image.Uniform{c}, image.Point{}, draw.Src)
		text(img, lx+18, ly, black, n)
		lx += legendW(n)
	}
	vline(img, lx, ly-10, ly-7, red)
	vline(img, lx, ly-4, ly-1, red)
	text(img, lx+6, ly, black, "target")

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func text(img draw.Image, x, y int, c color.Color, s string) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	for y := y0; y <= y1; y++ {
		img.Set(x, y, c)
	}
}
