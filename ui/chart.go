package ui

import (
	"fmt"
	"html/template"
	"math"
	"strconv"
	"strings"
	"time"
)

// Chart is a small time-series chart, rendered on the server as inline
// SVG (no script draws it). It is accessible without seeing it: the SVG
// has a title and a description (latest, lowest and highest value), and
// the numbers themselves follow in a table a screen reader (or anyone)
// can open.
type Chart struct {
	// ID is unique within the page (it names the SVG's title and desc).
	ID string
	// Title says what is drawn, e.g. "Running instances of web".
	Title string
	// Unit follows each number ("%", " instances"); may be empty.
	Unit string
	// Points are the samples, oldest first; NaN values are gaps.
	Points []Point
	// Max is the top of the y axis; 0 takes the highest value.
	Max float64
	// Window is the time the x axis spans, ending at End.
	Window time.Duration
	End    time.Time
	// Decimals of the numbers shown.
	Decimals int
}

// Chart size in SVG user units; CSS scales it.
const (
	chartW   = 300.0
	chartH   = 60.0
	chartPad = 3.0
)

// rowEvery is the spacing of the rows of a chart's number table.
const rowEvery = 5 * time.Minute

// chartView is what the chart template gets.
type chartView struct {
	ID, Title, Desc string
	W, H            float64
	Lines           []string // polyline points attributes
	Dots            [][2]float64
	Rows            [][2]string // time, value
	Empty           bool
}

var chartTmpl = template.Must(template.New("chart.html").ParseFS(files, "templates/chart.html"))

// HTML renders the chart as a <figure> holding the SVG and its numbers.
// Every text (title, numbers) is escaped by html/template.
func (c Chart) HTML() (template.HTML, error) {
	var b strings.Builder
	if err := chartTmpl.Execute(&b, c.view()); err != nil {
		return "", fmt.Errorf("ui: render chart %s: %w", c.ID, err)
	}
	return template.HTML(b.String()), nil // html/template escaped it
}

func (c Chart) num(v float64) string {
	if math.IsNaN(v) {
		return "no value"
	}
	return strconv.FormatFloat(v, 'f', c.Decimals, 64) + c.Unit
}

func (c Chart) view() chartView {
	v := chartView{ID: c.ID, Title: c.Title, W: chartW, H: chartH}
	var lo, hi, last float64 = math.Inf(1), math.Inf(-1), math.NaN()
	n := 0
	for _, p := range c.Points {
		if math.IsNaN(p.V) {
			continue
		}
		lo, hi, last = min(lo, p.V), max(hi, p.V), p.V
		n++
	}
	if n == 0 {
		v.Empty = true
		v.Desc = "No samples yet."
		return v
	}
	v.Desc = fmt.Sprintf("Over the last %s: now %s, lowest %s, highest %s (%d samples).",
		spanText(c.Window), c.num(last), c.num(lo), c.num(hi), n)
	top := c.Max
	if top <= 0 {
		top = hi
	}
	if top <= 0 {
		top = 1
	}
	v.Lines, v.Dots = c.shapes(top)
	v.Rows = c.rows()
	return v
}

// shapes turns the points into polylines (split at gaps) and dots (a
// value alone between gaps, which a line cannot show).
func (c Chart) shapes(top float64) ([]string, [][2]float64) {
	start := c.End.Add(-c.Window)
	xy := func(p Point) (float64, float64) {
		x := chartPad + (chartW-2*chartPad)*float64(p.T.Sub(start))/float64(max(c.Window, time.Nanosecond))
		x = min(max(x, chartPad), chartW-chartPad)
		y := chartPad + (chartH-2*chartPad)*(1-min(p.V, top)/top)
		return x, y
	}
	var lines []string
	var dots [][2]float64
	var cur []string
	var curXY [2]float64
	flush := func() {
		switch len(cur) {
		case 0:
		case 1:
			dots = append(dots, curXY)
		default:
			lines = append(lines, strings.Join(cur, " "))
		}
		cur = nil
	}
	for _, p := range c.Points {
		if math.IsNaN(p.V) {
			flush()
			continue
		}
		x, y := xy(p)
		curXY = [2]float64{x, y}
		cur = append(cur, strconv.FormatFloat(x, 'f', 1, 64)+","+strconv.FormatFloat(y, 'f', 1, 64))
	}
	flush()
	return lines, dots
}

// rows are the numbers as text: one per rowEvery (the last sample before
// each mark) and the latest, newest first.
func (c Chart) rows() [][2]string {
	var out [][2]string
	var mark time.Time
	for i := len(c.Points) - 1; i >= 0; i-- {
		p := c.Points[i]
		if !mark.IsZero() && p.T.After(mark) {
			continue
		}
		out = append(out, [2]string{p.T.UTC().Format("15:04:05"), c.num(p.V)})
		mark = p.T.Add(-rowEvery)
	}
	return out
}

// spanText says a window in whole hours or minutes ("1 h", "15 min").
func spanText(d time.Duration) string {
	if d >= time.Hour && d%time.Hour == 0 {
		return fmt.Sprintf("%d h", d/time.Hour)
	}
	return fmt.Sprintf("%d min", max(1, int(d.Round(time.Minute)/time.Minute)))
}
