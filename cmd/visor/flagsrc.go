package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// Where a flag's value comes from, highest first: the command line, the
// environment variable the flag names (envVar), the JSON config file (the
// agent's --config), and last the default given where the flag is
// declared, which is the only place a default is written down.

// envAnnotation is the pflag annotation holding the environment variable
// that sets a flag the command line did not set.
const envAnnotation = "visor_env"

// envName is the environment variable of the flag name: VISOR_ and the
// name in upper case, dashes as underscores ("data-dir": VISOR_DATA_DIR).
func envName(flag string) string {
	return "VISOR_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// envVar lets environment variable name set the flag of fs called flag,
// and says so in the flag's help.
func envVar(fs *pflag.FlagSet, flag, name string) {
	f := fs.Lookup(flag)
	f.Usage += " (env " + name + ")"
	if err := fs.SetAnnotation(flag, envAnnotation, []string{name}); err != nil {
		panic(err) // flag was just looked up
	}
}

// configFile is a JSON config file's values by flag name.
type configFile struct {
	path   string
	values map[string]string
}

// applySources sets every flag of fs that the command line did not set
// from its environment variable, when that is set and not empty, or else
// from file (which may be nil). Values set so do not count as Changed:
// Changed still means "given on the command line".
func applySources(fs *pflag.FlagSet, file *configFile) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		if names := f.Annotations[envAnnotation]; len(names) > 0 {
			if v := os.Getenv(names[0]); v != "" {
				if err := f.Value.Set(v); err != nil {
					errs = append(errs, usageError("%s: %v", names[0], err))
				}
				return
			}
		}
		if file == nil {
			return
		}
		if v, ok := file.values[f.Name]; ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, usageError("config %s: %s: %v", file.path, configKey(f.Name), err))
			}
		}
	})
	return joinErrors(errs...)
}

// configKey is the config file's key of flag name: underscores for dashes.
func configKey(flag string) string { return strings.ReplaceAll(flag, "-", "_") }

// readConfigFile reads a JSON config file whose keys are the names of
// flags of fs with underscores ("data_dir"). Values are strings, numbers,
// booleans, or (labels) an object of strings. An unknown key is an error,
// except keys starting with "_", which are comments; so is key skip.
func readConfigFile(path string, fs *pflag.FlagSet, skip string) (*configFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError("config: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, usageError("config %s: not valid JSON: %v", path, err)
	}
	out := &configFile{path: path, values: map[string]string{}}
	for k, v := range m {
		if strings.HasPrefix(k, "_") {
			continue
		}
		name := strings.ReplaceAll(k, "_", "-")
		if fs.Lookup(name) == nil || name == skip {
			return nil, usageError("config %s: unknown field %q", path, k)
		}
		s, err := configValue(k, v)
		if err != nil {
			return nil, usageError("config %s: %v", path, err)
		}
		out.values[name] = s
	}
	return out, nil
}

// configValue is a config file value in the form its flag parses.
func configValue(key string, v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	case map[string]any:
		kv := make([]string, 0, len(x))
		for lk, lv := range x {
			s, ok := lv.(string)
			if !ok {
				return "", fmt.Errorf("%s.%s must be a string", key, lk)
			}
			kv = append(kv, lk+"="+s)
		}
		sort.Strings(kv)
		return strings.Join(kv, ","), nil
	default:
		return "", fmt.Errorf("field %q has an unsupported type", key)
	}
}
