// Package codec encodes and decodes protocol messages as protobuf or JSON.
//
// The MQTT v5 content type selects the encoding: "application/json" is
// protojson, anything else (normally "application/x-protobuf") is binary
// protobuf. Decoding is strict in both encodings: a field the receiver does
// not know is an error that names it, never silently dropped.
package codec

import (
	"errors"
	"fmt"
	"mime"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Content types of the two encodings.
const (
	ContentTypeProtobuf = "application/x-protobuf"
	ContentTypeJSON     = "application/json"
)

// Encoding is protobuf or JSON.
type Encoding int

const (
	Protobuf Encoding = iota
	JSON
)

// ParseEncoding parses "protobuf" or "json".
func ParseEncoding(s string) (Encoding, error) {
	switch strings.ToLower(s) {
	case "protobuf", "proto", "":
		return Protobuf, nil
	case "json":
		return JSON, nil
	}
	return Protobuf, fmt.Errorf("payload encoding %q: use protobuf or json", s)
}

func (e Encoding) String() string {
	if e == JSON {
		return "json"
	}
	return "protobuf"
}

// ContentType is the MQTT v5 content type of e.
func (e Encoding) ContentType() string {
	if e == JSON {
		return ContentTypeJSON
	}
	return ContentTypeProtobuf
}

// FromContentType returns JSON for "application/json" (parameters allowed)
// and Protobuf for anything else, including no content type.
func FromContentType(ct string) Encoding {
	switch ct {
	case ContentTypeProtobuf, "": // what gateways send: no parsing, no allocation
		return Protobuf
	case ContentTypeJSON:
		return JSON
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && mt == ContentTypeJSON {
		return JSON
	}
	return Protobuf
}

var jsonOut = protojson.MarshalOptions{EmitDefaultValues: true}

// Marshal encodes m. JSON output includes default values, so that enum fields
// such as `"code": "OK"` are always present.
func Marshal(e Encoding, m proto.Message) ([]byte, error) {
	if e == JSON {
		return jsonOut.Marshal(m)
	}
	return proto.Marshal(m)
}

// ErrUnknownField is wrapped when a message carries a field this version does
// not know.
var ErrUnknownField = errors.New("unknown field")

// Unmarshal decodes b into m, refusing unknown fields in both encodings.
func Unmarshal(e Encoding, b []byte, m proto.Message) error {
	if e == JSON {
		if err := protojson.Unmarshal(b, m); err != nil {
			if strings.Contains(err.Error(), "unknown field") {
				return fmt.Errorf("%w: %v", ErrUnknownField, err)
			}
			return err
		}
		return nil
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return err
	}
	return checkUnknown(m.ProtoReflect())
}

// checkUnknown reports the first field number m, or a message in it, does
// not know.
func checkUnknown(m protoreflect.Message) error {
	bad, path := firstUnknown(m)
	if bad == nil {
		return nil
	}
	num, _, n := protowire.ConsumeTag(bad.GetUnknown())
	if n < 0 {
		return fmt.Errorf("%w: malformed unknown field in %s", ErrUnknownField, describe(bad, path))
	}
	return fmt.Errorf("%w: field number %d in %s is not part of this protocol version", ErrUnknownField, num, describe(bad, path))
}

// firstUnknown walks m and returns the first message with unknown fields
// and its path from m, built only when there is one: every status a
// controller receives goes through here.
func firstUnknown(m protoreflect.Message) (protoreflect.Message, string) {
	if len(m.GetUnknown()) > 0 {
		return m, ""
	}
	// The fields by index, not m.Range: its closure and what it captures
	// were most of a status's allocations.
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.Message() == nil || fd.IsMap() && fd.MapValue().Message() == nil || !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			for j := range l.Len() {
				if bad, path := firstUnknown(l.Get(j).Message()); bad != nil {
					return bad, join(fmt.Sprintf("%s[%d]", fd.JSONName(), j), path)
				}
			}
		case fd.IsMap():
			var bad protoreflect.Message
			var path string
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if bad, path = firstUnknown(mv.Message()); bad != nil {
					path = join(fmt.Sprintf("%s[%s]", fd.JSONName(), k.String()), path)
				}
				return bad == nil
			})
			if bad != nil {
				return bad, path
			}
		default:
			if bad, path := firstUnknown(v.Message()); bad != nil {
				return bad, join(fd.JSONName(), path)
			}
		}
	}
	return nil, ""
}

func describe(m protoreflect.Message, path string) string {
	if path == "" {
		return string(m.Descriptor().FullName())
	}
	return fmt.Sprintf("%s (%s)", path, m.Descriptor().FullName())
}

// join is the path of rest within field.
func join(field, rest string) string {
	if rest == "" {
		return field
	}
	return field + "." + rest
}
