# What the launchers share (sourced, not run): usage from the script's header comment,
# one-sentence errors, shell quoting for the commands they print, and --help / --dry-run.
# gpu_slurm.sh keeps its own copy of these lines: sbatch runs it from a spool directory,
# where this file is not beside it.

usage() { sed -n '2,/^[^#]/{/^#/!d; /^#SBATCH/d; s/^# \{0,1\}//; p}' "$0"; }
fail() { echo "$(basename "$0"): $*" >&2; exit 2; }
# Shell-quotes words into one command line, single-quoting only the words that need it.
quoted() {
  local words=() word
  for word; do
    if [[ $word =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then words+=("$word")
    else words+=("${word@Q}"); fi
  done
  echo "${words[*]}"
}
# Sets dry_run (0 or 1) and args (every other argument, in order); --help anywhere prints
# the usage and exits.
parse_options() {
  dry_run=0
  args=()
  local arg
  for arg; do
    case $arg in
      -h|--help) usage; exit 0 ;;
      --dry-run) dry_run=1 ;;
      *) args+=("$arg") ;;
    esac
  done
}
