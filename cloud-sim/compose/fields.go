package compose

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// Support says what the translator does with a Compose field.
type Support int

const (
	// Supported fields are translated to the protocol field the table names.
	Supported Support = iota + 1
	// Refused fields fail the translation with their path: the agent
	// cannot honour them, and dropping them would run something else than
	// the file describes.
	Refused
	// Ignored fields are left out with a warning: they change nothing a
	// gateway runs (documentation, a developer's workflow).
	Ignored
)

func (s Support) String() string {
	switch s {
	case Supported:
		return "supported"
	case Refused:
		return "refused"
	case Ignored:
		return "ignored (warning)"
	}
	return "unknown"
}

// Field is one row of the conformance table: a Compose path ("*" for a
// name the file chooses, "[]" for a list's items), what the translator does
// with it, the protocol field it maps to, and a note (for a refused or
// ignored field, the reason and the fix).
type Field struct {
	Path    string
	Support Support
	Proto   string
	Note    string
}

const (
	svc   = "services.*."
	noFix = "not supported by the agent"
)

// fields is the translator's table; docs/compose.md is generated from it
// (Table) and a test keeps the two equal. It is never written to.
var fields = []Field{
	{"version", Ignored, "", "obsolete in the Compose specification"},
	{"name", Supported, "DeploymentSpec.name", "unless a name is given; 1-63 of a-z 0-9 -"},
	{"include", Refused, "", "not supported: it reads other files; merge them into one file"},
	{"services", Supported, "DeploymentSpec.services", "service names are 1-63 of a-z 0-9 -"},
	{"networks", Supported, "DeploymentSpec.networks", "the agent names them fleet-{deployment}-{network}"},
	{"networks.*.name", Refused, "", "not supported: the agent names an application's networks fleet-{deployment}-{network}"},
	{"networks.*.driver", Supported, "", "bridge only"},
	{"networks.*.driver_opts", Refused, "", noFix},
	{"networks.*.ipam", Refused, "", "not supported: the engine assigns the subnet"},
	{"networks.*.external", Refused, "", "not supported: an application's networks are its own; a service may join a network the gateway allows with network_mode"},
	{"networks.*.internal", Supported, "AppNetwork.internal", ""},
	{"networks.*.enable_ipv4", Refused, "", noFix},
	{"networks.*.enable_ipv6", Refused, "", noFix},
	{"networks.*.attachable", Ignored, "", "only swarm networks are attachable"},
	{"networks.*.labels", Ignored, "", "the agent labels its networks itself"},
	{"volumes", Supported, "DeploymentSpec.volumes", "the agent names them fleet-{deployment}-{volume}, kept across revisions"},
	{"volumes.*.name", Supported, "Mount.source", "with external only: the name of a volume on the gateway"},
	{"volumes.*.driver", Supported, "", "local only"},
	{"volumes.*.driver_opts", Refused, "", noFix},
	{"volumes.*.external", Supported, "Mount.source", "a volume the application does not own; the gateway's policy (--allow-volume) decides"},
	{"volumes.*.labels", Ignored, "", "the agent labels its volumes itself"},
	{"secrets", Refused, "", "not supported: pass secrets as environment from composeEnv, or a registry credential with set-credentials"},
	{"configs", Refused, "", "not supported: build the file into the image, or mount it with a bind mount"},
	{"models", Refused, "", noFix},
	{"jobs", Refused, "", noFix},

	{svc + "annotations", Refused, "", noFix},
	{svc + "attach", Ignored, "", "log attachment is the logs verb's"},
	{svc + "blkio_config", Refused, "", noFix},
	{svc + "build", Refused, "", "not supported, push an image"},
	{svc + "cap_add", Supported, "Service.cap_add", "the gateway's policy (--allow-cap-add) decides"},
	{svc + "cap_drop", Supported, "Service.cap_drop", ""},
	{svc + "cgroup", Refused, "", noFix},
	{svc + "cgroup_parent", Refused, "", noFix},
	{svc + "command", Supported, "Service.command", "a string is split as a shell would"},
	{svc + "configs", Refused, "", "not supported: build the file into the image"},
	{svc + "container_name", Refused, "", "not supported: the agent names containers fleet-{deployment}-{service}-r{revision}"},
	{svc + "cpu_count", Refused, "", "not supported, use cpus"},
	{svc + "cpu_percent", Refused, "", "not supported, use cpus"},
	{svc + "cpu_period", Refused, "", "not supported, use cpus"},
	{svc + "cpu_quota", Refused, "", "not supported, use cpus"},
	{svc + "cpu_rt_period", Refused, "", noFix},
	{svc + "cpu_rt_runtime", Refused, "", noFix},
	{svc + "cpu_shares", Refused, "", "not supported, use cpus"},
	{svc + "cpus", Supported, "Service.resources.cpus", ""},
	{svc + "cpuset", Refused, "", noFix},
	{svc + "credential_spec", Refused, "", noFix},
	{svc + "depends_on", Supported, "Service.depends_on", ""},
	{svc + "depends_on.*.condition", Supported, "Dependency.condition", "service_started, service_healthy (the dependency needs a healthcheck), service_completed_successfully (its restart must be no or on-failure)"},
	{svc + "depends_on.*.required", Supported, "", "true only"},
	{svc + "depends_on.*.restart", Ignored, "", "the agent does not restart a service when its dependency restarts"},
	{svc + "deploy", Supported, "", "the fields below"},
	{svc + "deploy.mode", Refused, "", "not supported: one container per service"},
	{svc + "deploy.endpoint_mode", Refused, "", noFix},
	{svc + "deploy.replicas", Supported, "", "1 only"},
	{svc + "deploy.labels", Ignored, "", "swarm service labels; use labels"},
	{svc + "deploy.rollback_config", Refused, "", "not supported: the agent rolls a failed revision back itself"},
	{svc + "deploy.update_config", Refused, "", "not supported: use a rollout"},
	{svc + "deploy.resources", Supported, "Service.resources", ""},
	{svc + "deploy.resources.limits", Supported, "Service.resources", ""},
	{svc + "deploy.resources.limits.cpus", Supported, "Resources.cpus", ""},
	{svc + "deploy.resources.limits.memory", Supported, "Resources.memory_bytes", "6 MiB or more"},
	{svc + "deploy.resources.limits.pids", Refused, "", noFix},
	{svc + "deploy.resources.limits.devices", Refused, "", noFix},
	{svc + "deploy.resources.reservations", Refused, "", "not supported: a gateway reserves nothing"},
	{svc + "deploy.restart_policy", Supported, "Service.restart_policy", ""},
	{svc + "deploy.restart_policy.condition", Supported, "RestartPolicy.mode", "none, on-failure, any"},
	{svc + "deploy.restart_policy.max_attempts", Supported, "RestartPolicy.max_retries", "with on-failure"},
	{svc + "deploy.restart_policy.delay", Refused, "", noFix},
	{svc + "deploy.restart_policy.window", Refused, "", noFix},
	{svc + "deploy.placement", Refused, "", "not supported: target gateways with the deploy's target"},
	{svc + "develop", Ignored, "", "a developer's watch settings"},
	{svc + "device_cgroup_rules", Refused, "", noFix},
	{svc + "devices", Supported, "Service.devices", "the gateway's policy (--allow-host-path) decides"},
	{svc + "dns", Refused, "", noFix},
	{svc + "dns_opt", Refused, "", noFix},
	{svc + "dns_search", Refused, "", noFix},
	{svc + "domainname", Refused, "", noFix},
	{svc + "entrypoint", Supported, "Service.entrypoint", "a string is split as a shell would"},
	{svc + "env_file", Supported, "Service.env", "only with a directory to read it from (the CLI's, the file's own); the API and the console refuse it"},
	{svc + "environment", Supported, "Service.env", "a variable without a value takes it from the given environment, or is left out with a warning"},
	{svc + "expose", Ignored, "", "services on a network reach each other's ports without it"},
	{svc + "extends", Supported, "", "a service of the same file only; extends.file is refused"},
	{svc + "external_links", Refused, "", "not supported, use networks"},
	{svc + "extra_hosts", Refused, "", noFix},
	{svc + "gpus", Refused, "", noFix},
	{svc + "group_add", Refused, "", noFix},
	{svc + "healthcheck", Supported, "Service.health_check", ""},
	{svc + "healthcheck.test", Supported, "HealthCheck.test", "a string is CMD-SHELL"},
	{svc + "healthcheck.interval", Supported, "HealthCheck.interval", ""},
	{svc + "healthcheck.timeout", Supported, "HealthCheck.timeout", ""},
	{svc + "healthcheck.retries", Supported, "HealthCheck.retries", ""},
	{svc + "healthcheck.start_period", Supported, "HealthCheck.start_period", ""},
	{svc + "healthcheck.start_interval", Ignored, "", "the agent checks at interval throughout"},
	{svc + "healthcheck.disable", Supported, "HealthCheck.test", `["NONE"]`},
	{svc + "hostname", Refused, "", noFix},
	{svc + "image", Supported, "Service.image", "required"},
	{svc + "init", Refused, "", noFix},
	{svc + "ipc", Refused, "", noFix},
	{svc + "isolation", Refused, "", noFix},
	{svc + "label_file", Refused, "", "not supported: it reads files; use labels"},
	{svc + "labels", Supported, "Service.labels", ""},
	{svc + "links", Refused, "", "not supported: services on a network reach each other by name; use networks and depends_on"},
	{svc + "logging", Supported, "Service.logging", "the gateway's policy (--allow-log-driver) decides the driver"},
	{svc + "logging.driver", Supported, "Logging.driver", ""},
	{svc + "logging.options", Supported, "Logging.options", ""},
	{svc + "mac_address", Refused, "", noFix},
	{svc + "mem_limit", Supported, "Service.resources.memory_bytes", "6 MiB or more"},
	{svc + "mem_reservation", Refused, "", noFix},
	{svc + "mem_swappiness", Refused, "", noFix},
	{svc + "memswap_limit", Refused, "", noFix},
	{svc + "models", Refused, "", noFix},
	{svc + "network_mode", Supported, "Service.network_mode", "service:NAME is refused; the gateway's policy decides the rest"},
	{svc + "networks", Supported, "Service.networks", "a service with neither networks nor network_mode joins the network default, as in Compose"},
	{svc + "networks.*.aliases", Refused, "", "not supported: a service is reachable by its name"},
	{svc + "networks.*.interface_name", Refused, "", noFix},
	{svc + "networks.*.ipv4_address", Refused, "", noFix},
	{svc + "networks.*.ipv6_address", Refused, "", noFix},
	{svc + "networks.*.link_local_ips", Refused, "", noFix},
	{svc + "networks.*.mac_address", Refused, "", noFix},
	{svc + "networks.*.driver_opts", Refused, "", noFix},
	{svc + "networks.*.priority", Ignored, "", "the engine orders the networks"},
	{svc + "networks.*.gw_priority", Ignored, "", "the engine picks the gateway"},
	{svc + "oom_kill_disable", Refused, "", noFix},
	{svc + "oom_score_adj", Refused, "", noFix},
	{svc + "pid", Refused, "", noFix},
	{svc + "pids_limit", Refused, "", noFix},
	{svc + "platform", Ignored, "", "the gateway pulls the image for its own platform"},
	{svc + "ports", Supported, "Service.ports", "published ports are on the gateway's --publish-host-ip unless host_ip names an allowed one"},
	{svc + "ports[].target", Supported, "Port.container_port", ""},
	{svc + "ports[].published", Supported, "Port.host_port", "a range is refused"},
	{svc + "ports[].host_ip", Supported, "Port.host_ip", ""},
	{svc + "ports[].protocol", Supported, "Port.protocol", "tcp, udp, sctp"},
	{svc + "ports[].mode", Supported, "", "host and ingress both publish on the gateway"},
	{svc + "ports[].name", Ignored, "", "documentation only"},
	{svc + "ports[].app_protocol", Ignored, "", "documentation only"},
	{svc + "post_start", Refused, "", noFix},
	{svc + "pre_start", Refused, "", noFix},
	{svc + "pre_stop", Refused, "", noFix},
	{svc + "privileged", Supported, "Service.privileged", "the gateway's policy (--allow-privileged) decides"},
	{svc + "profiles", Refused, "", "not supported: leave out the services not to deploy"},
	{svc + "provider", Refused, "", noFix},
	{svc + "pull_policy", Supported, "Service.pull_policy", "always, missing (if_not_present), never; build and daily/weekly/every_ are refused"},
	{svc + "pull_refresh_after", Refused, "", noFix},
	{svc + "read_only", Refused, "", "not supported by the protocol"},
	{svc + "restart", Supported, "Service.restart_policy", "no, always, unless-stopped, on-failure[:N]"},
	{svc + "runtime", Refused, "", noFix},
	{svc + "scale", Supported, "", "1 only"},
	{svc + "secrets", Refused, "", "not supported: pass secrets as environment from composeEnv"},
	{svc + "security_opt", Refused, "", noFix},
	{svc + "shm_size", Refused, "", noFix},
	{svc + "stdin_open", Ignored, "", "a gateway's containers have no stdin"},
	{svc + "stop_grace_period", Supported, "Service.stop_timeout", ""},
	{svc + "stop_signal", Refused, "", noFix},
	{svc + "storage_opt", Refused, "", noFix},
	{svc + "sysctls", Refused, "", noFix},
	{svc + "tmpfs", Supported, "Service.mounts (TMPFS)", "options are ignored with a warning: the gateway sets the size"},
	{svc + "tty", Ignored, "", "a gateway's containers have no terminal"},
	{svc + "ulimits", Refused, "", noFix},
	{svc + "umask", Refused, "", noFix},
	{svc + "use_api_socket", Refused, "", "not supported: no container gets the engine's socket"},
	{svc + "user", Supported, "Service.user", ""},
	{svc + "userns_mode", Refused, "", noFix},
	{svc + "uts", Refused, "", noFix},
	{svc + "volumes", Supported, "Service.mounts", "named volumes (VOLUME), absolute host paths (BIND, the gateway's policy decides), tmpfs (TMPFS)"},
	{svc + "volumes[].type", Supported, "Mount.type", "volume, bind, tmpfs"},
	{svc + "volumes[].source", Supported, "Mount.source", "a bind needs an absolute path on the gateway"},
	{svc + "volumes[].target", Supported, "Mount.target", ""},
	{svc + "volumes[].read_only", Supported, "Mount.read_only", ""},
	{svc + "volumes[].consistency", Ignored, "", "macOS only"},
	{svc + "volumes[].bind", Supported, "", "the fields below"},
	{svc + "volumes[].bind.create_host_path", Ignored, "", "the agent never creates a host path: a missing one fails the container's creation"},
	{svc + "volumes[].bind.propagation", Refused, "", noFix},
	{svc + "volumes[].bind.recursive", Refused, "", noFix},
	{svc + "volumes[].bind.selinux", Refused, "", noFix},
	{svc + "volumes[].volume", Supported, "", "the fields below"},
	{svc + "volumes[].volume.nocopy", Refused, "", noFix},
	{svc + "volumes[].volume.subpath", Refused, "", noFix},
	{svc + "volumes[].volume.labels", Ignored, "", "the agent labels its volumes itself"},
	{svc + "volumes[].tmpfs", Supported, "", "the fields below"},
	{svc + "volumes[].tmpfs.size", Ignored, "", "the gateway sets every tmpfs's size (--tmpfs-size)"},
	{svc + "volumes[].tmpfs.mode", Refused, "", noFix},
	{svc + "volumes[].image", Refused, "", noFix},
	{svc + "volumes_from", Refused, "", "not supported: share a named volume"},
	{svc + "working_dir", Supported, "Service.working_dir", ""},
}

// Fields returns the conformance table, sorted by path.
func Fields() []Field {
	out := slices.Clone(fields)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// lookup finds the table's row for a pattern path.
func lookup(pattern string) (Field, bool) {
	for _, f := range fields {
		if f.Path == pattern {
			return f, true
		}
	}
	return Field{}, false
}

// hasChildren tells whether the table has rows under pattern, so the walk
// goes into its value.
func hasChildren(pattern string) bool {
	for _, f := range fields {
		if strings.HasPrefix(f.Path, pattern+".") || strings.HasPrefix(f.Path, pattern+"[]") {
			return true
		}
	}
	return false
}

// checker collects refusals and warnings with their paths.
type checker struct {
	refusals []Refusal
	warnings []string
}

func (c *checker) refuse(path, format string, args ...any) {
	c.refusals = append(c.refusals, Refusal{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) warn(path, format string, args ...any) {
	c.warnings = append(c.warnings, path+": "+fmt.Sprintf(format, args...))
}

// walk checks every key of the loaded model against the table: a key the
// table refuses, or does not know, is refused with its path; an ignored
// one gives a warning. Extensions (x-…) are the file's own and skipped.
func (c *checker) walk(node any, pattern, path string) {
	switch n := node.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(n)) {
			if strings.HasPrefix(k, "x-") {
				continue
			}
			c.key(n[k], pattern, path, k)
		}
	case []any:
		for i, item := range n {
			c.walk(item, pattern+"[]", fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

func (c *checker) key(v any, pattern, path, k string) {
	p, cp := join(pattern, k), join(path, k)
	f, ok := lookup(p)
	if !ok {
		p = join(pattern, "*")
		f, ok = lookup(p)
		if !ok && hasChildren(p) {
			f, ok = Field{Path: p, Support: Supported}, true
		}
	}
	switch {
	case !ok:
		c.refuse(cp, "not supported: the Compose translator does not know this field (docs/compose.md lists those it does)")
	case f.Support == Refused:
		c.refusals = append(c.refusals, Refusal{Path: cp, Msg: f.Note})
	case f.Support == Ignored:
		c.warn(cp, "ignored: %s", f.Note)
	case hasChildren(p):
		c.walk(v, p, cp)
	}
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}
