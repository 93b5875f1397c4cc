#include "settings.h"

#include <stdio.h>

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const registry_kinds[] = {"plain", "ecr", NULL};
static const char *const queue_backends[] = {"embedded", "sqs", NULL};

const struct config_key coord_settings[] = {
	/* Server */
	{.name = "server.listen", .type = CONFIG_STRING, .default_value = "127.0.0.1:8700",
	 .help = "Address the API and webhook server listens on (host:port)", .max = 128},
	{.name = "server.public_url", .type = CONFIG_URL, .default_value = "http://127.0.0.1:8700",
	 .help = "URL GitLab and the agents reach this coordinator at (webhook URLs are built from it)"},
	{.name = "server.tls_cert", .type = CONFIG_PATH, .default_value = NULL,
	 .help = "PEM certificate chain: terminate TLS here (leave unset behind a load balancer)"},
	{.name = "server.tls_key", .type = CONFIG_PATH, .default_value = NULL,
	 .help = "PEM private key for server.tls_cert"},
	{.name = "server.max_connections", .type = CONFIG_INT, .default_value = "20000",
	 .help = "Open connections (agents long-poll: one each)", .min = 16, .max = 1000000},

	/* State */
	{.name = "data.dir", .type = CONFIG_PATH, .default_value = "/var/lib/slipway",
	 .help = "Store, master key, build workspaces and uploads live here"},
	{.name = "store.path", .type = CONFIG_PATH, .default_value = NULL,
	 .help = "SQLite database (default: <data.dir>/coordinator.db)"},
	{.name = "secrets.master_key_path", .type = CONFIG_PATH, .default_value = NULL,
	 .help = "32-byte key sealing secrets at rest, created 0600 at first start "
		 "(default: <data.dir>/master.key)"},
	{.name = "secrets.master_key", .type = CONFIG_SECRET, .default_value = NULL,
	 .help = "The master key as 64 hex digits, instead of the file"},

	/* Agents and the queue */
	{.name = "agents.bootstrap_token", .type = CONFIG_SECRET, .default_value = NULL,
	 .help = "Fleet enrolment secret agents present at registration (this, "
		 "agents.aws_accounts, or both)"},
	{.name = "agents.aws_accounts", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "AWS accounts (12 digits, comma-separated) whose instances may register with a "
		 "presigned sts:GetCallerIdentity instead of the bootstrap token", .max = 1024},
	{.name = "agents.aws_roles", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "IAM role names (comma-separated) an agent's instance role must have (with "
		 "agents.aws_accounts)", .max = 1024},
	{.name = "agents.sts_endpoint", .type = CONFIG_URL, .default_value = NULL,
	 .help = "The STS endpoint agents' presigned requests must point at and are sent to "
		 "(default: https://sts.<agents.sts_region>.amazonaws.com)"},
	{.name = "agents.sts_region", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "Region of the default STS endpoint (the agents' region)", .max = 64},
	{.name = "agents.aws_server_id", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "The name agents sign into their proof (their aws.server_id); default: the "
		 "host[:port] of server.public_url", .max = 255},
	{.name = "agents.heartbeat_interval", .type = CONFIG_DURATION, .default_value = "10s",
	 .help = "How often agents report in", .min = 1000, .max = 300000},
	{.name = "agents.lost_after", .type = CONFIG_DURATION, .default_value = "45s",
	 .help = "An agent silent this long is lost and leaves rollouts", .min = 3000, .max = 3600000},
	{.name = "queue.lease", .type = CONFIG_DURATION, .default_value = "60s",
	 .help = "Visibility timeout of a leased job", .min = 1000, .max = 3600000},
	{.name = "queue.max_attempts", .type = CONFIG_INT, .default_value = "5",
	 .help = "Leases a job may expire before it fails", .min = 1, .max = 100},
	{.name = "queue.poll_wait_max", .type = CONFIG_DURATION, .default_value = "30s",
	 .help = "Longest a job poll is held open", .min = 0, .max = 60000},
	/* The SQS backend (coordinator/sqsqueue.h) */
	{.name = "queue.backend", .type = CONFIG_ENUM, .default_value = "embedded",
	 .help = "embedded (agents long-poll the coordinator) or sqs (one SQS queue per agent)",
	 .choices = queue_backends},
	{.name = "queue.sqs_region", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "AWS region of the agents' SQS queues (queue.backend = sqs)", .max = 64},
	{.name = "queue.sqs_endpoint", .type = CONFIG_URL, .default_value = NULL,
	 .help = "SQS endpoint (default: https://sqs.<queue.sqs_region>.amazonaws.com)"},
	{.name = "queue.sqs_prefix", .type = CONFIG_STRING, .default_value = "slipway-",
	 .help = "Queue names are <prefix><instance id>; the orphan sweep deletes queues under "
		 "this prefix that no live agent owns: give each coordinator its own", .max = 56},
	{.name = "queue.sqs_sweep_interval", .type = CONFIG_DURATION, .default_value = "10m",
	 .help = "How often orphaned queues are looked for (0: never)", .min = 0,
	 .max = 86400000},
	{.name = "queue.sqs_lost_grace", .type = CONFIG_DURATION, .default_value = "1h",
	 .help = "A lost agent's queue is deleted after this long, one that was draining at "
		 "the next sweep (it registers again if it comes back)", .min = 0, .max = (int64_t)30 * 86400000},
	{.name = "queue.sqs_concurrency", .type = CONFIG_INT, .default_value = "64",
	 .help = "Agents sent to at once (SendMessageBatch calls in flight)", .min = 1,
	 .max = 4096},

	/* Builds */
	{.name = "builds.concurrency", .type = CONFIG_INT, .default_value = "2",
	 .help = "Builds running at once", .min = 1, .max = 64},
	{.name = "builds.timeout", .type = CONFIG_DURATION, .default_value = "30m",
	 .help = "A build running longer fails"},
	{.name = "builds.log_max", .type = CONFIG_SIZE, .default_value = "8M",
	 .help = "Build log kept per build (the end is kept past it)"},
	{.name = "builds.upload_max", .type = CONFIG_SIZE, .default_value = "512M",
	 .help = "Largest context `slipway deploy` may upload"},
	{.name = "builds.context_max", .type = CONFIG_SIZE, .default_value = "1G",
	 .help = "Largest build context sent to Docker (file bytes after .dockerignore)",
	 .min = 1 << 20, .max = (int64_t)64 << 30},
	{.name = "builds.context_files_max", .type = CONFIG_INT, .default_value = "100000",
	 .help = "Most entries (files, directories, links) in one build context",
	 .min = 100, .max = 10000000},
	{.name = "registry.host", .type = CONFIG_STRING, .default_value = "127.0.0.1:5000",
	 .help = "Registry images are pushed to (host[:port])", .max = 255},
	{.name = "registry.username", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "Registry user (unset: no authentication)", .max = 255},
	{.name = "registry.password", .type = CONFIG_SECRET, .default_value = NULL,
	 .help = "Registry password"},
	{.name = "registry.kind", .type = CONFIG_ENUM, .default_value = "plain",
	 .help = "plain (registry.host, optional username/password) or ecr (Amazon ECR: the app's "
		 "repository is created, pushes log in with GetAuthorizationToken)",
	 .choices = registry_kinds},
	{.name = "registry.region", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "AWS region of the ECR registry (registry.kind = ecr)", .max = 64},
	{.name = "registry.account", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "AWS account (12 digits) of the ECR registry; registry.host defaults to "
		 "<account>.dkr.ecr.<region>.amazonaws.com", .max = 12},
	{.name = "registry.endpoint", .type = CONFIG_URL, .default_value = NULL,
	 .help = "ECR API endpoint (default: https://api.ecr.<region>.amazonaws.com)"},
	{.name = "registry.repository_prefix", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "Images go to <registry.host>/<prefix><app> (default: \"slipway/\" with ECR, "
		 "the name the IAM policies of init/aws allow; \"\" otherwise)", .max = 128},
	{.name = "docker.socket", .type = CONFIG_PATH, .default_value = "/var/run/docker.sock",
	 .help = "Docker Engine API socket the builder uses"},
	{.name = "git.ssh", .type = CONFIG_PATH, .default_value = "ssh",
	 .help = "ssh program git clones through"},

	/* Webhooks */
	{.name = "webhooks.max_body", .type = CONFIG_SIZE, .default_value = "25M",
	 .help = "Largest webhook body accepted (GitLab sends up to 25 MB)"},

	/* Embedded log sink */
	{.name = "logs.max_per_app", .type = CONFIG_SIZE, .default_value = "64M",
	 .help = "Container log bytes kept per app when CloudWatch is not used"},
	/* `slipway logs` from CloudWatch Logs (coordinator/logcw.h) */
	{.name = "logs.cloudwatch_region", .type = CONFIG_STRING, .default_value = NULL,
	 .help = "Read `slipway logs` from CloudWatch Logs in this region (the agents ship "
		 "there); unset: the embedded sink", .max = 64},
	{.name = "logs.cloudwatch_endpoint", .type = CONFIG_URL, .default_value = NULL,
	 .help = "CloudWatch Logs endpoint (default: https://logs.<region>.amazonaws.com)"},
	{.name = "logs.group_prefix", .type = CONFIG_STRING, .default_value = "/slipway/",
	 .help = "Log group of an app in CloudWatch: <prefix><app> (the agents' "
		 "logs.group_prefix)", .max = 256},

	/* Logging */
	{.name = "log.level", .type = CONFIG_ENUM, .default_value = "info",
	 .help = "Least severe level logged", .choices = log_levels},
	{.name = "log.syslog", .type = CONFIG_BOOL, .default_value = "false",
	 .help = "Log to syslog instead of stderr"},
};

const size_t coord_settings_count = sizeof coord_settings / sizeof coord_settings[0];

void coord_settings_path(const struct config *cfg, const char *key, const char *default_name,
			 char *out, size_t cap)
{
	if (config_has(cfg, key))
		snprintf(out, cap, "%s", config_str(cfg, key));
	else
		snprintf(out, cap, "%s/%s", config_str(cfg, "data.dir"), default_name);
}
