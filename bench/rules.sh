#!/usr/bin/env bash
# What queue rules cost: the transient scenario on a plain queue, on a 10-level
# priority queue (publishers cycling priorities 0-9) and on a queue with a message
# TTL, interleaved round by round, then the medians and each one's ratio to plain.
#
#   bench/rules.sh URL [bench options...]
#   bench/rules.sh amqp://guest:guest@127.0.0.1:5699/%2F --duration 5
#   bench/rules.sh amqp://...:5699/%2F --against amqp://...:5672/%2F --duration 5
#
# Options after the URL go to every run (--against included: each broker gets the
# same queue arguments).  ROUNDS (default 2) runs of each variant; PYTHON (default
# python3) is the interpreter that has postoffice installed; KEEP=DIR keeps the
# JSON of every run there.  The exit code is 1 if any run failed its checks.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: $0 URL [postoffice bench options...]" >&2
    exit 2
fi
url=$1
shift
python=${PYTHON:-python3}
rounds=${ROUNDS:-2}
out=${KEEP:-$(mktemp -d)}
mkdir -p "$out"
[[ -n ${KEEP:-} ]] || trap 'rm -rf "$out"' EXIT

declare -A variant=(
    [plain]=""
    [priority]="--queue-arg x-max-priority=10 --priorities 10"
    [ttl]="--queue-arg x-message-ttl=60000"
)
status=0
for round in $(seq "$rounds"); do
    for name in plain priority ttl; do
        echo "== $name, round $round: ${variant[$name]:-no queue arguments}" >&2
        # shellcheck disable=SC2086 # the variant's options are words on purpose
        "$python" -m postoffice bench transient --url "$url" ${variant[$name]} "$@" \
            --rounds 1 --json --no-progress >"$out/$name-$round.json" || status=1
    done
done

"$python" - "$out" <<'EOF'
import json, pathlib, statistics, sys

runs = {}  # (broker, variant) -> [(msg/s, CPU us/msg)]
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    variant = path.stem.rsplit("-", 1)[0]
    for result in json.loads(path.read_text())["results"]:
        if result["ok"]:
            runs.setdefault((result["broker"], variant), []).append(
                (result["rate"], result["broker_cpu_us"])
            )

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def show(value, digits):
    return "-" if value is None else f"{value:,.{digits}f}"

print("transient, medians over rounds; ratios are to the plain queue on the same broker")
print(f"{'broker':<7} {'queue':<9} {'msg/s':>9} {'ratio':>6} {'CPU us/msg':>11} {'ratio':>6}")
for broker in sorted({broker for broker, _ in runs}):
    plain = runs.get((broker, "plain"), [])
    base_rate = median([rate for rate, _ in plain])
    base_cpu = median([cpu for _, cpu in plain])
    for variant in ("plain", "priority", "ttl"):
        got = runs.get((broker, variant), [])
        rate, cpu = median([r for r, _ in got]), median([c for _, c in got])
        rate_ratio = rate / base_rate if rate and base_rate else None
        cpu_ratio = cpu / base_cpu if cpu and base_cpu else None
        print(
            f"{broker:<7} {variant:<9} {show(rate, 0):>9} {show(rate_ratio, 2):>6}"
            f" {show(cpu, 1):>11} {show(cpu_ratio, 2):>6}"
        )
EOF
if [[ $status -ne 0 ]]; then
    echo "some runs failed their checks: run again with KEEP=DIR and read the JSON" >&2
fi
exit "$status"
