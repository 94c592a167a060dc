#!/bin/bash
# The overhead of `robustlr sweep --backend ray` against a local sweep (docs/ray.md, "Overhead").
# Usage: docs/ray/overhead.sh SUITE.toml   (the numbers there: the 4-run tiny suite of
# tests/experiments/test_ray_sweep.py); needs ROBUSTLR_DATA_DIR or the data in robustlr's search order.
# Starts a two-node Ray cluster on 127.0.0.1 (one CPU each) and stops every Ray process after.
set -u
suite=$(realpath "$1")
work=$(mktemp -d)
cd "$work"
export RAY_USAGE_STATS_ENABLED=0
port=6391
ray start --head --node-ip-address=127.0.0.1 --port=$port --num-cpus=1 --include-dashboard=false >/dev/null 2>&1
ray start --address=127.0.0.1:$port --node-ip-address=127.0.0.1 --num-cpus=1 >/dev/null 2>&1
seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
for rep in 1 2; do
  rm -rf o-local o-ray
  echo "rep $rep local            $(seconds robustlr sweep "$suite" -r o-local -j 2)"
  echo "rep $rep ray (running)    $(seconds robustlr sweep "$suite" -r o-ray --backend ray --address 127.0.0.1:$port)"
done
ray stop --force >/dev/null 2>&1
for rep in 1 2; do
  rm -rf o-started
  echo "rep $rep ray (started)    $(seconds robustlr sweep "$suite" -r o-started --backend ray)"
done
rm -rf "$work"
