#!/usr/bin/env bash
# Fill wheelhouse/ (ignored by git) with the wheels the GPU machine lacks for this project,
# for its Python 3.12 on x86-64 Linux, so that benchmarks/gpu_session.sh can install them
# there offline (the machine reaches no package registry). Run it here, where PyPI is
# reachable, then carry the folder: the device tool's run(carry=["wheelhouse"], ...).
#
#   bash benchmarks/wheelhouse.sh                   # -> wheelhouse/*.whl, wheelhouse/build/
#   WHEELHOUSE_CUPY=cupy-cuda12x bash benchmarks/wheelhouse.sh   # add a CuPy build too
#
# What the machine already has (its image's package list, /work/.library/device/KINDS.md:
# Python 3.12.3, torch 2.11 + CUDA 13.0, timm, numpy, scipy, scikit-learn, OpenCV, numba,
# matplotlib, PyYAML, Pillow, pytest, cupy-cuda13x 14.2) is never downloaded: only this
# project's other dependencies (zarr, snakemake, jsonschema, pycocotools, ijson,
# array-api-compat, array-api-strict) and whatever they need that the machine lacks.
# CuPy is left out by default: the machine's cupy-cuda13x matches its driver (580, CUDA
# 13), and a CuPy wheel alone is larger than the 64 MiB a run can carry.
#
# pydensecrf2 (the CRF) publishes a source archive only. A wheel for Python 3.12 is built
# here (about a minute) when a python3.12 is found: WHEELHOUSE_PY312, python3.12 on the
# PATH, or pyenv's (this machine has pyenv's 3.12.1);
# otherwise its source and its build requirements (setuptools, wheel, Cython 0.29.36 for
# 3.12) go to wheelhouse/build/ and gpu_session.sh builds the wheel on the GPU machine
# (about 30-60 s of its time, with the compiler of its CUDA image).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${WHEELHOUSE:-$REPO/wheelhouse}
# the project's environment (the README's .venv/): its versions are the tested ones
PY=${WHEELHOUSE_PIP_PYTHON:-python3}
[[ -z ${WHEELHOUSE_PIP_PYTHON:-} && -x $REPO/.venv/bin/python ]] && PY=$REPO/.venv/bin/python
find_py312() { # a python3.12 that runs: named, on the PATH, or one of pyenv's
    local c
    for c in ${WHEELHOUSE_PY312:-} python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        if [[ -n $c ]] && "$c" -m pip --version >/dev/null 2>&1; then
            echo "$c"
            return
        fi
    done
}
PY312=$(find_py312)
PIP=("$PY" -m pip --disable-pip-version-check)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3
    --abi none)
for tag in manylinux_2_{17,24,27,28,31,34,35}_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
    TARGET+=(--platform "$tag")
done

# this project's dependencies that the machine lacks (pyproject.toml's, less the image's)
NEED=(zarr snakemake jsonschema pycocotools ijson array-api-compat array-api-strict)
# the machine's image (KINDS.md, "Python packages already there"), names normalised
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax
e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp"

norm() { tr '[:upper:]_.' '[:lower:]--' <<<"$1"; }
has() { [[ " $(tr '\n' ' ' <<<"$DEVICE_HAS") " == *" $(norm "$1") "* ]]; }

mkdir -p "$DEST/build"
rm -f "$DEST"/*.whl "$DEST"/build/* # one version of each: two would stop the install
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== resolving ${NEED[*]} (their whole closure, by this machine's pip)"
RESOLVER=("${PIP[@]}")
[[ -n $PY312 ]] && RESOLVER=("$PY312" -m pip --disable-pip-version-check) # 3.12's markers
# the versions this project is tested with (this machine's environment) where they apply
"${PIP[@]}" list --format=freeze 2>/dev/null | grep -v -e ' @ ' -e '^-e' >"$work/tested.txt" || true
"${RESOLVER[@]}" install -q --dry-run --ignore-installed --report "$work/report.json" \
    -c "$work/tested.txt" "${NEED[@]}"
"$PY" - "$work/report.json" >"$work/pins.txt" <<'EOF'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    print(meta["name"], meta["version"])
EOF

missing=()
while read -r name version; do
    if has "$name"; then
        echo "   $name $version: on the machine already"
        continue
    fi
    if "${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$DEST" "$name==$version" \
        >"$work/dl.log" 2>&1; then
        echo "   $name $version: wheel for 3.12"
    elif "${PIP[@]}" wheel -q --no-deps -w "$work/built" "$name==$version" >"$work/dl.log" 2>&1 &&
        compgen -G "$work/built/*-none-any.whl" >/dev/null; then
        mv "$work/built/"*-none-any.whl "$DEST/" # pure Python: the wheel fits any version
        echo "   $name $version: pure-Python wheel built here from its source"
    else
        rm -rf "$work/built"
        missing+=("$name==$version")
        echo "   $name $version: NO wheel for Python 3.12 could be had"
    fi
done <"$work/pins.txt"

if [[ -n ${WHEELHOUSE_CUPY:-} ]]; then
    echo "== $WHEELHOUSE_CUPY (large: check the carry limit below)"
    "${PIP[@]}" download -q --no-deps "${TARGET[@]}" -d "$DEST" "$WHEELHOUSE_CUPY"
fi

echo "== pydensecrf2 (source only on PyPI)"
if [[ -n $PY312 ]] && "$PY312" -m pip wheel -q --no-deps -w "$DEST" pydensecrf2==1.1; then
    echo "   built pydensecrf2 for Python 3.12 here with $PY312 ($("$PY312" -V))"
    echo "   (tagged linux_x86_64; it needs glibc 2.29 and libstdc++ 3.4.21 at most)"
else
    echo "   NOT BUILT HERE: no python3.12 on this machine (set WHEELHOUSE_PY312 to one)."
    echo "   Its source and build requirements go to $DEST/build/; gpu_session.sh builds the"
    echo "   wheel on the GPU machine, offline, before installing."
    "${PIP[@]}" download -q --no-deps --no-binary=:all: -d "$DEST/build" pydensecrf2==1.1
    "${PIP[@]}" download -q "${TARGET[@]}" -d "$DEST/build" \
        setuptools wheel Cython==0.29.36 # with what they need (wheel: packaging)
fi

echo "== $DEST"
ls -1 "$DEST" "$DEST/build"
size=$(du -sm "$DEST" | cut -f1)
echo "total ${size} MiB (a run carries at most 64 MiB with the working tree)"
((size > 56)) && echo "WARNING: too large to carry beside the working tree"
if ((${#missing[@]})); then
    echo "WARNING: no Python 3.12 wheel for: ${missing[*]}"
    exit 1
fi
