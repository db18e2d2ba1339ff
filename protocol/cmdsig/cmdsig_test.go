package cmdsig_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/fleet-agent/fleet/protocol/cmdsig"
)

// example is the worked example of protocol/README.md.
type example struct {
	PrivateKeySeed string            `json:"privateKeySeed"`
	PublicKey      string            `json:"publicKey"`
	Topic          string            `json:"topic"`
	ContentType    string            `json:"contentType"`
	Payload        string            `json:"payload"`
	SignedBytes    string            `json:"signedBytes"`
	UserProperties map[string]string `json:"userProperties"`
}

func readExample(t *testing.T) example {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(raw), "<!-- signing-example -->\n```json\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("protocol/README.md has no signing example (<!-- signing-example --> and a json block)")
	}
	var ex example
	dec := json.NewDecoder(strings.NewReader(block))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ex); err != nil {
		t.Fatalf("the signing example: %v", err)
	}
	return ex
}

// TestREADMEExample: the worked example of protocol/README.md is what this
// package signs and verifies, byte for byte.
func TestREADMEExample(t *testing.T) {
	ex := readExample(t)
	msg, err := cmdsig.Message(ex.Topic, ex.ContentType, []byte(ex.Payload))
	if err != nil || string(msg) != ex.SignedBytes {
		t.Errorf("Message = %q, %v; README says %q", msg, err, ex.SignedBytes)
	}
	seed, _ := hex.DecodeString(ex.PrivateKeySeed)
	priv := ed25519.NewKeyFromSeed(seed)
	kid, sig, err := cmdsig.Sign(priv, ex.Topic, ex.ContentType, []byte(ex.Payload))
	if err != nil || kid != ex.UserProperties[cmdsig.PropKeyID] || sig != ex.UserProperties[cmdsig.PropSignature] {
		t.Errorf("Sign = %s %s, %v; README says %v", kid, sig, err, ex.UserProperties)
	}
	if got := base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)); got != ex.PublicKey {
		t.Errorf("public key = %s, README says %s", got, ex.PublicKey)
	}
	v, err := cmdsig.NewVerifier([]cmdsig.PublicKey{{ID: ex.UserProperties[cmdsig.PropKeyID], PublicKey: ex.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(ex.Topic, ex.ContentType, []byte(ex.Payload), ex.UserProperties[cmdsig.PropKeyID], ex.UserProperties[cmdsig.PropSignature]); err != nil {
		t.Errorf("the README example does not verify: %v", err)
	}
	// The same signature over another gateway's topic does not.
	if err := v.Verify(strings.Replace(ex.Topic, "gw-1", "gw-2", 1), ex.ContentType, []byte(ex.Payload),
		ex.UserProperties[cmdsig.PropKeyID], ex.UserProperties[cmdsig.PropSignature]); !errors.Is(err, cmdsig.ErrBadSignature) {
		t.Errorf("replayed to gw-2: err = %v, want ErrBadSignature", err)
	}
	// The keys file of the README's Keys paragraph parses.
	raw, _ := os.ReadFile("../README.md")
	if !strings.Contains(string(raw), `{"keys": [{"id": "`+ex.UserProperties[cmdsig.PropKeyID]+`", "publicKey": "`+ex.PublicKey+`"}]}`) {
		t.Error("the README's keys file example is not the example key")
	}
}

func TestVerify(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	v, err := cmdsig.NewVerifier([]cmdsig.PublicKey{cmdsig.Public(pub)})
	if err != nil {
		t.Fatal(err)
	}
	kid, sig, _ := cmdsig.Sign(priv, "t/a", "application/json", []byte("{}"))
	tests := []struct {
		name               string
		topic, ct, payload string
		kid, sig           string
		want               error
	}{
		{"good", "t/a", "application/json", "{}", kid, sig, nil},
		{"unsigned", "t/a", "application/json", "{}", "", "", cmdsig.ErrUnsigned},
		{"unknown key", "t/a", "application/json", "{}", "0011223344556677", sig, cmdsig.ErrUnknownKey},
		{"bad base64", "t/a", "application/json", "{}", kid, "%%%", cmdsig.ErrBadSignature},
		{"other topic", "t/b", "application/json", "{}", kid, sig, cmdsig.ErrBadSignature},
		{"other content type", "t/a", "", "{}", kid, sig, cmdsig.ErrBadSignature},
		{"other payload", "t/a", "application/json", "{ }", kid, sig, cmdsig.ErrBadSignature},
		{"newline in topic", "t/a\napplication/json", "", "{}", kid, sig, cmdsig.ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := v.Verify(tt.topic, tt.ct, []byte(tt.payload), tt.kid, tt.sig); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

// FuzzParseKeys: a keys file never panics the parser.
func FuzzParseKeys(f *testing.F) {
	f.Add([]byte(`{"keys": [{"id": "21fe31dfa154a261", "publicKey": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}]}`))
	f.Add([]byte(`{"keys": []}`))
	f.Fuzz(func(t *testing.T, b []byte) { cmdsig.ParseKeys(b) })
}
