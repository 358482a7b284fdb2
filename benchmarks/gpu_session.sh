#!/usr/bin/env bash
# One prepared GPU session (issue 23): every section under its own time limit, in order of
# value, each result written under $OUT as soon as the section ends (never into the
# repository), all of it inside about 6 minutes.
#
#   OUT=/tmp/session bash benchmarks/gpu_session.sh                # on the GPU machine
#   OUT=/tmp/dry SESSION_MODE=cpu bash benchmarks/gpu_session.sh   # a tiny dry run on a CPU
#
# Sections (name, default limit in seconds, what it does):
#   environment     20  nvidia-smi, CPU model and flags, Python and package versions
#   install         30  the wheels of benchmarks/wheelhouse.sh, offline, into $SESSION_SITE
#                       (90 when it must build the CRF's wheel from wheelhouse/build/)
#   tests           90  pytest -m gpu (junit XML and the -rA report)
#   float32         25  python -m benchmarks.float32_diagnosis (CPU against the device)
#   kmeans_image    30  benchmarks.gpu_check's image level (device, CPU engine, sklearn)
#   kmeans_dataset  35  benchmarks.gpu_check's streamed dataset level
#   extract         30  benchmarks.gpu_check's extract against the bare forward pass
#   pipeline        90  Snakemake on 1,449 demo images, each stage's time from logs/
#
# What comes back (the device tool returns at most 8 files): $OUT/summary.tsv (one line a
# section: name, status, exit code, seconds, limit), $OUT/session.log (the console) and
# $OUT/session.tgz (every section's files: <name>.status.json, <name>.log, its JSON),
# rewritten after every section. A section that runs out of time is recorded as
# "timeout" and the next one starts; the whole session stops starting sections when
# SESSION_BUDGET seconds have passed.
#
# Settings (environment variables):
#   SESSION_MODE=gpu|cpu        cpu: device cpu, tiny sizes, no install (the current
#                               interpreter), the pipeline as a Snakemake dry run
#   SESSION_SECTIONS="..."      the sections to run, in this order (default: all)
#   SESSION_BUDGET=350          seconds for the whole session
#   SESSION_STALL=<section>     that section sleeps until its limit (tests the timeout path)
#   T_<SECTION>=<seconds>       one section's limit (T_TESTS=120, T_KMEANS_IMAGE=40, ...)
#   SESSION_PYTHON=python3      the interpreter (on the GPU machine: the one with torch)
#   SESSION_WHEELHOUSE=wheelhouse  the wheels to install (carry it: run's carry=["wheelhouse"])
#   SESSION_SITE=/tmp/lcseg-site   where they are installed (put first on PYTHONPATH)
#   SESSION_WORK=<temp dir>     where sections write before packing
#   SESSION_IMAGE_PROBLEMS, SESSION_DATASET_ROWS, SESSION_EXTRACT_IMAGES,
#   SESSION_PIPELINE_IMAGES     sizes (defaults 1449, 4000000, 512, 1449; tiny in cpu mode)
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2

MODE=${SESSION_MODE:-gpu}
PY=${SESSION_PYTHON:-python3}
SITE=${SESSION_SITE:-/tmp/lcseg-site}
WHEELHOUSE=${SESSION_WHEELHOUSE:-$REPO/wheelhouse}
if [[ $MODE == cpu ]]; then
    DEVICE=cpu SCALE=tiny
else
    DEVICE=cuda SCALE=full
fi

# ---------------------------------------------------------------------------------------
# the sections (each runs in its own process, under timeout, with its results in $WORK)

section_environment() {
    {
        echo "== date"; date -u
        echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "nvidia-smi: not available"
        echo "== uname"; uname -a
        echo "== cpu"
        grep -m1 '^model name' /proc/cpuinfo
        echo "cores: $(nproc)"
        grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|amx|fma|f16c)' |
            sort | tr '\n' ' '
        echo
        echo "== python"; command -v "$PY"; "$PY" -V
        echo "== pip list"; "$PY" -m pip list 2>/dev/null |
            grep -iE '^(torch|timm|numpy|scipy|scikit-learn|cupy|zarr|snakemake|pydensecrf|numba|opencv)' ||
            true
    } >"$WORK/environment.txt" 2>&1
    "$PY" -m benchmarks.gpu_check --device "$DEVICE" --scale "$SCALE" --only environment \
        --out "$WORK/environment"
}

section_install() {
    if [[ $MODE == cpu ]]; then
        echo "cpu mode: no install, the current interpreter ($PY) as it is"
        return 0
    fi
    shopt -s nullglob
    local wheels=("$WHEELHOUSE"/*.whl)
    if ((${#wheels[@]} == 0)); then
        echo "no wheels in $WHEELHOUSE: run benchmarks/wheelhouse.sh here and carry it"
        return 3
    fi
    local sdists=("$WHEELHOUSE"/build/pydensecrf2-*.tar.gz)
    if ! compgen -G "$WHEELHOUSE/pydensecrf2-*.whl" >/dev/null && ((${#sdists[@]})); then
        # wheelhouse.sh found no python3.12: build the CRF's wheel here, offline, from its
        # source and the build requirements it saved (setuptools, wheel, Cython)
        echo "building ${sdists[0]##*/} here"
        "$PY" -m pip wheel -q --no-index --no-deps --find-links "$WHEELHOUSE/build" \
            -w "$WORK/built" "${sdists[0]}" || return $?
        wheels+=("$WORK"/built/pydensecrf2-*.whl)
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}" || return $?
    PYTHONPATH="$SITE:$REPO" "$PY" -c '
import importlib
for name in ("zarr", "numcodecs", "snakemake", "pydensecrf", "pycocotools", "ijson",
             "jsonschema", "array_api_compat", "cupy", "lcseg_steps"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "present"))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, exc)
'
}

section_tests() {
    # -v -s: each outcome and each printed agreement reach the log as they happen, so a
    # run stopped at its limit still says how far it got
    "$PY" -m pytest -m gpu -v -s -rA -p no:cacheprovider -o addopts= \
        --junitxml="$WORK/tests.xml" tests
}

section_float32() {
    "$PY" -m benchmarks.float32_diagnosis --device "$DEVICE" --json "$WORK/float32.json"
}

gpu_check() {  # one section of benchmarks.gpu_check, its JSON and log in $WORK/<section>/
    "$PY" -m benchmarks.gpu_check --device "$DEVICE" --scale "$SCALE" --only "$1" \
        --out "$WORK/$1" "${@:2}"
}

section_kmeans_image() { gpu_check kmeans_image; }
section_kmeans_dataset() { gpu_check kmeans_dataset; }
section_extract() { gpu_check extract; }

section_pipeline() {
    # stop Snakemake 15 s before the limit, so the stages that finished are reported
    gpu_check pipeline --budget-s "$((SECTION_LIMIT > 45 ? SECTION_LIMIT - 15 : 30))"
}

if [[ ${1:-} == --section ]]; then # a section, in its own process (run by the loop below)
    if [[ ${SESSION_STALL:-} == "$2" ]]; then # the timeout path, on purpose (its test)
        sleep 3600
    fi
    "section_$2"
    exit
fi

# ---------------------------------------------------------------------------------------
# the session

: "${OUT:?set OUT to the folder that receives the results}"
mkdir -p "$OUT" || exit 2
WORK=${SESSION_WORK:-$(mktemp -d /tmp/lcseg-session.XXXXXX)}
mkdir -p "$WORK" || exit 2
export WORK MODE PY SITE WHEELHOUSE DEVICE SCALE
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ $MODE == cpu ]]; then
    export GPU_CHECK_IMAGE_PROBLEMS=${SESSION_IMAGE_PROBLEMS:-12}
    export GPU_CHECK_DATASET_ROWS=${SESSION_DATASET_ROWS:-40000}
    export GPU_CHECK_EXTRACT_IMAGES=${SESSION_EXTRACT_IMAGES:-4}
    export GPU_CHECK_PIPELINE_IMAGES=${SESSION_PIPELINE_IMAGES:-6}
    export GPU_CHECK_PIPELINE_DRY_RUN=1
else
    export GPU_CHECK_IMAGE_PROBLEMS=${SESSION_IMAGE_PROBLEMS:-1449}
    export GPU_CHECK_DATASET_ROWS=${SESSION_DATASET_ROWS:-4000000}
    export GPU_CHECK_EXTRACT_IMAGES=${SESSION_EXTRACT_IMAGES:-512}
    export GPU_CHECK_PIPELINE_IMAGES=${SESSION_PIPELINE_IMAGES:-1449}
fi

declare -A LIMIT=(
    [environment]=20 [install]=30 [tests]=90 [float32]=25
    [kmeans_image]=30 [kmeans_dataset]=35 [extract]=30 [pipeline]=90
)
if [[ $MODE != cpu ]] && ! compgen -G "$WHEELHOUSE/pydensecrf2-*.whl" >/dev/null; then
    LIMIT[install]=90 # the CRF's wheel is built here first
fi
ORDER="environment install tests float32 kmeans_image kmeans_dataset extract pipeline"
SECTIONS=${SESSION_SECTIONS:-$ORDER}
BUDGET=${SESSION_BUDGET:-350}
START=$SECONDS

pack() { # what the device tool brings back: three files, rewritten whole each time
    tar -czf "$OUT/.session.tgz.part" -C "$WORK" . && mv "$OUT/.session.tgz.part" "$OUT/session.tgz"
}

log() { echo "[$((SECONDS - START))s] $*" | tee -a "$OUT/session.log"; }

printf 'section\tstatus\trc\tseconds\tlimit_s\n' >"$OUT/summary.tsv"
log "lcseg GPU session: mode $MODE, device $DEVICE, scale $SCALE, budget ${BUDGET}s, work $WORK"
for name in $SECTIONS; do
    if [[ -z ${LIMIT[$name]:-} ]]; then
        log "unknown section $name (choose from: $ORDER)"
        exit 2
    fi
    var="T_${name^^}"
    limit=${!var:-${LIMIT[$name]}}
    left=$((BUDGET - (SECONDS - START)))
    ((limit > left)) && limit=$left
    t0=$SECONDS
    if ((left < 5)); then
        status=skipped rc=-1
        log "== $name: skipped, ${left}s of the session's ${BUDGET}s left"
    else
        log "== $name (limit ${limit}s)"
        SECTION_LIMIT=$limit timeout --kill-after=5 "$limit" bash "$0" --section "$name" \
            >"$WORK/$name.log" 2>&1
        rc=$?
        case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
        esac
        tail -n 5 "$WORK/$name.log" | sed 's/^/    /' | tee -a "$OUT/session.log"
        if [[ $name == install && $status == ok ]]; then # later sections import from here
            export PYTHONPATH="$SITE:$PYTHONPATH" PATH="$SITE/bin:$PATH"
        fi
    fi
    secs=$((SECONDS - t0))
    printf '{"section": "%s", "status": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' \
        "$name" "$status" "$rc" "$secs" "$limit" >"$WORK/$name.status.json"
    printf '%s\t%s\t%d\t%d\t%d\n' "$name" "$status" "$rc" "$secs" "$limit" >>"$OUT/summary.tsv"
    log "== $name: $status (exit $rc) in ${secs}s"
    pack
done
log "done in $((SECONDS - START))s; summary in $OUT/summary.tsv, every file in $OUT/session.tgz"
