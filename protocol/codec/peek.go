package codec

import (
	"encoding/json"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// PeekCommandID recovers the id of a command that could not be decoded in
// full, so that the rejection can still be answered. It returns "" when no
// plausible id is found.
func PeekCommandID(e Encoding, b []byte) string {
	var id string
	if e == JSON {
		var top map[string]json.RawMessage
		if json.Unmarshal(b, &top) != nil || json.Unmarshal(top["id"], &id) != nil {
			return ""
		}
	} else {
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 {
				return ""
			}
			b = b[n:]
			if num == 1 && typ == protowire.BytesType {
				v, m := protowire.ConsumeBytes(b)
				if m < 0 {
					return ""
				}
				id = string(v)
				break
			}
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return ""
			}
			b = b[m:]
		}
	}
	if id == "" || len(id) > 64 || !utf8.ValidString(id) {
		return ""
	}
	return id
}
