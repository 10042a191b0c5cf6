#!/bin/sh
# The retrain recipe, one run of it (compose's trainer service, the Kubernetes Job and CronJob):
#   1. train on the data directory as it is now,
#   2. add the artifact's users, items, events and features to the online store (a running
#      feature service serves them within seconds),
#   3. publish the artifact as the model's next version in the repository.
# An inference server started with `--rollout canary:FRACTION:SECONDS` then brings the version in
# through a canary and promotes it, or rolls it back, by itself. The store is loaded before the
# version appears, so the new model never asks for an item or user the store lacks.
#
# Settings (environment; default in brackets):
#   RECSYS_DATA [/data]                      directory of the tables below
#   RECSYS_INTERACTIONS [interactions.csv]   user_id,item_id,timestamp[,rating] (required)
#   RECSYS_USERS [users.csv]                 user features, used when the file exists
#   RECSYS_ITEMS [items.csv]                 item features, used when the file exists
#   RECSYS_MODEL [sasrec]                    a built-in model or path/to/file.py:ClassName
#   RECSYS_EPOCHS [50]                       most epochs (early stopping may end sooner)
#   RECSYS_NPROC [1]                         data-parallel training processes
#   RECSYS_EXTRA_TRAIN_ARGS []               more `recsys train` flags, e.g. "--seed 7"
#   RECSYS_STORE_URL [redis://redis:6379/0]  the online store
#   RECSYS_REPO [/models]                    the model repository
#   RECSYS_MODEL_NAME [recs]                 the model's name in it (what the server serves)
#   RECSYS_WORKDIR [/tmp/recsys-retrain]     where the artifact is written (removed after)
# `recsys train` also reads its own RECSYS_TRAIN_* / RECSYS_RANK_* settings (`recsys train --help`).
set -eu

data=${RECSYS_DATA:-/data}
interactions=$data/${RECSYS_INTERACTIONS:-interactions.csv}
users=$data/${RECSYS_USERS:-users.csv}
items=$data/${RECSYS_ITEMS:-items.csv}
store=${RECSYS_STORE_URL:-redis://redis:6379/0}
repo=${RECSYS_REPO:-/models}
name=${RECSYS_MODEL_NAME:-recs}
workdir=${RECSYS_WORKDIR:-/tmp/recsys-retrain}
artifact=$workdir/artifact

if [ ! -f "$interactions" ]; then
    echo "retrain: no interactions table at $interactions (set RECSYS_DATA / RECSYS_INTERACTIONS)" >&2
    exit 2
fi

# Optional tables and extra flags, kept as positional parameters so paths with spaces survive
set --
[ -f "$users" ] && set -- "$@" --users "$users"
[ -f "$items" ] && set -- "$@" --items "$items"
# shellcheck disable=SC2086  # RECSYS_EXTRA_TRAIN_ARGS is a list of flags: split on purpose
[ -n "${RECSYS_EXTRA_TRAIN_ARGS:-}" ] && set -- "$@" ${RECSYS_EXTRA_TRAIN_ARGS}

mkdir -p "$workdir"
trap 'rm -rf "$artifact" "$artifact.ckpt"' EXIT

echo "retrain: training ${RECSYS_MODEL:-sasrec} on $interactions $*"
recsys train --model "${RECSYS_MODEL:-sasrec}" --interactions "$interactions" "$@" \
    --epochs "${RECSYS_EPOCHS:-50}" --nproc "${RECSYS_NPROC:-1}" --out "$artifact" --quiet

echo "retrain: loading users, items, events and features into the store"
recsys features load --artifact "$artifact" --store "$store"

echo "retrain: publishing into $repo as model $name"
recsys publish --artifact "$artifact" --repo "$repo" --model "$name"
