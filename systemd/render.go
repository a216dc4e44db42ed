package systemd

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"
	"unicode"
)

// Init systems Render knows how to write a service definition for.
const (
	// InitSystemd selects a systemd unit file.
	InitSystemd = "systemd"
	// InitLaunchd selects a launchd property list (macOS).
	InitLaunchd = "launchd"
)

// ServiceName is the name of the service in every init system: the systemd
// unit visor-agent.service, the launchd label visor-agent.
const ServiceName = "visor-agent"

// Default paths of the packaged layout (see packaging/).
const (
	// DefaultBinary is where the .deb/.rpm packages install visor.
	DefaultBinary = "/usr/bin/visor"
	// DefaultConfigPath is the agent configuration the packages install.
	DefaultConfigPath = "/etc/visor/agent.json"
	// DefaultLaunchdLogPath receives the agent's stdout and stderr on macOS.
	DefaultLaunchdLogPath = "/var/log/visor-agent.log"
)

var (
	// ErrUnknownInit is returned for an init system other than InitSystemd
	// or InitLaunchd.
	ErrUnknownInit = errors.New("systemd: unknown init system")
	// ErrInvalidOptions is returned when Options cannot be rendered safely.
	ErrInvalidOptions = errors.New("systemd: invalid options")
)

// Options are the inputs of a rendered service definition.
type Options struct {
	// Binary is the absolute path of the visor executable. Required.
	Binary string
	// ConfigPath, if set, is passed to the agent as "-config PATH". It must
	// be absolute: services start with "/" as their working directory.
	ConfigPath string
	// Args are further agent flags, passed after "agent" and -config, in
	// order (e.g. "-host", "web-1", "--endpoints", "10.0.0.1:2379").
	Args []string
	// User runs the agent as this user. Empty means root, which the agent
	// needs to run workloads as other users and to manage their cgroups.
	User string
	// LogPath is the file launchd appends the agent's stdout and stderr to.
	// Empty means DefaultLaunchdLogPath. systemd ignores it: the journal
	// collects the agent's stderr.
	LogPath string
}

// PackageOptions returns the options the .deb and .rpm packages render
// visor-agent.service with: the packaged binary and configuration, as root.
func PackageOptions() Options {
	return Options{Binary: DefaultBinary, ConfigPath: DefaultConfigPath}
}

// Argv returns the agent's full command line: binary, "agent", -config and
// the extra arguments.
func (o Options) Argv() []string {
	argv := []string{o.Binary, "agent"}
	if o.ConfigPath != "" {
		argv = append(argv, "-config", o.ConfigPath)
	}
	return append(argv, o.Args...)
}

var userRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}\$?$`)

// validate rejects options that cannot be written into a unit or a plist
// without changing their meaning.
func (o Options) validate() error {
	if o.Binary == "" || !filepath.IsAbs(o.Binary) {
		return fmt.Errorf("%w: binary path %q is not absolute", ErrInvalidOptions, o.Binary)
	}
	if o.ConfigPath != "" && !filepath.IsAbs(o.ConfigPath) {
		return fmt.Errorf("%w: config path %q is not absolute", ErrInvalidOptions, o.ConfigPath)
	}
	if o.LogPath != "" && !filepath.IsAbs(o.LogPath) {
		return fmt.Errorf("%w: log path %q is not absolute", ErrInvalidOptions, o.LogPath)
	}
	if o.User != "" && !userRE.MatchString(o.User) {
		return fmt.Errorf("%w: user name %q", ErrInvalidOptions, o.User)
	}
	for _, a := range append(o.Argv(), o.LogPath) {
		if strings.IndexFunc(a, unicode.IsControl) >= 0 {
			return fmt.Errorf("%w: argument %q contains a control character", ErrInvalidOptions, a)
		}
	}
	return nil
}

// Render returns the service definition for init (InitSystemd or
// InitLaunchd) running the agent as o describes.
func Render(init string, o Options) ([]byte, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	var t *template.Template
	switch init {
	case InitSystemd:
		t = unitTemplate
	case InitLaunchd:
		t = plistTemplate
		if o.LogPath == "" {
			o.LogPath = DefaultLaunchdLogPath
		}
	default:
		return nil, fmt.Errorf("%w: %q (want %s or %s)", ErrUnknownInit, init, InitSystemd, InitLaunchd)
	}
	var buf bytes.Buffer
	data := struct {
		Options
		Name string
		Argv []string
		Exec string
	}{Options: o, Name: ServiceName, Argv: o.Argv(), Exec: execLine(o.Argv())}
	if err := t.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("render %s: %w", init, err)
	}
	return buf.Bytes(), nil
}

// execLine quotes argv for ExecStart= (systemd.service(5) "Command lines"):
// '%' and '$' are doubled so no specifier or variable expansion happens, and
// words with blanks, quotes, backslashes or a lone ';' are double-quoted.
func execLine(argv []string) string {
	words := make([]string, len(argv))
	for i, a := range argv {
		a = strings.ReplaceAll(a, "%", "%%")
		a = strings.ReplaceAll(a, "$", "$$")
		if a != "" && !strings.ContainsAny(a, " \t\"'\\;") {
			words[i] = a
			continue
		}
		words[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
	}
	return strings.Join(words, " ")
}

func xmlEscape(s string) (string, error) {
	var b strings.Builder
	if err := xml.EscapeText(&b, []byte(s)); err != nil {
		return "", err
	}
	return b.String(), nil
}

var (
	unitTemplate  = template.Must(template.New("unit").Parse(unitText))
	plistTemplate = template.Must(template.New("plist").Funcs(template.FuncMap{"xml": xmlEscape}).Parse(plistText))
)
