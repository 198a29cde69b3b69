# Sourced by the guide's wrappers (demo.sh, eval_acc_perf.sh, pth2om.sh): one way to read flags, print usage,
# refuse bad values and run a step. The sourcing script sets PROG (its name in messages) and FLAGS (the names
# of its --name=value flags, each also the name of the variable that holds its value, set to its default).

# die MESSAGE...: one "PROG: error: MESSAGE" line on stderr, exit 1.
die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

# usage: the running script's header comment (the lines after the shebang, up to the first line of code).
usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[-1]}"
}

# parse_flags ARG...: --name=value sets the variable of a name in FLAGS; -h/--help prints usage and exits;
# anything else stops the script with one line.
parse_flags() {
    local arg name known
    for arg in "$@"; do
        case "$arg" in
            -h|--help) usage; exit 0 ;;
            --*=*)
                name="${arg%%=*}"
                name="${name#--}"
                for known in "${FLAGS[@]}"; do
                    if [[ "$name" == "$known" ]]; then
                        printf -v "$name" '%s' "${arg#*=}"
                        continue 2
                    fi
                done ;;
        esac
        die "unknown argument '$arg' (see --help)"
    done
}

# require_positive_int NAME...: each flag's value must be a whole number of at least 1.
require_positive_int() {
    local name
    for name in "$@"; do
        [[ "${!name}" =~ ^[1-9][0-9]*$ ]] || die "--$name=${!name}: must be a positive integer"
    done
}

# require_choice NAME CHOICE...: the flag's value must be one of the choices.
require_choice() {
    local name="$1" choice
    shift
    for choice in "$@"; do
        [[ "${!name}" == "$choice" ]] && return 0
    done
    local listed="$*"
    die "--$name=${!name}: must be ${listed// / or }"
}

# require_bool NAME...: each flag's value must be true or false.
require_bool() {
    local name
    for name in "$@"; do
        require_choice "$name" true false
    done
}

# require_suite: stop with the install command when python3 cannot import the suite (outside the repository
# root it must be installed: pip install .).
require_suite() {
    python3 -c "import convmixer_suite" 2>/dev/null \
        || die "python3 cannot import convmixer_suite: install this project first (pip install $REPO_DIR)"
}

# run_step NAME LOG CMD...: run CMD (its stdout also into the file LOG when LOG is not empty), set
# step_seconds to its wall-clock time, and stop the script with a line naming the step when it fails.
run_step() {
    local name="$1" log="$2" status=0 started
    shift 2
    started=$(date +%s.%N)
    if [[ -n "$log" ]]; then
        "$@" | tee "$log" || status=$?
    else
        "$@" || status=$?
    fi
    if (( status != 0 )); then
        echo "$PROG: error: step '$name' failed (exit $status)" >&2
        exit "$status"
    fi
    step_seconds=$(echo "$started $(date +%s.%N)" | awk '{printf "%.3f", $2 - $1}')
}
