package systemd

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden and visor-agent.service from the templates")

// renderCases are rendered against testdata/<name>.golden.
var renderCases = []struct {
	name string
	init string
	opts Options
}{
	{"systemd-package", InitSystemd, PackageOptions()},
	{"systemd-flags", InitSystemd, Options{
		Binary:     "/opt/visor/bin/visor",
		ConfigPath: "/etc/visor/agent.json",
		Args:       []string{"-host", "web 1", "--endpoints", "10.0.0.1:2379,10.0.0.2:2379", "-log-level", `100%$HOME"\;`},
		User:       "visor",
	}},
	{"launchd-default", InitLaunchd, Options{Binary: "/usr/local/bin/visor", ConfigPath: "/usr/local/etc/visor/agent.json"}},
	{"launchd-flags", InitLaunchd, Options{
		Binary:  "/usr/local/bin/visor",
		Args:    []string{"-host", "mac<1>&", "--endpoints", "10.0.0.1:2379"},
		User:    "_visor",
		LogPath: "/usr/local/var/log/visor.log",
	}},
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Render(tc.init, tc.opts)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Render differs from %s (go test -update rewrites it):\n%s", golden, got)
			}
		})
	}
}

// TestPackagedUnit keeps the checked-in, packaged unit identical to the
// template rendered with the package's layout.
func TestPackagedUnit(t *testing.T) {
	got, err := Render(InitSystemd, PackageOptions())
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("visor-agent.service", got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if !bytes.Equal(PackagedUnit, got) {
		t.Errorf("visor-agent.service differs from Render(InitSystemd, PackageOptions()); run go test -update")
	}
}

func TestRenderRejects(t *testing.T) {
	good := Options{Binary: "/usr/bin/visor"}
	cases := []struct {
		name string
		init string
		opts func(o Options) Options
		want error
	}{
		{"unknown init", "upstart", func(o Options) Options { return o }, ErrUnknownInit},
		{"empty binary", InitSystemd, func(o Options) Options { o.Binary = ""; return o }, ErrInvalidOptions},
		{"relative binary", InitSystemd, func(o Options) Options { o.Binary = "bin/visor"; return o }, ErrInvalidOptions},
		{"relative config", InitSystemd, func(o Options) Options { o.ConfigPath = "agent.json"; return o }, ErrInvalidOptions},
		{"relative log", InitLaunchd, func(o Options) Options { o.LogPath = "visor.log"; return o }, ErrInvalidOptions},
		{"bad user", InitSystemd, func(o Options) Options { o.User = "root\nExecStartPre=/bin/sh"; return o }, ErrInvalidOptions},
		{"newline in arg", InitSystemd, func(o Options) Options { o.Args = []string{"-host", "a\n[Service]"}; return o }, ErrInvalidOptions},
		{"newline in binary", InitLaunchd, func(o Options) Options { o.Binary = "/usr/bin/vi\nsor"; return o }, ErrInvalidOptions},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, err := Render(tc.init, tc.opts(good))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Render error = %v, want %v", err, tc.want)
			}
			if out != nil {
				t.Errorf("Render returned output with an error: %q", out)
			}
		})
	}
}

// newerKeys are unit keys newer than some systemd that verifies the unit:
// such a systemd reports them unknown (and ignores them, as the unit
// intends). Only these complaints are allowed.
var newerKeys = []string{"DelegateSubgroup"} // systemd 254

// complaints returns systemd-analyze's output without the lines about
// newerKeys.
func complaints(out string) string {
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		allowed := l == ""
		for _, k := range newerKeys {
			allowed = allowed || strings.Contains(l, "Unknown key '"+k+"'") || strings.Contains(l, "Unknown key name '"+k+"'")
		}
		if !allowed {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// TestUnitVerify runs systemd-analyze verify on every rendered unit, with
// ExecStart pointing at a real executable, and fails on any complaint.
func TestUnitVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed; cannot verify the unit")
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range renderCases {
		if tc.init != InitSystemd {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := tc.opts
			o.Binary = bin
			o.User = "" // the host may lack the user; verify would complain
			unit, err := Render(InitSystemd, o)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), ServiceName+".service")
			if err := os.WriteFile(path, unit, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(analyze, "verify", path)
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stderr, &stderr
			err = cmd.Run()
			if err != nil || complaints(stderr.String()) != "" {
				t.Fatalf("systemd-analyze verify: %v\n%s\n--- unit:\n%s", err, stderr.String(), unit)
			}
		})
	}
}

// plistValue is a decoded property list value: string, bool, int64 (as
// string of digits kept in Integer), []plistValue or map[string]plistValue.
type plistValue struct {
	Kind  string // string, true, false, integer, array, dict
	Str   string
	Array []plistValue
	Dict  map[string]plistValue
}

// decodePlist parses an XML property list strictly: one root <dict> in
// <plist version="1.0">, dict keys followed by exactly one value each.
func decodePlist(data []byte) (plistValue, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	for {
		tok, err := d.Token()
		if err != nil {
			return plistValue{}, fmt.Errorf("no <plist>: %w", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if se.Name.Local != "plist" {
				return plistValue{}, fmt.Errorf("root element <%s>, want <plist>", se.Name.Local)
			}
			if len(se.Attr) != 1 || se.Attr[0].Name.Local != "version" || se.Attr[0].Value != "1.0" {
				return plistValue{}, fmt.Errorf("plist attributes %v", se.Attr)
			}
			break
		}
	}
	v, end, err := decodeValue(d)
	if err != nil {
		return v, err
	}
	if end || v.Kind != "dict" {
		return v, fmt.Errorf("plist root is %q, want dict", v.Kind)
	}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return v, nil
		}
		if err != nil {
			return v, err
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			return v, fmt.Errorf("second root value <%s>", tok.Name.Local)
		case xml.CharData:
			if len(bytes.TrimSpace(tok)) > 0 {
				return v, fmt.Errorf("stray text %q", tok)
			}
		}
	}
}

// decodeValue reads the next value; end reports a closing tag instead.
func decodeValue(d *xml.Decoder) (v plistValue, end bool, err error) {
	for {
		tok, err := d.Token()
		if err != nil {
			return v, false, err
		}
		switch tok := tok.(type) {
		case xml.EndElement:
			return v, true, nil
		case xml.CharData:
			if len(bytes.TrimSpace(tok)) > 0 {
				return v, false, fmt.Errorf("stray text %q", tok)
			}
		case xml.StartElement:
			v.Kind = tok.Name.Local
			switch v.Kind {
			case "string", "integer", "key":
				var s string
				if err := d.DecodeElement(&s, &tok); err != nil {
					return v, false, err
				}
				v.Str = s
				return v, false, nil
			case "true", "false":
				if err := d.Skip(); err != nil {
					return v, false, err
				}
				return v, false, nil
			case "array":
				for {
					e, end, err := decodeValue(d)
					if err != nil || end {
						return v, false, err
					}
					v.Array = append(v.Array, e)
				}
			case "dict":
				v.Dict = map[string]plistValue{}
				for {
					k, end, err := decodeValue(d)
					if err != nil || end {
						return v, false, err
					}
					if k.Kind != "key" {
						return v, false, fmt.Errorf("dict entry <%s>, want <key>", k.Kind)
					}
					e, end, err := decodeValue(d)
					if err != nil {
						return v, false, err
					}
					if end || e.Kind == "key" {
						return v, false, fmt.Errorf("key %q has no value", k.Str)
					}
					if _, dup := v.Dict[k.Str]; dup {
						return v, false, fmt.Errorf("duplicate key %q", k.Str)
					}
					v.Dict[k.Str] = e
				}
			default:
				return v, false, fmt.Errorf("unknown plist element <%s>", v.Kind)
			}
		}
	}
}

func TestPlistParses(t *testing.T) {
	for _, tc := range renderCases {
		if tc.init != InitLaunchd {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data, err := Render(InitLaunchd, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			root, err := decodePlist(data)
			if err != nil {
				t.Fatalf("not a valid property list: %v\n%s", err, data)
			}
			str := func(key string) string {
				t.Helper()
				v, ok := root.Dict[key]
				if !ok || v.Kind != "string" {
					t.Fatalf("%s = %+v, want a string", key, v)
				}
				return v.Str
			}
			if got := str("Label"); got != ServiceName {
				t.Errorf("Label = %q, want %q", got, ServiceName)
			}
			logPath := tc.opts.LogPath
			if logPath == "" {
				logPath = DefaultLaunchdLogPath
			}
			if got := str("StandardErrorPath"); got != logPath {
				t.Errorf("StandardErrorPath = %q, want %q", got, logPath)
			}
			if tc.opts.User != "" {
				if got := str("UserName"); got != tc.opts.User {
					t.Errorf("UserName = %q, want %q", got, tc.opts.User)
				}
			} else if _, ok := root.Dict["UserName"]; ok {
				t.Errorf("UserName set without Options.User")
			}
			args := root.Dict["ProgramArguments"]
			if args.Kind != "array" {
				t.Fatalf("ProgramArguments is %q, want array", args.Kind)
			}
			var argv []string
			for _, a := range args.Array {
				if a.Kind != "string" {
					t.Fatalf("ProgramArguments element is %q, want string", a.Kind)
				}
				argv = append(argv, a.Str)
			}
			if !reflect.DeepEqual(argv, tc.opts.Argv()) {
				t.Errorf("ProgramArguments = %q, want %q", argv, tc.opts.Argv())
			}
			for _, key := range []string{"RunAtLoad", "AbandonProcessGroup"} {
				if got := root.Dict[key].Kind; got != "true" {
					t.Errorf("%s = %q, want true", key, got)
				}
			}
			ka := root.Dict["KeepAlive"]
			if ka.Kind != "dict" || ka.Dict["SuccessfulExit"].Kind != "false" {
				t.Errorf("KeepAlive = %+v, want {SuccessfulExit: false}", ka)
			}
			for _, key := range []string{"ThrottleInterval", "ExitTimeOut"} {
				if v := root.Dict[key]; v.Kind != "integer" || strings.Trim(v.Str, "0123456789") != "" {
					t.Errorf("%s = %+v, want an integer", key, v)
				}
			}
		})
	}
}

func TestExecLine(t *testing.T) {
	cases := []struct {
		argv []string
		want string
	}{
		{[]string{"/usr/bin/visor", "agent"}, "/usr/bin/visor agent"},
		{[]string{"/v", "a b"}, `/v "a b"`},
		{[]string{"/v", "50%"}, `/v 50%%`},
		{[]string{"/v", "$HOME"}, `/v $$HOME`},
		{[]string{"/v", `say "hi"`}, `/v "say \"hi\""`},
		{[]string{"/v", `a\b`}, `/v "a\\b"`},
		{[]string{"/v", ";"}, `/v ";"`},
		{[]string{"/v", ""}, `/v ""`},
	}
	for _, tc := range cases {
		if got := execLine(tc.argv); got != tc.want {
			t.Errorf("execLine(%q) = %s, want %s", tc.argv, got, tc.want)
		}
	}
}
