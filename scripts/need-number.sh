# Sourced by the benchmark scripts before anything is built: `need_number NAME VALUE [LEAST]`
# ends the script with exit code 2 and a message unless VALUE is a whole number of at least LEAST
# (default 1). NAME is the setting as the user gives it (ROUNDS, TASKS, ...).
need_number() {
  local name="$1" value="$2" least="${3:-1}"
  if ! [[ "$value" =~ ^(0|[1-9][0-9]*)$ ]] || [ "$value" -lt "$least" ]; then
    echo "$name must be a whole number of at least $least, got '$value'" >&2
    exit 2
  fi
}
