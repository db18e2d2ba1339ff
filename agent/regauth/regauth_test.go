package regauth_test

import (
	"testing"

	"github.com/fleet-agent/fleet/agent/regauth"
)

func TestParseRegistry(t *testing.T) {
	tests := []struct {
		in   string
		want regauth.Key
	}{
		{"", regauth.Key{Host: "docker.io"}},
		{"docker.io", regauth.Key{Host: "docker.io"}},
		{"index.docker.io", regauth.Key{Host: "docker.io"}},
		{"https://index.docker.io/v1/", regauth.Key{Host: "docker.io"}},
		{"registry-1.docker.io/myorg/", regauth.Key{Host: "docker.io", Prefix: "myorg"}},
		{"123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/", regauth.Key{Host: "123456789012.dkr.ecr.eu-west-1.amazonaws.com", Prefix: "team"}},
		{"Registry.Example.com:5000/a/b", regauth.Key{Host: "registry.example.com:5000", Prefix: "a/b"}},
	}
	for _, tt := range tests {
		got, err := regauth.ParseRegistry(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseRegistry(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestSelectLongestPrefix(t *testing.T) {
	scopes := []regauth.Key{
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
		k, err := regauth.ImageKey(tt.image)
		if err != nil {
			t.Fatal(err)
		}
		if got := regauth.Select(scopes, k); got != tt.want {
			t.Errorf("Select(%s) = %d, want %d", tt.image, got, tt.want)
		}
	}
}
