/*
 * proxy_run: runs the proxy process (proxy_main) on its own, for the
 * integration test and the benchmark while `slipway-agent proxy` is not the
 * only way in: `proxy_run [--config FILE]`.
 */
#include "proxy_main.h"

int main(int argc, char **argv)
{
	return proxy_main(argc, argv);
}
