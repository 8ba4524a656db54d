#!/usr/bin/env bash
# Serve two fine-tuned models with two TGI servers on one GPU: A on PORT_A, then B on PORT_B with what A left.
#
# usage: demo/serve/serve.sh MODEL_A_DIR MODEL_B_DIR
#   Each argument is a servable model folder (config.json, weights, tokenizer) or a run folder whose
#   `selected` file names one (runs/<recipe>/<model>/selected -> epoch-N).
# env: PORT_A (8081) PORT_B (8082) BIND (127.0.0.1: loopback only, see compose.yaml) FRACTION_A (0.45)
#      MARGIN_MIB (2048) GPU (0) HEALTH_TIMEOUT (900 s)
#      TGI_IMAGE MAX_INPUT_TOKENS MAX_TOTAL_TOKENS (see compose.yaml)
# Errors: one line on stderr, exit 2.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMPOSE="$HERE/compose.yaml"
PYTHON="${PYTHON:-python3}"

die() {
	echo "serve.sh: error: $*" >&2
	exit 2
}

# A servable model folder, absolute; a run folder resolves through its `selected` file.
model_dir() {
	local dir="$1"
	[[ -d "$dir" ]] || die "$dir: no such directory"
	if [[ -f "$dir/selected" ]]; then
		local chosen
		chosen="$(tr -d '[:space:]' <"$dir/selected")"
		[[ -n "$chosen" && -d "$dir/$chosen" ]] || die "$dir/selected names '$chosen', which is not a folder in $dir"
		dir="$dir/$chosen"
	fi
	[[ -f "$dir/config.json" ]] || die "$dir: not a servable model folder (no config.json)"
	(cd "$dir" && pwd)
}

# 0 when http://HOST:PORT/health answers 200.
healthy() {
	local url="http://$HOST:$1/health"
	if command -v curl >/dev/null 2>&1; then
		curl -fsS -o /dev/null --max-time 5 "$url" 2>/dev/null
	else
		"$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$url" 2>/dev/null
	fi
}

wait_healthy() {
	local service="$1" port="$2" deadline=$((SECONDS + HEALTH_TIMEOUT)) state
	echo "waiting for $service on http://$HOST:$port/health (up to ${HEALTH_TIMEOUT}s)..."
	until healthy "$port"; do
		state="$(docker compose -f "$COMPOSE" ps -a --format '{{.State}}' "$service" 2>/dev/null || true)"
		case "$state" in
		exited* | dead*) die "$service stopped before it became healthy; see: docker compose -f $COMPOSE logs $service" ;;
		esac
		((SECONDS < deadline)) || die "$service not healthy after ${HEALTH_TIMEOUT}s; see: docker compose -f $COMPOSE logs $service"
		sleep "$HEALTH_INTERVAL"
	done
}

[[ $# -eq 2 ]] || die "usage: demo/serve/serve.sh MODEL_A_DIR MODEL_B_DIR"

# Check everything local before touching docker.
MODEL_A_DIR="$(model_dir "$1")"
MODEL_B_DIR="$(model_dir "$2")"
export MODEL_A_DIR MODEL_B_DIR
export PORT_A="${PORT_A:-8081}" PORT_B="${PORT_B:-8082}" FRACTION_A="${FRACTION_A:-0.45}" GPU="${GPU:-0}"
export BIND="${BIND:-127.0.0.1}"
HOST="$BIND" # where this host reaches the servers
[[ "$HOST" == "0.0.0.0" ]] && HOST=127.0.0.1
MARGIN_MIB="${MARGIN_MIB:-2048}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-900}"
HEALTH_INTERVAL="${HEALTH_INTERVAL:-5}"

command -v docker >/dev/null 2>&1 || die "docker not found: install Docker and the NVIDIA Container Toolkit"
docker compose version >/dev/null 2>&1 || die "'docker compose' not available: install the Docker Compose plugin"
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: serving needs an NVIDIA GPU and its driver"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (needed to compute B's memory fraction)"

# A B left over from an earlier run would hold memory while we measure what A leaves: remove it first.
docker compose -f "$COMPOSE" rm -sf tgi-b >/dev/null 2>&1 || true
echo "A: $MODEL_A_DIR (fraction $FRACTION_A)"
docker compose -f "$COMPOSE" up -d tgi-a || die "docker compose could not start tgi-a"
wait_healthy tgi-a "$PORT_A"

# What A left: B takes it all but MARGIN_MIB (see fraction.py and the top of compose.yaml).
reading="$(nvidia-smi --id="$GPU" --query-gpu=memory.free,memory.total --format=csv,noheader,nounits)" ||
	die "nvidia-smi could not read GPU $GPU's memory"
IFS=', ' read -r free_mib total_mib <<<"$reading"
FRACTION_B="$("$PYTHON" "$HERE/fraction.py" "$free_mib" "$total_mib" "$MARGIN_MIB" 2>&1)" || die "${FRACTION_B#error: }"
export FRACTION_B
echo "GPU $GPU: $free_mib of $total_mib MiB free after A; B: $MODEL_B_DIR (fraction $FRACTION_B, margin $MARGIN_MIB MiB)"

docker compose -f "$COMPOSE" up -d tgi-b || die "docker compose could not start tgi-b"
wait_healthy tgi-b "$PORT_B"

cat <<DONE
left  (A): http://$HOST:$PORT_A
right (B): http://$HOST:$PORT_B
arena:     python demo/app.py --left http://$HOST:$PORT_A --right http://$HOST:$PORT_B
stop:      MODEL_A_DIR=$MODEL_A_DIR MODEL_B_DIR=$MODEL_B_DIR docker compose -f $COMPOSE down
DONE
