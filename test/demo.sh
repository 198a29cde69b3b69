#!/usr/bin/env bash
# Quick start: the guide's whole flow (checkpoint -> ONNX -> inference -> accuracy and speed) on this machine.
#     bash test/demo.sh [--datasets_path=/opt/npu/imageNet] [--batch_size=1] [--num_images=8]
#                       [--backend=auto] [--work_dir=./demo_work] [--install=true] [--download=true]
# Installs requirements.txt and this project (pip install -e; --install=false skips both: then
# `pip install .` must have been run), then works inside --work_dir. It uses the real
# checkpoint convmixer_1536_20_ks9_p7.pth.tar when it is in the current directory or the repository, else
# downloads it into the current directory (--download=false skips that). Only when that fails does it write
# RANDOM_WEIGHTS_convmixer_1536_20.pth.tar (seeded random weights: accuracy means nothing), and it says why.
# It uses --datasets_path (val/ and val_label.txt) when given, otherwise generates --num_images pictures in
# ImageNet layout with rule-based labels (accuracy on them means nothing). Then it runs test/pth2om.sh and
# test/eval_acc_perf.sh, prints their accuracy and performance figures, and ends with the path of the run's
# HTML report.
set -euo pipefail

readonly PROG="demo.sh"
readonly REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly CHECKPOINT="convmixer_1536_20_ks9_p7.pth.tar"
readonly RANDOM_CHECKPOINT="RANDOM_WEIGHTS_convmixer_1536_20.pth.tar"

readonly FLAGS=(datasets_path batch_size num_images backend work_dir install download)
datasets_path=""
batch_size=1
num_images=8
backend="auto"
work_dir="./demo_work"
install=true
download=true

# shellcheck source=test/lib.sh
source "$REPO_DIR/test/lib.sh"

# try_download PATH: download the released checkpoint to PATH, its progress and messages on stderr as they
# come; on failure, sets download_failure to the download's error line (what went wrong, and the by-hand
# command) and returns 1.
try_download() {
    local log
    log="$(mktemp)"
    if { python3 -m convmixer_suite.model.download "$1" 2>&1 1>&3 | tee "$log" >&2; } 3>&1; then
        rm -f "$log"
        return 0
    fi
    download_failure="$(grep -a 'error: ' "$log" | tail -n 1 | sed 's/^.*error: //')" || true
    download_failure="${download_failure:-see the messages above}"
    rm -f "$log"
    return 1
}

# find_checkpoint: the real checkpoint's absolute path, or nothing.
find_checkpoint() {
    local candidate
    for candidate in "./$CHECKPOINT" "$REPO_DIR/$CHECKPOINT"; do
        if [[ -f "$candidate" ]]; then
            echo "$(cd "$(dirname "$candidate")" && pwd)/$CHECKPOINT"
            return 0
        fi
    done
    return 0
}

parse_flags "$@"
require_positive_int batch_size num_images
require_bool install download
if [[ -n "$datasets_path" ]]; then
    [[ -d "$datasets_path" ]] || die "--datasets_path=$datasets_path: no such folder"
    datasets_path="$(cd "$datasets_path" && pwd)"
fi
real_checkpoint="$(find_checkpoint)"
download_target="$(pwd)/$CHECKPOINT"

if [[ "$install" == true ]]; then
    echo "==> 1. installing requirements.txt and this project (pip install -e)"
    pip_args=(--quiet --disable-pip-version-check)
    run_step "1. pip install -r requirements.txt" "" \
        python3 -m pip install "${pip_args[@]}" -r "$REPO_DIR/requirements.txt"
    run_step "1. pip install -e $REPO_DIR" "" python3 -m pip install "${pip_args[@]}" --no-deps -e "$REPO_DIR"
else
    echo "==> 1. installing requirements.txt and this project: skipped (--install=false)"
fi

require_suite
mkdir -p "$work_dir"
cd "$work_dir"
echo "    working in $(pwd)"

echo "==> 2. checkpoint"
accuracy_note=""
download_failure=""
weights_origin=""
if [[ -z "$real_checkpoint" && "$download" == false ]]; then
    random_reason="$CHECKPOINT was not found and --download=false"
elif [[ -z "$real_checkpoint" ]]; then
    echo "    $CHECKPOINT is neither here nor in $REPO_DIR: downloading it"
    if try_download "$download_target"; then
        real_checkpoint="$download_target"
        weights_origin=" (downloaded just now; its sha256 is in $CHECKPOINT.sha256 beside it)"
    else
        random_reason="the download of $CHECKPOINT failed: $download_failure"
        echo "    the download failed (the error line above says why)"
    fi
fi
if [[ -n "$real_checkpoint" ]]; then
    source_path="$real_checkpoint"
    weights_line="REAL weights: $source_path$weights_origin"
    echo "    using the real checkpoint $source_path"
else
    source_path="./$RANDOM_CHECKPOINT"
    if [[ ! -f "$source_path" ]]; then
        run_step "2. writing a random checkpoint" "" python3 -m convmixer_suite.guide.samples checkpoint "$source_path"
    fi
    weights_line="RANDOM weights ($(pwd)/$RANDOM_CHECKPOINT), because $random_reason"
    echo "    using $source_path (seeded RANDOM weights) instead of $CHECKPOINT"
    accuracy_note="RANDOM weights: this accuracy means nothing; put $CHECKPOINT in the directory you run this"
    accuracy_note+=" from, or in $REPO_DIR, for real figures."
fi

echo "==> 3. images"
if [[ -z "$datasets_path" ]]; then
    datasets_path="$(pwd)/imagenet_sample"
    run_step "3. generating sample images" "" \
        python3 -m convmixer_suite.guide.samples dataset "$datasets_path" --num-images "$num_images"
    accuracy_note="${accuracy_note:+$accuracy_note }Generated pictures with rule-based labels: this accuracy means nothing."
else
    echo "    using $datasets_path"
fi

# nested: run a wrapper script with its output indented under this script's step
nested() {
    "$@" | sed -u 's/^/    /'
}

echo "==> 4. bash test/pth2om.sh --batch_size=$batch_size --not_skip_onnx=true --source=$source_path"
run_step "4. test/pth2om.sh" "" \
    nested bash "$REPO_DIR/test/pth2om.sh" --batch_size="$batch_size" --not_skip_onnx=true --source="$source_path"

echo "==> 5. bash test/eval_acc_perf.sh --batch_size=$batch_size --datasets_path=$datasets_path --backend=$backend"
eval_args=(--batch_size="$batch_size" --datasets_path="$datasets_path" --backend="$backend" --fresh=true)
[[ "$backend" == torch ]] && eval_args+=(--model="$source_path")
run_step "5. test/eval_acc_perf.sh" "" nested bash "$REPO_DIR/test/eval_acc_perf.sh" "${eval_args[@]}"

echo "==> 6. results (in $(pwd))"
echo "weights: $weights_line"
echo "performance (model execution, from ./msame_bs${batch_size}.txt):"
python3 "$REPO_DIR/test/parse.py" --result-file "./msame_bs${batch_size}.txt" --batch-size "$batch_size"
echo "accuracy (from ./result/result_bs${batch_size}.json):"
python3 "$REPO_DIR/test/parse.py" --result-file "./result/result_bs${batch_size}.json"
if [[ -n "$accuracy_note" ]]; then
    echo "NOTE: $accuracy_note"
fi
report="./result/report_bs${batch_size}.html"
if [[ -f "$report" ]]; then
    echo "report: $(pwd)/${report#./} (open it in a web browser; it needs no network)"
else
    echo "report: none was written (test/eval_acc_perf.sh said why above)"
fi
