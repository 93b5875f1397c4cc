#include "commands_deploy.h"

/* Placeholder until common/context.{c,h} exists (see the report). */
int commands_deploy(struct cli *cli, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return cli_failf(cli, "deploy: not built yet");
}
