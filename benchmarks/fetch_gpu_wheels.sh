#!/usr/bin/env bash
# Fetch the Python 3.12 wheels the GPU check's stages need and the GPU machine lacks, into .whl/
# (ignored by git; a device call carries it: carry [".whl"]). Run it on a machine with network
# access to the package index, just before the device call: it also records the commit and the
# dirty flag of this tree in .whl/tree-state.json, since the GPU machine's copy has no .git.
#
#   bash benchmarks/fetch_gpu_wheels.sh          # prints each wheel and the total size
#
# The GPU machine (Python 3.12, torch 2.11, Triton 3.6; /work/.library/device/KINDS.md lists its
# packages) already holds every dependency of these wheels except the ones listed: open_clip's
# torch, torchvision, regex, tqdm, huggingface-hub, safetensors and timm; the peers' torch and
# triton. Versions are those requirements.txt pins (tests/test_gpu_check.py checks they agree).
# Stage kernels: the published MaxSim kernels (benchmarks/peers.py). Stage model: open_clip and
# its text cleaner (ftfy, wcwidth), PyAV. DALI's wheel is larger than one call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
DEST=.whl

WHEELS=(
  flash-maxsim==0.3.0
  late-interaction-kernels==0.4.5
  open_clip_torch==3.3.0
  ftfy==6.3.1
  wcwidth==0.9.4
  av==18.1.0
)

mkdir -p "$DEST"
# pip matches manylinux_2_N exactly, so every N a wheel may be tagged with is listed.
PLATFORMS=()
for tag in manylinux_2_{17..39}_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$tag")
done
for spec in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "$spec"
done

# One version of each project: two would stop the install on the GPU machine.
"$PY" - "$DEST" "${WHEELS[@]}" <<'EOF'
import re, sys
from pathlib import Path

dest, specs = Path(sys.argv[1]), sys.argv[2:]
wanted = {re.sub(r"[-_.]+", "_", s.split("==")[0]).lower(): s.split("==")[1] for s in specs}
for wheel in sorted(dest.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    key = re.sub(r"[-_.]+", "_", name).lower()
    if wanted.get(key) != version:
        print(f"removing {wheel.name}: not in the list {specs}")
        wheel.unlink()
missing = [s for s in specs if not any(re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() == re.sub(r"[-_.]+", "_", s.split("==")[0]).lower()
                                       for w in dest.glob("*.whl"))]
if missing:
    sys.exit(f"no wheel fetched for {missing}")
EOF

"$PY" - "$DEST" <<'EOF'
import datetime, json, subprocess, sys
from pathlib import Path

def git(*args):
    done = subprocess.run(["git", *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None

commit = git("rev-parse", "HEAD")
status = git("status", "--porcelain", "--untracked-files=no")
state = {"commit": commit, "dirty": None if status is None else bool(status),
         "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
Path(sys.argv[1], "tree-state.json").write_text(json.dumps(state, indent=2) + "\n")
print(f"tree state: commit {commit}, dirty {state['dirty']}")
EOF

ls -l "$DEST"/*.whl | awk '{printf "%9.2f MiB  %s\n", $5 / 1048576, $NF}'
WHEEL_BYTES=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
TREE_BYTES=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s}')
awk -v w="$WHEEL_BYTES" -v t="$TREE_BYTES" 'BEGIN {
  printf "wheels %.1f MiB + tracked tree %.1f MiB = %.1f MiB of the 64 MiB a device call carries\n", w / 1048576, t / 1048576, (w + t) / 1048576
  if (w + t > 64 * 1048576) { print "over the limit: carry fewer wheels"; exit 1 }
}'
