#!/bin/bash
# The converged Multi30k study's students on one lent GPU machine (results/multi30k_converged/REPRODUCE.md).
#
#   bash studies/multi30k_converged_gpu.sh bundle            # here: .gpu/ = what the GPU machine lacks
#   bash studies/multi30k_converged_gpu.sh run SECONDS OUT [RUN ...]   # there, in the repository root
#   bash studies/multi30k_converged_gpu.sh cuda-tests                 # there: the tests that need a GPU
#   bash studies/multi30k_converged_gpu.sh park | unpark              # here, before and after a call
#
# A call carries the working tree, at most 64 MiB: `park` moves the released students (73 MB; `run` needs
# only the teacher) out of the repository to ../.parked_models, `unpark` puts them back and checks their
# sha256 against models/SHA256SUMS.
#
# The GPU image has python3, PyTorch (CUDA), sacrebleu, sentencepiece, yaml, matplotlib; .gpu/ brings
# OpenNMT-py 3.5.1, ConfigArgParse, sacremoses, pyonmttok (wheels; pyonmttok unpacked and xz-compressed to
# fit the 64 MiB a call carries) and the prepared corpus (data/multi30k, its data.yaml's folder a
# placeholder).  spacy, ahocorasick, fasttext and rapidfuzz are imported by OpenNMT-py transforms that this
# study never uses (terminology, inlinetags, clean, fuzzymatch): empty stand-ins are put there, so a run that
# did use one fails at once.
#
# `run` starts the plan's runs RUN ... (default: the main comparison and diagnostic (a)) from the released
# float16 teacher (models/teacher.pt, loaded into float32) and the pilot's budget (BUDGET.json), all at
# once with CUDA MPS when the machine has it so that the students'
# processes share the GPU's engines (without it they time-slice, about 1 step/s each), for at most SECONDS;
# then it collects every finished run (OUT/collected.tar.gz: the study's collect, its log, the released
# float16 students and their SHA256SUMS) and puts the released students in OUT (one file each).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.gpu
PLAN=studies/multi30k_converged.yaml

bundle() {
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/wheels"
    local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    for wheel in OpenNMT-py==3.5.1 ConfigArgParse==1.9.0 sacremoses==0.2.0 pyonmttok==1.38.1 \
                 pytest==9.0.1 pluggy==1.6.0 iniconfig==2.3.0 packaging==25.0 Pygments==2.19.2; do  # pytest: cuda-tests
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${platforms[@]}" -d "$BUNDLE/wheels" "$wheel"
    done
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && unzip -q "$OLDPWD"/"$BUNDLE"/wheels/pyonmttok-*.whl)
    tar cJf "$BUNDLE/pyonmttok.tar.xz" -C "$tmp" . && rm -rf "$tmp" "$BUNDLE"/wheels/pyonmttok-*.whl
    local data
    data=$(cd data/multi30k && pwd)
    tar cJf "$BUNDLE/multi30k.tar.xz" -C data --exclude=multi30k/download multi30k
    # the corpus's data.yaml names its folder absolutely: a placeholder travels, `run` puts its own folder
    mkdir -p "$BUNDLE/placeholder" && sed "s#$data#@DATA@#g" data/multi30k/data.yaml > "$BUNDLE/placeholder/data.yaml"
    du -sh "$BUNDLE"
}

stand_ins() {  # empty modules for imports of transforms the study never uses
    local site=$1
    mkdir -p "$site/spacy" "$site/rapidfuzz"
    for module in spacy/__init__ ahocorasick fasttext rapidfuzz/__init__ rapidfuzz/fuzz rapidfuzz/process; do
        echo '"""Stand-in (studies/multi30k_converged_gpu.sh): no transform of this study uses it."""' \
            > "$site/$module.py"
    done
}

progress() {  # every 30 s: each student's last logged step
    while sleep 30; do
        echo "[progress $(date +%H:%M:%S)] $(for log in runs/multi30k_converged/student*/train.log; do
            printf '%s:%s ' "$(basename "$(dirname "$log")")" \
                "$(grep -o 'Step *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)"; done)"
    done
}

install() {  # the bundle's packages into /tmp/site, on PYTHONPATH with the repository
    local site=/tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$BUNDLE"/wheels/*.whl
    tar xJf "$BUNDLE/pyonmttok.tar.xz" -C "$site"
    stand_ins "$site"
    export PYTHONPATH="$site:$PWD" OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
}

cuda_tests() {  # the tests skipped without a GPU (their skip reason names it), each CUDA test of the suite
    install
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    python3 -m pytest -q -rs -p no:cacheprovider -k cuda tests/test_lma.py tests/test_quantize.py
}

run() {
    local seconds=$1 out=$2 site=/tmp/site
    shift 2
    install
    mkdir -p data && tar xJf "$BUNDLE/multi30k.tar.xz" -C data
    sed "s#@DATA@#$PWD/data/multi30k#g" "$BUNDLE/placeholder/data.yaml" > data/multi30k/data.yaml
    local runs=runs/multi30k_converged
    mkdir -p "$runs/teacher"
    cp results/multi30k_converged/models/teacher.pt "$runs/teacher/model_step_3000.pt"
    echo model_step_3000.pt > "$runs/teacher/DONE"
    cp results/multi30k_converged/BUDGET.json "$runs/"
    # with MPS all the runs at once; without it the first two alone
    local only=(student64_relu_seed1 student64_lma_seed1 student64_relu_seed2 student64_lma_seed2
                student64_relu_seed3 student64_lma_seed3 student64_relu_lr2x_seed1 student64_lma_lr2x_seed1)
    if [ $# -gt 0 ]; then only=("$@"); fi
    # a second call on the same machine finds the daemon of the first running (its runs resume exactly)
    if command -v nvidia-cuda-mps-control >/dev/null && { pgrep -x nvidia-cuda-mps >/dev/null \
            || pgrep -f "nvidia-cuda-mps-control -d" >/dev/null || nvidia-cuda-mps-control -d; } \
            && timeout 120 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
        echo "CUDA MPS daemon started"
    else
        echo "no CUDA MPS: the students time-slice the GPU"
        echo quit | nvidia-cuda-mps-control 2>/dev/null || true
        only=("${only[@]:0:2}")
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    python3 -c "import torch, onmt, onmt_lma; print('torch', torch.__version__, torch.cuda.is_available())"
    progress & local monitor=$!
    timeout "$seconds" python3 -m onmt_lma.study.runs --data-root data --runs-root "$(dirname "$runs")" study "$PLAN" \
        --gpu 0 --parallel "${#only[@]}" --only "${only[@]}" 2>&1 | tee "$runs/study.log" || echo "study stopped after $seconds s"
    kill "$monitor" || true
    pkill -f onmt_lma || true
    sleep 2
    local stage=/tmp/stage/multi30k_converged
    mkdir -p "$stage"
    RESULTS=$stage python3 -m onmt_lma.study.runs --data-root data --runs-root "$(dirname "$runs")" study "$PLAN" --collect
    RESULTS=$stage python3 -m onmt_lma.study.runs --data-root data --runs-root "$(dirname "$runs")" study "$PLAN" --release || true
    rm -f "$stage/models/teacher.pt"
    local cut=(-e "s#$PWD/##g" -e "s#$site/#site-packages/#g" -e "s#/usr/lib/\(python3[.0-9]*\)/#\1/#g")
    sed "${cut[@]}" "$runs/study.log" > "$stage/study_gpu.log"
    for run_dir in "$runs"/student*; do  # every run's logs, finished or not, this machine's folders cut
        mkdir -p "$stage/logs/${run_dir##*/}"
        for log in train.log finish.log COMMITS; do
            if [ -e "$run_dir/$log" ]; then
                sed "${cut[@]}" "$run_dir/$log" > "$stage/logs/${run_dir##*/}/$log"
            fi
        done
    done
    for model in "$stage"/models/*.pt; do [ -e "$model" ] && mv "$model" "$out/"; done
    tar czf "$out/collected.tar.gz" -C /tmp/stage multi30k_converged
    ls -la "$out"
}

MODELS=results/multi30k_converged/models PARKED=../.parked_models

park() {
    mkdir -p "$PARKED"
    mv "$MODELS"/student64_*.pt "$PARKED"/
    echo "parked $(ls "$PARKED" | wc -l) students in $PARKED; the working tree: $(git ls-files -z | du -ch \
        --files0-from=- 2>/dev/null | tail -1 | cut -f1) tracked"
}

unpark() {
    mv "$PARKED"/student64_*.pt "$MODELS"/ && rmdir "$PARKED"
    (cd "$MODELS" && sha256sum -c --quiet SHA256SUMS) && echo "released models back, sha256 checked"
}

case "${1:-}" in
    bundle) bundle ;;
    run) shift; run "$@" ;;
    cuda-tests) cuda_tests ;;
    park) park ;;
    unpark) unpark ;;
    *) echo "usage: $0 bundle | run SECONDS OUT [RUN ...] | cuda-tests | park | unpark" >&2; exit 2 ;;
esac
