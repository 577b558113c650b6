#!/bin/bash
# BYOD post-build step of serve_deployment_actor_chaos_soak: Debian's
# redis-server, which the GCS restart scenario starts on a loopback port.

set -exo pipefail

sudo apt-get update -y
sudo apt-get install -y --no-install-recommends redis-server
