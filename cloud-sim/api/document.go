package api

import (
	"bytes"
	"encoding/json"
	"fmt"

	"gopkg.in/yaml.v3"
)

// DocumentJSON converts a YAML document (JSON is YAML too) to JSON: how
// the CLI's -f files and the console's YAML fields become request bodies,
// since the API takes JSON only.
func DocumentJSON(doc []byte) ([]byte, error) {
	var v any
	if err := yaml.Unmarshal(doc, &v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
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
