package credential_test

import (
	"testing"

	"github.com/fleet-agent/fleet/internal/credential"
)

func TestParseRegistry(t *testing.T) {
	tests := []struct {
		in   string
		want credential.Key
	}{
		{"", credential.Key{Host: "docker.io"}},
		{"docker.io", credential.Key{Host: "docker.io"}},
		{"index.docker.io", credential.Key{Host: "docker.io"}},
		{"https://index.docker.io/v1/", credential.Key{Host: "docker.io"}},
		{"registry-1.docker.io/myorg/", credential.Key{Host: "docker.io", Prefix: "myorg"}},
		{"123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/", credential.Key{Host: "123456789012.dkr.ecr.eu-west-1.amazonaws.com", Prefix: "team"}},
		{"Registry.Example.com:5000/a/b", credential.Key{Host: "registry.example.com:5000", Prefix: "a/b"}},
	}
	for _, tt := range tests {
		got, err := credential.ParseRegistry(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseRegistry(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestSelectLongestPrefix(t *testing.T) {
	scopes := []credential.Key{
		{Host: "docker.io"},
		{Host: "registry.example.com"},
		{Host: "registry.example.com", Prefix: "team"},
		{Host: "registry.example.com", Prefix: "team/app"},
	}
	tests := []struct {
		image string
		want  int
	}{
		{"nginx", 0},
		{"eurotech/esf:7", 0},
		{"registry.example.com/other/x:1", 1},
		{"registry.example.com/team/web:1", 2},
		{"registry.example.com/team/app:1", 3},
		{"registry.example.com/team/app/sub:1", 3},
		{"registry.example.com/teamster/x:1", 1},
		{"quay.io/x/y:1", -1},
	}
	for _, tt := range tests {
		k, err := credential.ImageKey(tt.image)
		if err != nil {
			t.Fatal(err)
		}
		if got := credential.Select(scopes, k); got != tt.want {
			t.Errorf("Select(%s) = %d, want %d", tt.image, got, tt.want)
		}
	}
}

// TestParseRegistryRefusesPaths: a registry is host[:port] with an optional
// repository prefix; nothing that reads as a path or a foreign scheme.
func TestParseRegistryRefusesPaths(t *testing.T) {
	for _, in := range []string{
		"..", "../escaped", ".", "./x", "a/../b", "registry.example.com/team/../x", "registry.example.com//x",
		"..:5000", "reg..example.com", `registry.example.com\x`, "registry.example.com:0", "registry.example.com:65536",
		"registry.example.com:", "registry.example.com:http", "file:///etc", "ssh://registry.example.com",
		"user@registry.example.com", "-registry.example.com", "registry-.example.com", "[::1", "[zz::1]:5000",
		"registry example.com", "registry.example.com/Team", "%2e%2e",
	} {
		if k, err := credential.ParseRegistry(in); err == nil {
			t.Errorf("ParseRegistry(%q) = %+v, want an error", in, k)
		}
	}
	for _, in := range []string{"localhost", "localhost:5000", "10.0.0.1:443", "[::1]:5000", "[2001:db8::1]", "a.b-c.example.com/x.y/z__w/a-b"} {
		if _, err := credential.ParseRegistry(in); err != nil {
			t.Errorf("ParseRegistry(%q) = %v, want accepted", in, err)
		}
	}
}
