package ui

import (
	"math"
	"strings"
	"testing"
	"time"
)

func chartHTML(t *testing.T, c Chart) string {
	t.Helper()
	h, err := c.HTML()
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func pts(end time.Time, vs ...float64) []Point {
	out := make([]Point, len(vs))
	for i, v := range vs {
		out[i] = Point{T: end.Add(time.Duration(i-len(vs)+1) * 10 * time.Second), V: v}
	}
	return out
}

func TestChartEscapesText(t *testing.T) {
	end := time.Now()
	for _, c := range []Chart{
		{ID: `x"><script>alert(1)</script>`, Title: `<script>alert(2)</script>`, Unit: `<b>`, Points: pts(end, 1, 2), Window: time.Hour, End: end},
		{ID: "e", Title: `<script>alert(2)</script>`, Window: time.Hour, End: end}, // empty
	} {
		out := chartHTML(t, c)
		if strings.Contains(out, "<script") || strings.Contains(out, "<b>") {
			t.Fatalf("chart text not escaped:\n%s", out)
		}
		if !strings.Contains(out, "&lt;script&gt;alert(2)&lt;/script&gt;") {
			t.Fatalf("chart title missing (escaped):\n%s", out)
		}
	}
}

func TestChartEmpty(t *testing.T) {
	out := chartHTML(t, Chart{ID: "c", Title: "Running instances of demo", Window: time.Hour, End: time.Now(),
		Points: []Point{{T: time.Now(), V: math.NaN()}}})
	if strings.Contains(out, "<svg") || strings.Contains(out, "<polyline") {
		t.Fatalf("an empty history drew a chart:\n%s", out)
	}
	if !strings.Contains(out, "no samples yet") {
		t.Fatalf("an empty history does not say so:\n%s", out)
	}
}

func TestChartOnePoint(t *testing.T) {
	end := time.Now()
	out := chartHTML(t, Chart{ID: "c", Title: "Memory", Unit: "%", Max: 100, Points: pts(end, 42.25), Window: time.Hour, End: end, Decimals: 1})
	if strings.Contains(out, "<polyline") || strings.Count(out, "<circle") != 1 {
		t.Fatalf("one sample must be one dot, not a line:\n%s", out)
	}
	for _, want := range []string{`role="img"`, `aria-labelledby="c-t c-d"`, `<title id="c-t">Memory</title>`,
		"now 42.2%, lowest 42.2%, highest 42.2% (1 samples)", `cx="297"`, "Over the last 1 h:", "<td>42.2%</td>"} {
		if !strings.Contains(out, want) {
			t.Fatalf("one-point chart lacks %q:\n%s", want, out)
		}
	}
}

func TestChartLinesSplitAtGapsAndScale(t *testing.T) {
	end := time.Now()
	out := chartHTML(t, Chart{ID: "c", Title: "Load", Points: pts(end, 1, 2, math.NaN(), 4, 0, math.NaN(), 3), Window: time.Hour, End: end})
	if n := strings.Count(out, "<polyline"); n != 2 {
		t.Fatalf("%d polylines, want 2 (split at the gaps):\n%s", n, out)
	}
	if n := strings.Count(out, "<circle"); n != 1 {
		t.Fatalf("%d dots, want 1 (the lone last value):\n%s", n, out)
	}
	// The highest value (4) is at the top, 0 at the bottom.
	if !strings.Contains(out, ",3.0 ") || !strings.Contains(out, ",57.0") {
		t.Fatalf("values not scaled to the chart's height:\n%s", out)
	}
	if !strings.Contains(out, "now 3, lowest 0, highest 4 (5 samples)") {
		t.Fatalf("description wrong:\n%s", out)
	}
}

func TestChartRowsEveryFiveMinutes(t *testing.T) {
	end := time.Date(2026, 12, 2, 21, 0, 0, 0, time.UTC)
	var ps []Point
	for i := 360; i > 0; i-- {
		ps = append(ps, Point{T: end.Add(-time.Duration(i-1) * 10 * time.Second), V: float64(i)})
	}
	rows := Chart{Points: ps, Window: time.Hour, End: end}.rows()
	if len(rows) != 12 || rows[0][0] != "21:00:00" || rows[1][0] != "20:55:00" || rows[0][1] != "1" {
		t.Fatalf("rows of an hour of samples: %d %v", len(rows), rows)
	}
}
