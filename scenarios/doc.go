// Package scenarios holds end-to-end scenarios: real agent processes, real
// brokers (embedded and Mosquitto) and, from the deployment features on, the
// real Docker Engine, with faults injected (kills, broker restarts).
package scenarios
