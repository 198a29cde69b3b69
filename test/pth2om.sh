#!/usr/bin/env bash
# Checkpoint -> ONNX -> Ascend OM, as the ModelZoo guide runs it from the repository root:
#     bash test/pth2om.sh --batch_size=1 --not_skip_onnx=true
# Flags (--key=value): --batch_size (1), --not_skip_onnx (true: always export; false: reuse an existing ONNX),
# --soc_version (from `npu-smi info` when present, else Ascend310P3),
# --source (checkpoint, ./convmixer_1536_20_ks9_p7.pth.tar; when missing and named like a released checkpoint
# it is downloaded, checked and its sha256 recorded beside it), --download (true; false: never download).
# Writes convmixer_1536_20.onnx and, where atc is installed, convmixer_1536_20_bs${batch_size}.om in the
# current directory. Without atc the OM step is skipped: the ONNX model runs on ONNX Runtime instead.
set -euo pipefail

readonly PROG="pth2om.sh"
readonly REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ONNX_FILE="convmixer_1536_20.onnx"
readonly OM_BASE="convmixer_1536_20"
readonly ASCEND_ENV="/usr/local/Ascend/ascend-toolkit/set_env.sh"
readonly DEFAULT_SOC="Ascend310P3"

readonly FLAGS=(batch_size not_skip_onnx soc_version source download)
batch_size=1
not_skip_onnx=true
soc_version=""
source="./convmixer_1536_20_ks9_p7.pth.tar"
download=true

# shellcheck source=test/lib.sh
source "$REPO_DIR/test/lib.sh"

# The chip name from `npu-smi info`'s table (a row like "| 0       310P3     | OK ..."), as atc's soc_version.
detect_soc() {
    local name=""
    if command -v npu-smi >/dev/null 2>&1; then
        name="$(npu-smi info 2>/dev/null | awk -F'|' '$2 ~ /^ *[0-9]+ +[0-9][0-9][0-9][0-9A-Za-z]* *$/ {
                    split($2, f, " "); print f[2]; exit }')" || name=""
    fi
    if [[ -n "$name" ]]; then
        echo "Ascend${name}"
    else
        echo "$DEFAULT_SOC"
    fi
}

export_onnx() {
    if [[ "$not_skip_onnx" == false ]]; then
        [[ -f "$ONNX_FILE" ]] || die "--not_skip_onnx=false but $PWD/$ONNX_FILE does not exist; rerun with --not_skip_onnx=true"
        echo "==> 1. reusing $ONNX_FILE (--not_skip_onnx=false)"
        return
    fi
    echo "==> 1. exporting $source to $ONNX_FILE"
    local export_args=(--source "$source" --target "$ONNX_FILE")
    [[ "$download" == true ]] || export_args+=(--no-download)
    python3 "$REPO_DIR/convmixer_pth2onnx.py" "${export_args[@]}" \
        || die "ONNX export of $source failed (see the message above)"
}

compile_om() {
    local om_name="${OM_BASE}_bs${batch_size}"
    if ! command -v atc >/dev/null 2>&1; then
        echo "==> 2. atc (Ascend toolkit) is not installed: skipping the OM step;" \
             "$ONNX_FILE runs on the embedded ONNX Runtime backend instead"
        return
    fi
    require_suite
    [[ -n "$soc_version" ]] || soc_version="$(detect_soc)"
    local chw
    chw="$(python3 -m convmixer_suite.guide.files input-shape)"
    echo "==> 2. compiling $ONNX_FILE to $om_name.om with atc (soc $soc_version)"
    local atc_args=(
        --framework=5 --model="$ONNX_FILE" --output="$om_name" --input_format=NCHW
        --input_shape="image:${batch_size},${chw}" --log=error --soc_version="$soc_version"
        --op_select_implmode=high_performance --optypelist_for_implmode="Gelu"
    )
    atc "${atc_args[@]}" || die "atc failed (exit $?) compiling $ONNX_FILE"
    [[ -f "$om_name.om" ]] || die "atc reported success but $PWD/$om_name.om was not written"
    echo "==> 3. wrote $om_name.om"
}

main() {
    parse_flags "$@"
    require_positive_int batch_size
    require_bool not_skip_onnx download
    if [[ -f "$ASCEND_ENV" ]]; then
        set +u  # the toolkit's script reads unset variables
        # shellcheck disable=SC1090
        source "$ASCEND_ENV"
        set -u
    fi
    export_onnx
    compile_om
}

main "$@"
