#include "settings.h"

#include <stdio.h>

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const metadata_modes[] = {"auto", "on", "off", NULL};
static const char *const crash_steps[] = {"begin", "pull", "create", "start", "health", "switch",
					  "drain", "stop", "retire", "done", NULL};

const struct config_key agent_settings[] = {
	/* Coordinator */
	{.name = "coordinator.url", .type = CONFIG_URL, .default_value = NULL,
	 .help = "Coordinator base URL (https verifies its certificate)",
	 .required = true},
	{.name = "coordinator.ca_file", .type = CONFIG_PATH, .default_value = NULL,
	 .help = "CA bundle for the coordinator (default: system bundle)"},
	{.name = "coordinator.bootstrap_token", .type = CONFIG_SECRET, .default_value = NULL,
	 .help = "Fleet enrolment secret exchanged for a per-agent token at registration "
		 "(required unless coordinator.aws_identity is true)"},
	{.name = "coordinator.aws_identity", .type = CONFIG_BOOL, .default_value = "false",
	 .help = "Register with a presigned sts:GetCallerIdentity made with the instance role's "
		 "credentials instead of the bootstrap token (agent/awsmode.h)"},
	{.name = "coordinator.retry_base", .type = CONFIG_DURATION, .default_value = "1s",
	 .help = "First retry delay for a failed coordinator request (full-jitter backoff)",
	 .min = 10, .max = 60000},
	{.name = "coordinator.retry_cap", .type = CONFIG_DURATION, .default_value = "30s",
	 .help = "Longest retry delay for coordinator requests (the agent never gives up)",
	 .min = 100, .max = 600000},

	/* Identity */
	{.name = "agent.instance_id", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "Instance id (default: from the instance metadata service, else the hostname)", .max = 128},
	{.name = "agent.fleet", .type = CONFIG_STRING, .default_value = "default",
	 .help = "Fleet this instance belongs to", .max = 64},
	{.name = "agent.state_dir", .type = CONFIG_PATH, .default_value = "/var/lib/slipway-agent",
	 .help = "Journal, identity, proxy routes and log checkpoints live here"},
	{.name = "agent.journal_max_size", .type = CONFIG_SIZE, .default_value = "1M",
	 .help = "The deploy journal is compacted into a snapshot when it grows past this",
	 .min = 4096, .max = (int64_t)1 << 30},
	{.name = "agent.inventory_interval", .type = CONFIG_DURATION, .default_value = "60s",
	 .help = "The container inventory is sent at least this often (and on every change)",
	 .min = 1000, .max = 3600000},

	/* Docker */
	{.name = "docker.socket", .type = CONFIG_PATH, .default_value = "/var/run/docker.sock",
	 .help = "Docker Engine API socket"},
	{.name = "docker.network", .type = CONFIG_STRING, .default_value = "slipway",
	 .help = "Docker network the app containers join (created if missing)", .max = 64},

	/* Deploys */
	{.name = "deploy.min_free_disk", .type = CONFIG_SIZE, .default_value = "1G",
	 .help = "Refuse to pull when Docker's disk has less free"},
	{.name = "deploy.keep_releases", .type = CONFIG_INT, .default_value = "3",
	 .help = "Stopped releases kept per app for instant rollback",
	 .min = 0, .max = 20},
	{.name = "deploy.pull_timeout", .type = CONFIG_DURATION, .default_value = "15m",
	 .help = "Give up on a pull after this long"},
	{.name = "deploy.drain_timeout", .type = CONFIG_DURATION, .default_value = "30s",
	 .help = "How long in-flight requests on the old containers may take to finish"},
	{.name = "deploy.log_max_size", .type = CONFIG_SIZE, .default_value = "10M",
	 .help = "json-file log size per container file"},
	{.name = "deploy.log_max_files", .type = CONFIG_INT, .default_value = "3",
	 .help = "json-file log files kept per container",
	 .min = 1, .max = 100},
	{.name = "deploy.labels", .type = CONFIG_STRING, .default_value = "",
	 .help = "Extra labels key=value[,key=value] put on every container and network the agent "
		 "creates; the agent also manages only containers that carry them", .max = 1024},
	{.name = "deploy.name_prefix", .type = CONFIG_STRING, .default_value = "slipway",
	 .help = "Container names are <prefix>-<app>-<service>-g<generation>-<n>", .max = 32},
	{.name = "deploy.output_tail_lines", .type = CONFIG_INT, .default_value = "20",
	 .help = "Lines of a failing container's output sent with a failed job",
	 .min = 1, .max = 1000},

	/* Proxy */
	{.name = "proxy.bind", .type = CONFIG_STRING, .default_value = "0.0.0.0",
	 .help = "Address the public listeners bind to", .max = 64},
	{.name = "proxy.control_socket", .type = CONFIG_PATH, .default_value = NULL,
	 .help = "Proxy control socket (default: <state_dir>/proxy.sock)"},
	{.name = "proxy.spawn", .type = CONFIG_BOOL, .default_value = "true",
	 .help = "Start the proxy process when none answers (false when a service manager runs it)"},
	{.name = "proxy.health_path", .type = CONFIG_STRING, .default_value = "/_slipway/health",
	 .help = "Path the load balancer checks on every listener", .max = 256},
	{.name = "proxy.idle_timeout", .type = CONFIG_DURATION, .default_value = "75s",
	 .help = "Client keep-alive idle timeout (longer than the load balancer's, ALB: 60 s)"},
	{.name = "proxy.header_timeout", .type = CONFIG_DURATION, .default_value = "10s",
	 .help = "Time a client has to send its request headers"},
	{.name = "proxy.max_header_size", .type = CONFIG_SIZE, .default_value = "16k",
	 .help = "Cap on a request's header block",
	 .min = 1024, .max = 1 << 20},
	{.name = "proxy.connect_timeout", .type = CONFIG_DURATION, .default_value = "5s",
	 .help = "Time to connect to a container"},
	{.name = "proxy.upstream_timeout", .type = CONFIG_DURATION, .default_value = "60s",
	 .help = "Time a container has to start answering a request (then 504)"},
	{.name = "proxy.upstream_idle_timeout", .type = CONFIG_DURATION, .default_value = "30s",
	 .help = "Pooled keep-alive connections to containers are closed after this long idle"},
	{.name = "proxy.stop_timeout", .type = CONFIG_DURATION, .default_value = "30s",
	 .help = "On SIGTERM or hand-over: how long requests in flight may take before they are cut"},

	/* Logs (agent/logship.h) */
	{.name = "logs.enabled", .type = CONFIG_BOOL, .default_value = "true",
	 .help = "Ship the output of managed containers (to CloudWatch Logs when "
		 "cloudwatch.region is set, else to the coordinator)"},
	{.name = "logs.group_prefix", .type = CONFIG_STRING, .default_value = "/slipway/",
	 .help = "Log group of an app: <prefix><app>; streams are <service>/<instance>/<container>",
	 .max = 256},
	{.name = "logs.flush_interval", .type = CONFIG_DURATION, .default_value = "1s",
	 .help = "A batch goes out when full or this long after its first line",
	 .min = 10, .max = 60000},
	{.name = "logs.spool_max", .type = CONFIG_SIZE, .default_value = "256M",
	 .help = "Disk kept for logs while the destination cannot be reached; past it the oldest "
		 "are dropped (counted)", .min = (int64_t)1 << 20, .max = (int64_t)1 << 40},
	{.name = "logs.memory_max", .type = CONFIG_SIZE, .default_value = "32M",
	 .help = "Log batches held in memory, all containers; past it batches go to the spool "
		 "or reading pauses", .min = (int64_t)2 << 20, .max = (int64_t)4 << 30},
	{.name = "logs.request_timeout", .type = CONFIG_DURATION, .default_value = "30s",
	 .help = "Time one request to the log destination may take", .min = 1000, .max = 600000},
	{.name = "logs.retry_base", .type = CONFIG_DURATION, .default_value = "200ms",
	 .help = "First retry delay of a failed log request (full-jitter backoff)",
	 .min = 1, .max = 60000},
	{.name = "logs.retry_cap", .type = CONFIG_DURATION, .default_value = "30s",
	 .help = "Longest retry delay of log requests and of probes while the destination is down",
	 .min = 10, .max = 600000},

	/* CloudWatch (common/cwlogs.h) */
	{.name = "cloudwatch.region", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "AWS region of CloudWatch Logs; unset: logs and metrics go to the coordinator",
	 .max = 64},
	{.name = "cloudwatch.endpoint", .type = CONFIG_URL, .default_value = NULL,
	 .help = "CloudWatch Logs endpoint (default: https://logs.<region>.amazonaws.com)"},
	{.name = "cloudwatch.ca_file", .type = CONFIG_PATH, .default_value = NULL,
	 .help = "CA bundle for the CloudWatch endpoint (default: system bundle)"},
	{.name = "cloudwatch.retention_days", .type = CONFIG_INT, .default_value = "0",
	 .help = "Retention set on the log groups the agent creates (0: never expire; else one of "
		 "CloudWatch's values: 1, 3, 5, 7, 14, 30, 60, 90, ...); older events are not sent",
	 .min = 0, .max = 3653},

	/* Images on Amazon ECR (agent/registryauth.h): images on
	 * <account>.dkr.ecr.<region>.amazonaws.com are always pulled with a token */
	{.name = "ecr.registry", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "One more registry host[:port] whose images are pulled with ECR tokens (a "
		 "registry behind a proxy or VPC endpoint name)", .max = 255},
	{.name = "ecr.region", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "AWS region the tokens for ecr.registry come from", .max = 64},
	{.name = "ecr.account", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "AWS account (12 digits) of ecr.registry (default: the instance role's)",
	 .max = 12},
	{.name = "ecr.endpoint", .type = CONFIG_URL, .default_value = NULL,
	 .help = "ECR API endpoint (default: https://api.ecr.<region>.amazonaws.com)"},
	{.name = "ecr.ca_file", .type = CONFIG_PATH, .default_value = NULL,
	 .help = "CA bundle for the ECR endpoint (default: system bundle)"},

	/* Health metrics (agent/metrics.h) */
	{.name = "metrics.enabled", .type = CONFIG_BOOL, .default_value = "true",
	 .help = "Collect health data and ship it (EMF through the logs with CloudWatch, else to "
		 "the coordinator)"},
	{.name = "metrics.listen", .type = CONFIG_STRING, .default_value = "127.0.0.1:9464",
	 .help = "Prometheus text endpoint (GET /metrics); \"\" turns it off", .max = 256},
	{.name = "metrics.interval", .type = CONFIG_DURATION, .default_value = "60s",
	 .help = "How often health data is collected and shipped", .min = 1000, .max = 3600000},
	{.name = "metrics.namespace", .type = CONFIG_STRING, .default_value = "Slipway",
	 .help = "CloudWatch metric namespace", .max = 255},
	{.name = "metrics.dimensions", .type = CONFIG_STRING,
	 .default_value = "App,Service,InstanceId",
	 .help = "Dimensions of the metrics, a subset of App, Service and InstanceId", .max = 128},
	{.name = "metrics.docker_root", .type = CONFIG_PATH, .default_value = "/var/lib/docker",
	 .help = "Docker's root directory, whose file system's use is reported"},

	/* AWS (agent/awsmode.h): identity proofs, Auto Scaling */
	{.name = "aws.region", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "Region of STS and Auto Scaling (default: cloudwatch.region, else the instance's "
		 "region from the instance metadata)", .max = 64},
	{.name = "aws.sts_endpoint", .type = CONFIG_URL, .default_value = NULL,
	 .help = "STS endpoint the identity proof is presigned for; must be the coordinator's "
		 "agents.sts_endpoint (default: https://sts.<region>.amazonaws.com)"},
	{.name = "aws.server_id", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "Coordinator name signed into the identity proof; must be the coordinator's "
		 "agents.aws_server_id (default: host[:port] of coordinator.url)", .max = 255},
	{.name = "aws.autoscaling_endpoint", .type = CONFIG_URL, .default_value = NULL,
	 .help = "Auto Scaling endpoint (default: https://autoscaling.<region>.amazonaws.com)"},
	{.name = "aws.ca_file", .type = CONFIG_PATH, .default_value = NULL,
	 .help = "CA bundle for the STS and Auto Scaling endpoints (default: system bundle)"},

	/* Instance metadata block (agent/imdsblock.h) */
	{.name = "metadata.block", .type = CONFIG_ENUM, .default_value = "auto",
	 .help = "Keep app containers off the instance metadata service with an iptables rule "
		 "(services with metadata_access: true excepted); auto: on EC2 (the instance id "
		 "came from the instance metadata, or coordinator.aws_identity or lifecycle.enabled "
		 "is on)", .choices = metadata_modes},
	{.name = "metadata.address", .type = CONFIG_STRING, .default_value = "169.254.169.254",
	 .help = "Address of the instance metadata service the rule blocks", .max = 15},
	{.name = "metadata.iptables", .type = CONFIG_STRING, .default_value = "iptables",
	 .help = "iptables command (from PATH unless a path) that edits the DOCKER-USER chain",
	 .max = 256},

	/* Scale-in (agent/lifecycle.h) */
	{.name = "lifecycle.enabled", .type = CONFIG_BOOL, .default_value = "false",
	 .help = "Watch for the Auto Scaling termination lifecycle hook (and spot interruption "
		 "notices) and drain this instance before it goes"},
	{.name = "lifecycle.group_name", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "Auto Scaling group (default: the instance's aws:autoscaling:groupName tag, with "
		 "instance metadata tags on)", .max = 255},
	{.name = "lifecycle.hook_name", .type = CONFIG_STRING, .default_value = "slipway-drain",
	 .help = "The group's termination lifecycle hook", .max = 255},
	{.name = "lifecycle.watch_spot", .type = CONFIG_BOOL, .default_value = "true",
	 .help = "A spot interruption notice starts the same drain"},
	{.name = "lifecycle.poll_interval", .type = CONFIG_DURATION, .default_value = "5s",
	 .help = "How often the instance metadata is read for the lifecycle state and spot notices",
	 .min = 100, .max = 60000},
	{.name = "lifecycle.deregistration_delay", .type = CONFIG_DURATION, .default_value = "300s",
	 .help = "Wait after the health endpoint turned 503: the load balancer target group's "
		 "deregistration delay", .min = 0, .max = 3600000},
	{.name = "lifecycle.drain_timeout", .type = CONFIG_DURATION, .default_value = "30s",
	 .help = "Longest wait for the proxy's requests in flight to finish", .min = 0,
	 .max = 3600000},
	{.name = "lifecycle.stop_timeout", .type = CONFIG_DURATION, .default_value = "120s",
	 .help = "Longest wait for the containers to stop (each has its own stop grace)",
	 .min = 1000, .max = 3600000},
	{.name = "lifecycle.log_flush_timeout", .type = CONFIG_DURATION, .default_value = "60s",
	 .help = "Longest wait for the last log lines to be accepted by the destination",
	 .min = 0, .max = 3600000},
	{.name = "lifecycle.heartbeat_interval", .type = CONFIG_DURATION, .default_value = "60s",
	 .help = "RecordLifecycleActionHeartbeat while draining (below the hook's heartbeat "
		 "timeout)", .min = 1000, .max = 3600000},

	/* Test hooks */
	{.name = "debug.crash_at", .type = CONFIG_ENUM, .default_value = NULL,
	 .help = "TEST HOOK, never in production: the agent kills itself (SIGKILL) right after "
		 "journalling this step of a swap", .choices = crash_steps},

	/* Logging */
	{.name = "log.level", .type = CONFIG_ENUM, .default_value = "info",
	 .help = "Least severe level logged", .choices = log_levels},
	{.name = "log.syslog", .type = CONFIG_BOOL, .default_value = "false",
	 .help = "Log to syslog instead of stderr"},
};

const size_t agent_settings_count = sizeof agent_settings / sizeof agent_settings[0];

void agent_settings_path(const struct config *cfg, const char *key, const char *default_name,
			 char *out, size_t cap)
{
	if (config_has(cfg, key))
		snprintf(out, cap, "%s", config_str(cfg, key));
	else
		snprintf(out, cap, "%s/%s", config_str(cfg, "agent.state_dir"), default_name);
}
