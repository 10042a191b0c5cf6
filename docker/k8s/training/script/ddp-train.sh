#!/bin/sh
# One node of a multi-machine training run (the Indexed Job in ../indexed-job and the
# PyTorchJob in ../pytorchjob run it in every pod): torchrun starts this node's ranks and meets
# the other nodes at node 0; then node 0, whose first rank is global rank 0 and wrote the
# artifact, loads the store and publishes the version, as docker/retrain.sh does on one machine.
#
# Settings (environment; default in brackets), besides retrain.sh's RECSYS_DATA,
# RECSYS_INTERACTIONS, RECSYS_USERS, RECSYS_ITEMS, RECSYS_MODEL, RECSYS_EPOCHS,
# RECSYS_EXTRA_TRAIN_ARGS, RECSYS_STORE_URL, RECSYS_REPO, RECSYS_MODEL_NAME, RECSYS_WORKDIR:
#   RECSYS_NNODES                                  nodes (pods) in the run
#   RECSYS_NODE_RANK [JOB_COMPLETION_INDEX, else RANK]   this pod's place, 0 first (an Indexed
#                                                  Job's index; the PyTorchJob operator's RANK)
#   RECSYS_MASTER_ADDR [MASTER_ADDR]               node 0's address (its stable DNS name)
#   RECSYS_MASTER_PORT [MASTER_PORT, else 29500]
#   RECSYS_NPROC_PER_NODE [1]                      ranks per pod (one per GPU)
# The node rank is fixed (torchrun's static rendezvous), not drawn at rendezvous, so the pod
# that writes the artifact is known in advance: node 0.
set -eu

nnodes=${RECSYS_NNODES:?set RECSYS_NNODES}
node_rank=${RECSYS_NODE_RANK:-${JOB_COMPLETION_INDEX:-${RANK:?set RECSYS_NODE_RANK}}}
master=${RECSYS_MASTER_ADDR:-${MASTER_ADDR:?set RECSYS_MASTER_ADDR}}
port=${RECSYS_MASTER_PORT:-${MASTER_PORT:-29500}}
nproc=${RECSYS_NPROC_PER_NODE:-1}
# torchrun gives each rank its own RANK / WORLD_SIZE; the pod's (an operator's) must not leak
# into the commands that run after it
unset RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR MASTER_PORT
data=${RECSYS_DATA:-/data}
interactions=$data/${RECSYS_INTERACTIONS:-interactions.csv}
users=$data/${RECSYS_USERS:-users.csv}
items=$data/${RECSYS_ITEMS:-items.csv}
workdir=${RECSYS_WORKDIR:-/tmp/recsys-retrain}
artifact=$workdir/artifact

if [ ! -f "$interactions" ]; then
    echo "ddp-train: no interactions table at $interactions (every node reads the data volume)" >&2
    exit 2
fi

set --
[ -f "$users" ] && set -- "$@" --users "$users"
[ -f "$items" ] && set -- "$@" --items "$items"
# shellcheck disable=SC2086  # RECSYS_EXTRA_TRAIN_ARGS is a list of flags: split on purpose
[ -n "${RECSYS_EXTRA_TRAIN_ARGS:-}" ] && set -- "$@" ${RECSYS_EXTRA_TRAIN_ARGS}

mkdir -p "$workdir"
echo "ddp-train: node $node_rank of $nnodes, $nproc rank(s) here, meeting at $master:$port"
torchrun --nnodes "$nnodes" --node-rank "$node_rank" --nproc-per-node "$nproc" \
    --master-addr "$master" --master-port "$port" \
    -m recsys.cli train --model "${RECSYS_MODEL:-sasrec}" --interactions "$interactions" "$@" \
    --epochs "${RECSYS_EPOCHS:-50}" --out "$artifact" --quiet

if [ "$node_rank" != 0 ]; then
    exit 0
fi
echo "ddp-train: loading users, items, events and features into the store"
recsys features load --artifact "$artifact" --store "${RECSYS_STORE_URL:-redis://redis:6379/0}"
echo "ddp-train: publishing into ${RECSYS_REPO:-/models} as model ${RECSYS_MODEL_NAME:-recs}"
recsys publish --artifact "$artifact" --repo "${RECSYS_REPO:-/models}" --model "${RECSYS_MODEL_NAME:-recs}"
rm -rf "$artifact" "$artifact.ckpt"
