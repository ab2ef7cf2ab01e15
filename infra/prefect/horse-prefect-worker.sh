#!/usr/bin/env bash
# Start a Horse Prefect worker on a node of the Ray cluster (research/orchestration.md C1).
#
# 1. Join the Ray cluster at $RAY_HEAD_ADDRESS with zero CPUs and zero GPUs: the node only hosts
#    drivers, never tasks or actors.
# 2. Make sure the work pool exists (type process) with its concurrency limit, so two render runs
#    never fight over the GPUs.
# 3. Run a process worker: each flow run is a subprocess here, a Ray driver that connects with
#    address=auto. Its actors are owned by the run, so a cancelled or crashed run frees its GPUs.
#
# Environment: RAY_HEAD_ADDRESS (host:port, required), PREFECT_API_URL (required),
# HORSE_WORK_POOL (horse-gpu), HORSE_POOL_CONCURRENCY (1), RAY_OBJECT_STORE_BYTES (1 GiB).
# Installed in the image as /usr/local/bin/horse-prefect-worker.
set -euo pipefail

: "${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS to the GCS address of the Ray head, e.g. horse-head-svc:6379}"
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://prefect:4200/api}"
pool="${HORSE_WORK_POOL:-horse-gpu}"

ray start --address="$RAY_HEAD_ADDRESS" --num-cpus=0 --num-gpus=0 \
    --object-store-memory="${RAY_OBJECT_STORE_BYTES:-1073741824}" --disable-usage-stats

# Flow runs inherit this: the pool joins the cluster this node belongs to.
export HORSE_RAY__ADDRESS=auto
# prefect.yaml's pull step moves each flow run here (the project checkout; /opt/horse in the image).
export HORSE_HOME="${HORSE_HOME:-$PWD}"

prefect work-pool create "$pool" --type process >/dev/null 2>&1 || true   # already there: fine
prefect work-pool set-concurrency-limit "$pool" "${HORSE_POOL_CONCURRENCY:-1}"

prefect worker start --pool "$pool" --type process --name "horse-worker-$(hostname)" &
worker=$!
stop() {
    kill -TERM "$worker" 2>/dev/null || true
    wait "$worker" || true
    ray stop --force >/dev/null 2>&1 || true
}
trap stop TERM INT
set +e
wait "$worker"
status=$?
ray stop --force >/dev/null 2>&1 || true
exit "$status"
