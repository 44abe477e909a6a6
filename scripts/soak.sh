#!/usr/bin/env bash
# The soak (`tests/suite/soak.rs`): two sidecars on one Redis under a mixed
# load over every primitive, a fault between them and Redis every 30 s (a
# black hole, connections dropped, latency past the deadline, answers
# lost, Redis killed and restarted). Fails if a request fails outside a
# fault's window, or if resident memory, descriptors, tokio tasks or Redis
# connections do not come back to where they were after the warm-up;
# prints the figures (lines starting `soak:`).
#
#   scripts/soak.sh [SECONDS]    default 600, the README's figures;
#                                scripts/test.sh runs 120
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
# The same build as scripts/test.sh's (its lints are part of the build).
export RUSTC_WORKSPACE_WRAPPER="${RUSTC_WORKSPACE_WRAPPER:-$PWD/scripts/clippy-rustc}"
# --workspace: the features the test build resolved, so nothing is rebuilt.
OUTRIGGER_SOAK_SECS=$secs exec cargo test --workspace --locked --test suite -- \
  --ignored --exact soak::soak_under_faults_ends_where_it_began --nocapture
