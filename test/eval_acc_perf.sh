#!/usr/bin/env bash
# Accuracy and speed end to end, as the ModelZoo guide runs it from the directory holding the model:
#     bash ./test/eval_acc_perf.sh --batch_size=1 --datasets_path=/opt/npu/imageNet
# Flags (--key=value):
#   --batch_size (1)   --datasets_path (/opt/npu/imageNet: images in val/, labels in val_label.txt)
#   --backend (auto: msame for the .om when msame is on PATH; else openvino for bf16/int8 when installed;
#              else onnxruntime. Or onnxruntime, openvino, torch, msame, ais_bench)
#   --model (./convmixer_1536_20_bs${bs}.om for msame/ais_bench and for auto when msame is on PATH and the
#            .om exists; ./convmixer_1536_20_ks9_p7.pth.tar for torch; else ./convmixer_1536_20.onnx)
#   --precision (fp32; bf16 on openvino; int8 on onnxruntime/openvino)   --calib (int8 calibration images)
#   --num_calib (300: int8 calibrates on at most this many images of --calib)
#   --max_logit_error (0.02: bf16/int8 stop before writing anything when max |diff| / max |logit| against
#                      fp32 on held-out images exceeds it)
#   --threads (runtime default)   --device (cpu; cuda:N, an NPU id, see convmixer_infer.py)
#   --stream (false; true: one streaming pass with convmixer_stream_eval.py instead of steps 1-3)
#   --engine (local; ray: the streaming pass on Ray Data, pip install -r requirements-dist.txt)
#   --ray_address (ray engine; default: start Ray here; auto or HOST:PORT joins a cluster)
#   --replicas (ray engine; default: one per GPU/NPU for --device, else one per node)
#   --fresh (false; true: delete this batch size's earlier outputs (streaming: its records) instead of resuming)
# Writes ./prep_image_bs${bs}/, ./result/outputs_bs${bs}_om/ (msame's layout; our run records in
# ./result/outputs_bs${bs}_om.runs/), ./msame_bs${bs}.txt, ./result/result_bs${bs}.json, and the run's HTML
# report ./result/report_bs${bs}.html (convmixer-report), whose path it prints last.
set -euo pipefail

readonly PROG="eval_acc_perf.sh"
readonly REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

readonly FLAGS=(batch_size datasets_path backend model precision calib num_calib max_logit_error threads device stream
                engine ray_address replicas fresh)
batch_size=1
datasets_path="/opt/npu/imageNet"
backend="auto"
model=""
precision="fp32"
calib=""
num_calib=""
max_logit_error=""
threads=""
device=""
stream=false
engine=local
ray_address=""
replicas=""
fresh=false

# shellcheck source=test/lib.sh
source "$REPO_DIR/test/lib.sh"

check_flags() {
    require_positive_int batch_size
    [[ -z "$num_calib" ]] || require_positive_int num_calib
    require_bool stream fresh
    require_choice engine local ray
    if [[ "$stream" != true && ( "$engine" != local || -n "$ray_address" || -n "$replicas" ) ]]; then
        die "--engine, --ray_address and --replicas apply to --stream=true"
    fi
}

# report_rate NAME SECONDS: one "<name>: N images in S s, R images/s" line, N from the manifest.
report_rate() {
    awk -v name="$1" -v n="$num_images" -v s="$2" \
        'BEGIN { printf "    %s: %d images in %.2f s, %.2f images/s (wall clock, start-up included)\n", name, n, s, (s > 0 ? n / s : 0) }'
}

parse_flags "$@"
check_flags
require_suite
[[ -n "$model" ]] || model="$(python3 -m convmixer_suite.guide.files default-model --backend "$backend" \
    --batch-size "$batch_size")"
readonly bs="$batch_size"
readonly image_dir="${datasets_path}/val"
readonly label_file="${datasets_path}/val_label.txt"
readonly prep_dir="./prep_image_bs${bs}"
readonly output_dir="./result/outputs_bs${bs}_om"
readonly log_file="./msame_bs${bs}.txt"
readonly result_json="result_bs${bs}.json"

[[ -d "$image_dir" ]] || die "$image_dir: no such folder (--datasets_path must hold val/ and val_label.txt)"
[[ -f "$label_file" ]] || die "$label_file: no such file (--datasets_path must hold val/ and val_label.txt)"
[[ -e "$model" ]] || die "$model: model not found (make it with: bash test/pth2om.sh --batch_size=$bs; or pass --model=)"
mkdir -p ./result

runtime_args=(--model "$model" --backend "$backend" --precision "$precision")
[[ -n "$threads" ]] && runtime_args+=(--threads "$threads")
[[ -n "$calib" ]] && runtime_args+=(--calib "$calib")
[[ -n "$num_calib" ]] && runtime_args+=(--num-calib "$num_calib")
[[ -n "$max_logit_error" ]] && runtime_args+=(--max-logit-error "$max_logit_error")
[[ -n "$device" ]] && runtime_args+=(--device "$device")
if [[ "$fresh" == true ]]; then
    rm -rf -- "$output_dir" "${output_dir}.runs"
fi

if [[ "$stream" == true ]]; then
    stream_script="$REPO_DIR/convmixer_stream_eval.py"
    [[ -f "$stream_script" ]] || die "--stream=true needs $stream_script, which this checkout does not have"
    stream_args=(--engine "$engine")
    [[ -n "$ray_address" ]] && stream_args+=(--ray-address "$ray_address")
    [[ -n "$replicas" ]] && stream_args+=(--replicas "$replicas")
    [[ "$fresh" == true ]] && stream_args+=(--fresh)
    echo "==> 1. streaming evaluation of $image_dir (preprocess, inference, scoring in one pass, $engine engine), log $log_file"
    run_step "1. streaming evaluation" "$log_file" python3 "$stream_script" "${runtime_args[@]}" "${stream_args[@]}" \
        --image-path "$image_dir" --annotation-file-path "$label_file" --result-json-path ./result \
        --json-file-name "$result_json" --batch-size "$bs"
    echo "    streaming evaluation: $step_seconds s wall clock"
    results_step=2
else
    echo "==> 1. preprocessing $image_dir into $prep_dir"
    run_step "1. preprocessing" "" python3 "$REPO_DIR/convmixer_preprocess.py" --image-path "$image_dir" \
        --prep-image "$prep_dir" --batch-size "$bs"
    num_images="$(python3 -m convmixer_suite.guide.files num-images "$prep_dir")"
    report_rate "preprocessing" "$step_seconds"

    echo "==> 2. inference ($backend, $model) into $output_dir, log $log_file"
    run_step "2. inference" "$log_file" python3 "$REPO_DIR/convmixer_infer.py" "${runtime_args[@]}" \
        --input "$prep_dir" --output "$output_dir" --outfmt TXT --resume latest
    report_rate "inference" "$step_seconds"
    echo "    (model execution alone, as msame measures it, is the performance data below)"

    echo "==> 3. scoring against $label_file into ./result/$result_json"
    run_step "3. scoring" "" python3 "$REPO_DIR/convmixer_eval_acc.py" --folder-davinci-target "$output_dir/" \
        --annotation-file-path "$label_file" --result-json-path ./result --json-file-name "$result_json" \
        --batch-size "$bs"
    report_rate "scoring" "$step_seconds"
    results_step=4
fi

echo "==> $results_step. results"
echo "====performance data===="
run_step "$results_step. performance data" "" python3 "$REPO_DIR/test/parse.py" --result-file "$log_file" \
    --batch-size "$bs"
echo "====accuracy data===="
run_step "$results_step. accuracy data" "" python3 "$REPO_DIR/test/parse.py" --result-file "./result/$result_json"
echo "====report===="
if python3 -c "import jinja2" 2>/dev/null; then
    run_step "$results_step. HTML report" "" python3 -m convmixer_suite.commands.report "./result/$result_json" \
        --labels "$label_file" --out "./result/report_bs${bs}.html"
else
    echo "no HTML report: it needs Jinja2 (pip install -r requirements.txt, Python 3.10 or later)"
fi
