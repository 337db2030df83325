package config

import (
	"encoding"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is a problem with one key of the configuration file.
type Error struct {
	File string // file name, "" when parsed from memory
	Line int    // 1-based line, 0 when unknown
	Key  string // dotted key path, e.g. proxy.upstreams[0].address
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(":")
	}
	if e.Line > 0 {
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(": ")
	} else if e.File != "" {
		b.WriteString(" ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads, defaults and validates the file at path. Relative file names
// inside it are taken relative to the file's directory.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := parse(data, path)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c.resolvePaths(dir)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse decodes, defaults and validates a configuration held in memory.
func Parse(data []byte) (*Config, error) {
	c, err := parse(data, "")
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func parse(data []byte, file string) (*Config, error) {
	c := &Config{lines: map[string]int{}, file: file}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{File: file, Line: yamlErrLine(err), Msg: yamlErrMsg(err)}
	}
	if len(doc.Content) > 0 {
		d := decoder{file: file, lines: c.lines}
		if err := d.decode(doc.Content[0], reflect.ValueOf(c).Elem(), ""); err != nil {
			return nil, err
		}
	}
	c.withDefaults()
	return c, nil
}

type decoder struct {
	file  string
	lines map[string]int
}

func (d *decoder) errf(n *yaml.Node, key, format string, args ...any) error {
	return &Error{File: d.file, Line: n.Line, Key: key, Msg: fmt.Sprintf(format, args...)}
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// decode stores node n into v, checking every key against v's yaml tags.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if path != "" {
		d.lines[path] = n.Line
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // "key:" with no value keeps the default
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return d.decode(n, v.Elem(), path)
	}
	if reflect.PointerTo(v.Type()).Implements(textUnmarshaler) {
		if n.Kind != yaml.ScalarNode {
			return d.errf(n, path, "want a single value, got %s", kindName(n))
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			return d.errf(n, path, "%v", err)
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Struct:
		return d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return d.errf(n, path, "want a list, got %s", kindName(n))
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			if err := d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		return d.errf(n, path, "want a single value, got %s", kindName(n))
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(n.Value)
	case reflect.Bool:
		b, ok := parseBool(n.Value)
		if !ok {
			return d.errf(n, path, "%q is not a boolean (want true or false)", n.Value)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		i, err := strconv.ParseInt(n.Value, 10, v.Type().Bits())
		if err != nil {
			return d.errf(n, path, "%q is not an integer", n.Value)
		}
		v.SetInt(i)
	case reflect.Float64:
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil {
			return d.errf(n, path, "%q is not a number", n.Value)
		}
		v.SetFloat(f)
	default:
		return d.errf(n, path, "unsupported field type %s", v.Type())
	}
	return nil
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind != yaml.MappingNode {
		return d.errf(n, path, "want a mapping of keys, got %s", kindName(n))
	}
	t := v.Type()
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		name := joinKey(path, k.Value)
		if line, dup := seen[k.Value]; dup {
			return d.errf(k, name, "key given twice (first on line %d)", line)
		}
		seen[k.Value] = k.Line
		idx := fieldIndex(t, k.Value)
		if idx < 0 {
			return d.errf(k, name, "unknown key (known keys here: %s)", strings.Join(knownKeys(t), ", "))
		}
		if err := d.decode(val, v.Field(idx), name); err != nil {
			return err
		}
	}
	return nil
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func fieldIndex(t reflect.Type, key string) int {
	for i := range t.NumField() {
		if tag := t.Field(i).Tag.Get("yaml"); tag != "" && tag == key {
			return i
		}
	}
	return -1
}

func knownKeys(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		if tag := t.Field(i).Tag.Get("yaml"); tag != "" {
			keys = append(keys, tag)
		}
	}
	sort.Strings(keys)
	return keys
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

// yamlErrLine and yamlErrMsg split yaml.v3's "yaml: line N: msg" syntax errors.
func yamlErrLine(err error) int {
	msg := err.Error()
	if _, rest, ok := strings.Cut(msg, "line "); ok {
		if num, _, ok := strings.Cut(rest, ":"); ok {
			if n, err := strconv.Atoi(num); err == nil {
				return n
			}
		}
	}
	return 0
}

func yamlErrMsg(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if strings.HasPrefix(msg, "line ") {
		if _, rest, ok := strings.Cut(msg, ": "); ok {
			msg = rest
		}
	}
	return "not valid YAML: " + msg
}

// errAt builds an Error for a key, with the line it was read from if any.
func (c *Config) errAt(key, format string, args ...any) error {
	return &Error{File: c.file, Line: c.lines[key], Key: key, Msg: fmt.Sprintf(format, args...)}
}

// IsConfigError reports whether err is a configuration error.
func IsConfigError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

// parseBool accepts the spellings administrators use in YAML files.
func parseBool(s string) (value, ok bool) {
	switch strings.ToLower(s) {
	case "true", "yes", "on", "1":
		return true, true
	case "false", "no", "off", "0":
		return false, true
	}
	return false, false
}
