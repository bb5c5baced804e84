// Package dashboards holds sealift's Grafana dashboards, built on the
// metrics of package metrics (the controller) and of agent.WithMetrics
// (the agents). sealift.json is the dashboard (import it in Grafana and
// pick a Prometheus data source); its tests check that every PromQL
// expression in it names only metrics the code registers.
package dashboards

import _ "embed"

// Sealift is sealift.json: blackout, downtime, step durations, outcomes,
// the migration stream, connections, the routing core and the agents.
//
//go:embed sealift.json
var Sealift []byte
