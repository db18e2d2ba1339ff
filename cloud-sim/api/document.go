package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"
)

// DocumentJSON converts a YAML document (JSON is YAML too) to JSON: how
// the CLI's -f files and the console's YAML fields become request bodies,
// since the API takes JSON only.
func DocumentJSON(doc []byte) ([]byte, error) {
	d, err := ParseDoc(doc)
	if err != nil {
		return nil, err
	}
	return d.JSON()
}

// ParseRolloutSpec reads a rollout spec from a YAML or JSON document
// (cloud-sim rollout create -f, the console's YAML form), refusing fields
// it does not know, as POST /v1/rollouts does.
func ParseRolloutSpec(doc []byte) (RolloutSpec, error) {
	var spec RolloutSpec
	raw, err := DocumentJSON(doc)
	if err != nil {
		return spec, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return spec, fmt.Errorf("not a rollout spec: %w", err)
	}
	return spec, nil
}

// Doc is a YAML (or JSON, which is YAML) document a client sends to the
// API as JSON: the CLI's -f files and the web console's YAML editor read
// deployment specs, commands and rollouts through it. It keeps the YAML's
// lines, so that an error naming a field can point at its line.
type Doc struct {
	root yaml.Node
}

// DocError is a document that is not valid YAML, or not the message it
// should be: Line is its line in the YAML (0 when unknown), Key the
// field it names, if any.
type DocError struct {
	Line   int
	Key    string
	Msg    string
	Syntax bool // not YAML at all
}

func (e *DocError) Error() string {
	prefix := ""
	if e.Syntax {
		prefix = "yaml: "
	}
	if e.Line > 0 {
		return fmt.Sprintf("%sline %d: %s", prefix, e.Line, e.Msg)
	}
	return prefix + e.Msg
}

var (
	yamlLine  = regexp.MustCompile(`^yaml: (?:unmarshal errors:\s*)?line (\d+): `)
	protoPos  = regexp.MustCompile(`^proto:[\s\x{00a0}]*\(line \d+:\d+\):[\s\x{00a0}]*`)
	protoName = regexp.MustCompile(`field "?([A-Za-z_][A-Za-z0-9_]*)"?`)
)

// ParseDoc parses data, YAML or JSON; a syntax error is a *DocError with
// its line.
func ParseDoc(data []byte) (*Doc, error) {
	d := &Doc{}
	if err := yaml.Unmarshal(data, &d.root); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		line := 0
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = strings.TrimPrefix(err.Error(), m[0])
		}
		return nil, &DocError{Line: line, Msg: msg, Syntax: true}
	}
	return d, nil
}

// JSON returns the document as JSON ("null" when it is empty).
func (d *Doc) JSON() ([]byte, error) {
	var v any
	if err := d.root.Decode(&v); err != nil {
		return nil, &DocError{Line: d.root.Line, Msg: err.Error()}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, &DocError{Msg: "cannot be written as JSON (a mapping key that is not a string?): " + err.Error()}
	}
	return b, nil
}

// Decode reads the document into m, a protocol message, as protojson
// reads JSON. An unknown field or a wrong value is a *DocError naming
// the field and, when the document has it, its line.
func (d *Doc) Decode(m proto.Message) error {
	raw, err := d.JSON()
	if err != nil {
		return err
	}
	if err := protojson.Unmarshal(raw, m); err != nil {
		msg := protoPos.ReplaceAllString(err.Error(), "")
		e := &DocError{Msg: msg}
		if n := protoName.FindStringSubmatch(msg); n != nil {
			e.Key, e.Line = n[1], d.KeyLine(n[1])
		}
		return e
	}
	return nil
}

// Line returns the line of the field at path ("ports[0].hostPort", keys
// in camelCase or snake_case as protojson takes them), or of the deepest
// part of the path the document has; 0 when it has none of it.
func (d *Doc) Line(path string) int {
	n := d.top()
	if n == nil {
		return 0
	}
	line := 0
	for _, part := range splitPath(path) {
		next, at := child(n, part)
		if next == nil {
			break
		}
		n, line = next, at
	}
	return line
}

// KeyLine returns the line of the first mapping key named key (either
// spelling) anywhere in the document, 0 when there is none.
func (d *Doc) KeyLine(key string) int {
	var walk func(n *yaml.Node) int
	walk = func(n *yaml.Node) int {
		for i, c := range n.Content {
			if n.Kind == yaml.MappingNode && i%2 == 0 && sameKey(c.Value, key) {
				return c.Line
			}
			if l := walk(c); l > 0 {
				return l
			}
		}
		return 0
	}
	return walk(&d.root)
}

// top is the document's root value.
func (d *Doc) top() *yaml.Node {
	if d.root.Kind == yaml.DocumentNode && len(d.root.Content) == 1 {
		return d.root.Content[0]
	}
	return nil
}

// splitPath splits "ports[0].hostPort" into "ports", "[0]", "hostPort".
func splitPath(path string) []string {
	var out []string
	for p := range strings.SplitSeq(path, ".") {
		for p != "" {
			i := strings.IndexByte(p[1:], '[')
			if i < 0 {
				out = append(out, p)
				break
			}
			out = append(out, p[:i+1])
			p = p[i+1:]
		}
	}
	return out
}

// child is the value part names in n (a key of a mapping, or "[i]" of a
// sequence) and the line of its key (or item).
func child(n *yaml.Node, part string) (*yaml.Node, int) {
	if idx, ok := strings.CutPrefix(part, "["); ok {
		i, err := strconv.Atoi(strings.TrimSuffix(idx, "]"))
		if n.Kind != yaml.SequenceNode || err != nil || i < 0 || i >= len(n.Content) {
			return nil, 0
		}
		return n.Content[i], n.Content[i].Line
	}
	if n.Kind != yaml.MappingNode {
		return nil, 0
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if sameKey(n.Content[i].Value, part) {
			return n.Content[i+1], n.Content[i].Line
		}
	}
	return nil, 0
}

// sameKey compares field names as protojson does: hostPort is host_port.
func sameKey(a, b string) bool {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	return norm(a) == norm(b)
}
