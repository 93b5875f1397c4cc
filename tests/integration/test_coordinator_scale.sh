#!/usr/bin/env bash
# 1,000 simulated agents long-polling the real coordinator: a promoted release
# reaches all within 2 s; private memory <= 64 MB (tests/bench/coordinator_scale.sh).
top=${SLIPWAY_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
exec "$top/tests/bench/coordinator_scale.sh" "${SLIPWAY_BUILD:-$top/build}" 1000 3
