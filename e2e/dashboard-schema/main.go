// Command dashboard-schema checks Grafana dashboard JSON files against Grafana's dashboard schema
// as the Apache-licensed grafana-foundation-sdk generates it from Grafana's own schema: strict
// decoding (no unknown field, no field of the wrong type, every required field present), each
// panel and query decoded by its plugin's types, then the schema's constraints. Grafana itself
// (AGPL) cannot run here. Exits 1 naming what is wrong when a file does not conform.
// Usage: dashboard-schema FILE...
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// The SDK returns its error list typed even when it is empty: an empty list is no error.
func failure(err error) error {
	var list cog.BuildErrors
	if errors.As(err, &list) && len(list) == 0 {
		return nil
	}
	return err
}

func check(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var board dashboard.Dashboard
	if err := failure(board.UnmarshalJSONStrict(raw)); err != nil {
		return fmt.Errorf("does not decode strictly: %w", err)
	}
	if err := failure(board.Validate()); err != nil {
		return fmt.Errorf("breaks a constraint: %w", err)
	}
	fmt.Printf("%s: conforms (schemaVersion %d, %d panels)\n", path, board.SchemaVersion, len(board.Panels))
	return nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard-schema FILE...")
		os.Exit(2)
	}
	// Panels and queries decode into their plugins' types only once these are registered.
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Printf("%s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
