package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"slices"
	"time"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// The picture of a run (written next to the JSON report): per migration,
// the blocks of FIG. 3 on one time axis (where the migration's time
// went), then the switchover on a finer axis (pause, hook, target loaded
// and resumed, the guest's first packets, the first replies, the
// blackout the peers saw).

var (
	pngBG    = color.RGBA{255, 255, 255, 255}
	pngInk   = color.RGBA{30, 30, 30, 255}
	pngGrid  = color.RGBA{225, 225, 225, 255}
	pngBar   = color.RGBA{70, 130, 180, 255}
	pngFail  = color.RGBA{200, 50, 50, 255}
	pngHook  = color.RGBA{240, 160, 40, 255}
	pngBlack = color.RGBA{60, 60, 60, 255}
	pngMark  = color.RGBA{30, 150, 80, 255}
)

const (
	pngW      = 1200
	pngLeft   = 230 // labels
	pngRight  = 30
	pngRow    = 18
	pngHeader = 28
)

type canvas struct{ *image.RGBA }

func (c canvas) rect(x0, y0, x1, y1 int, col color.Color) {
	if x1 <= x0 {
		x1 = x0 + 1
	}
	draw.Draw(c, image.Rect(x0, y0, x1, y1), &image.Uniform{col}, image.Point{}, draw.Src)
}

func (c canvas) text(x, y int, s string, col color.Color) {
	d := &font.Drawer{Dst: c, Src: &image.Uniform{col}, Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// label writes s after the bar [x0, x1], or before it where the image
// ends.
func (c canvas) label(x0, x1, y int, s string) {
	w := 7 * len(s)
	if x1+4+w <= pngW {
		c.text(x1+4, y, s, pngInk)
		return
	}
	c.text(max(x0-4-w, pngLeft), y, s, pngInk)
}

// axis maps times to x over [from, to].
type axis struct {
	from, to time.Time
}

func (a axis) x(t time.Time) int {
	span := a.to.Sub(a.from)
	if span <= 0 {
		return pngLeft
	}
	f := float64(t.Sub(a.from)) / float64(span)
	return pngLeft + int(f*float64(pngW-pngLeft-pngRight))
}

// ticks draws a time grid with labels (ms or s from the axis' origin
// origin).
func (c canvas) ticks(a axis, origin time.Time, y0, y1 int) {
	span := a.to.Sub(a.from)
	step := time.Millisecond
	for _, s := range []time.Duration{time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond,
		50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second,
		2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute} {
		step = s
		if span/s <= 12 {
			break
		}
	}
	first := origin.Add(a.from.Sub(origin).Truncate(step))
	for t := first; !t.After(a.to); t = t.Add(step) {
		if t.Before(a.from) {
			continue
		}
		x := a.x(t)
		c.rect(x, y0, x+1, y1, pngGrid)
		d := t.Sub(origin)
		label := fmt.Sprintf("%dms", d.Milliseconds())
		if step >= time.Second {
			label = fmt.Sprintf("%.0fs", d.Seconds())
		}
		c.text(x+2, y1+12, label, pngInk)
	}
}

// writeTimelinePNG draws r's migrations; nothing to draw is no error.
func writeTimelinePNG(r *Result, path string) error {
	var ms []MigrationResult
	for _, m := range r.Migrations {
		if len(m.Steps) > 0 {
			ms = append(ms, m)
		}
	}
	if len(ms) == 0 {
		return nil
	}
	height := 0
	for _, m := range ms {
		height += pngHeader + len(m.Steps)*pngRow + 30 + pngHeader + 8*pngRow + 40
	}
	c := canvas{image.NewRGBA(image.Rect(0, 0, pngW, height+20))}
	c.rect(0, 0, pngW, height+20, pngBG)
	y := 0
	for _, m := range ms {
		y = c.drawSteps(m, y)
		y = c.drawSwitchover(m, y)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, c); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// drawSteps is the whole migration: a bar per block.
func (c canvas) drawSteps(m MigrationResult, y int) int {
	from, to := m.Steps[0].Start, m.Steps[0].Start
	for _, s := range m.Steps {
		from = minTime(from, s.Start)
		to = maxTime(to, s.Start.Add(durMS(s.MS)))
	}
	a := axis{from: from, to: to.Add(to.Sub(from) / 50)}
	c.text(8, y+18, fmt.Sprintf("%s %s: %s, %d blocks over %.0f ms (FIG. 3; time from the first block)", m.VM, m.ID, m.Outcome,
		len(m.Steps), float64(to.Sub(from).Microseconds())/1000), pngInk)
	y += pngHeader
	top := y
	for _, s := range m.Steps {
		col := pngBar
		if s.Err != "" {
			col = pngFail
		}
		c.text(8, y+13, fmt.Sprintf("%d %s", s.Block, s.Name), pngInk)
		c.rect(a.x(s.Start), y+3, a.x(s.Start.Add(durMS(s.MS))), y+pngRow-3, col)
		c.label(a.x(s.Start), a.x(s.Start.Add(durMS(s.MS))), y+13, fmt.Sprintf("%.1f ms", s.MS))
		y += pngRow
	}
	c.ticks(a, from, top, y)
	return y + 30
}

// drawSwitchover is the VM's blackout, finer: from the pause to the first
// replies.
func (c canvas) drawSwitchover(m MigrationResult, y int) int {
	tl := m.Timeline
	p := tl.SourcePaused
	if p.IsZero() {
		return y
	}
	at := func(v *float64) (time.Time, bool) {
		if v == nil {
			return time.Time{}, false
		}
		return p.Add(durMS(*v)), true
	}
	end := p.Add(durMS(m.Blackout.MS + 20))
	if b := m.Blackout; !b.From.IsZero() {
		end = maxTime(end, b.From.Add(durMS(b.MS)))
	}
	for _, v := range tl.FirstReplyMS {
		if t, ok := at(v); ok {
			end = maxTime(end, t)
		}
	}
	a := axis{from: p.Add(-10 * time.Millisecond), to: end.Add(20 * time.Millisecond)}
	c.text(8, y+18, fmt.Sprintf("the switchover of %s, from the source's pause (%s): blackout %.0f ms at the peers", m.VM, tl.ResumeFrom, m.Blackout.MS), pngInk)
	y += pngHeader
	top := y
	row := func(label string, t0, t1 time.Time, col color.Color, note string) {
		c.text(8, y+13, label, pngInk)
		c.rect(a.x(t0), y+3, a.x(t1), y+pngRow-3, col)
		c.label(a.x(t0), a.x(t1), y+13, note)
		y += pngRow
	}
	mark := func(label string, v *float64) {
		t, ok := at(v)
		if !ok {
			c.text(8, y+13, label+": not seen", pngInk)
			y += pngRow
			return
		}
		row(label, t.Add(-time.Millisecond/2), t.Add(time.Millisecond/2), pngMark, fmt.Sprintf("%.1f ms", *v))
	}
	if t, ok := at(tl.HookEndMS); ok {
		row("switchover hook", p, t, pngHook, fmt.Sprintf("%.1f ms", *tl.HookEndMS))
	}
	mark("target loaded the VM", tl.TargetLoadedMS)
	mark("target resumed", tl.TargetResumedMS)
	mark("guest's first packet", tl.FirstGuestPacketMS)
	mark("first packet into the link", tl.FirstLinkPacketMS)
	for _, name := range sortedKeys(tl.FirstReplyMS) {
		mark("first reply at "+name, tl.FirstReplyMS[name])
	}
	// The blackout: no reply arriving at the worst pinger (minus one
	// interval, as measured).
	if b := m.Blackout; !b.From.IsZero() {
		row("no reply arriving (blackout)", b.From, b.From.Add(durMS(b.MS)), pngBlack, fmt.Sprintf("%.0f ms", b.MS))
	}
	c.ticks(a, p, top, y)
	return y + 40
}

func durMS(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
