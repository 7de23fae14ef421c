# Shared helpers for the local stack scripts: settings, logging, process and port checks,
# Maven fetches. Sourced by infra/local/stack and by each server's lib/<server>.sh.
# shellcheck shell=bash

STACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$STACK_ROOT/../.." && pwd)"

# Settings. Every one can be overridden from the environment; the defaults fit one machine.
STACK_DIR="${STACK_DIR:-$REPO_ROOT/.stack}"
STACK_HOST="${STACK_HOST:-127.0.0.1}"
STACK_KAFKA_PORT="${STACK_KAFKA_PORT:-9092}"
STACK_KAFKA_CONTROLLER_PORT="${STACK_KAFKA_CONTROLLER_PORT:-9093}"
STACK_CQL_PORT="${STACK_CQL_PORT:-9042}"
STACK_CASSANDRA_STORAGE_PORT="${STACK_CASSANDRA_STORAGE_PORT:-7000}"
STACK_REGISTRY_PORT="${STACK_REGISTRY_PORT:-8081}"
STACK_REGISTRY_MANAGEMENT_PORT="${STACK_REGISTRY_MANAGEMENT_PORT:-9081}"
# Seconds `up` waits for one server to become ready before it gives up.
STACK_TIMEOUT="${STACK_TIMEOUT:-240}"

STACK_LOG_DIR="$STACK_DIR/logs"
STACK_RUN_DIR="$STACK_DIR/run"
STACK_DATA_DIR="$STACK_DIR/data"
STACK_LIB_DIR="$STACK_DIR/lib"

log() { printf '%s\n' "[stack] $*" >&2; }
die() {
    printf '%s\n' "[stack] error: $*" >&2
    exit 1
}

ensure_dirs() {
    mkdir -p "$STACK_LOG_DIR" "$STACK_RUN_DIR" "$STACK_DATA_DIR" "$STACK_LIB_DIR"
    # Keep the stack's state out of git without touching the repository's own .gitignore.
    [[ -f "$STACK_DIR/.gitignore" ]] || printf '*\n' >"$STACK_DIR/.gitignore"
}

require_java() {
    command -v java >/dev/null 2>&1 || die "java not found on PATH: install a JDK 17 (for example 'apt-get install openjdk-17-jdk-headless') and run again."
    local major
    major="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
    [[ "${major%%.*}" -ge 17 ]] 2>/dev/null || die "java $major found, the stack needs Java 17 or newer (java.specification.version >= 17)."
}

require_maven() {
    command -v mvn >/dev/null 2>&1 || die "mvn not found on PATH: install Maven (for example 'apt-get install maven') and run again; it fetches the servers from Maven Central."
}

# pid_file NAME -> path of the pid file of server NAME.
pid_file() { printf '%s/%s.pid' "$STACK_RUN_DIR" "$1"; }

# is_running NAME: true when NAME's pid file names a live process that started no later than
# the pid file was written (so a pid reused after a reboot is not taken for the server).
is_running() {
    local f pid age started written
    f="$(pid_file "$1")"
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    age="$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')"
    [[ "$age" =~ ^[0-9]+$ ]] || return 0
    started=$(($(date +%s) - age))
    written="$(stat -c %Y "$f")"
    ((started <= written + 5))
}

# port_in_use PORT: true when something listens on 127.0.0.1:PORT or any address.
port_in_use() { (exec 3<>"/dev/tcp/$STACK_HOST/$1") 2>/dev/null; }

# port_owner PORT: best-effort description of the process listening on PORT, for example
# `python3 (pid 123: python3 -m http.server 9092)`; empty when unknown (another user's process).
port_owner() {
    local name="" pid="" args
    if command -v ss >/dev/null 2>&1; then
        read -r name pid < <(ss -ltnpH "sport = :$1" 2>/dev/null |
            sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 \2/p' | head -n1) || true
    fi
    if [[ -z "$pid" ]] && command -v lsof >/dev/null 2>&1; then
        read -r name pid < <(lsof -nP -iTCP:"$1" -sTCP:LISTEN 2>/dev/null | awk 'NR==2 {print $1, $2}') || true
    fi
    [[ -n "$pid" ]] || return 0
    args="$(ps -o args= -p "$pid" 2>/dev/null | cut -c1-120)"
    printf '%s (pid %s%s)' "$name" "$pid" "${args:+: $args}"
}

# check_port_free SERVER PORT SETTING: stop with a clear message when PORT is taken.
check_port_free() {
    local server="$1" port="$2" setting="$3" owner
    if port_in_use "$port"; then
        owner="$(port_owner "$port")"
        die "port $port, needed by $server, is already taken${owner:+ by $owner}. Stop that process or choose another port with $setting=<port>."
    fi
}

# start_daemon NAME LOGFILE CMD...: start CMD in the background, detached, and record its pid.
start_daemon() {
    local name="$1" logfile="$2"
    shift 2
    ensure_dirs
    # Where this run's output starts in the log, so that a failure shows this run's lines only.
    printf '%s %s\n' "$(stat -c %s "$logfile" 2>/dev/null || echo 0)" "$logfile" >"$STACK_RUN_DIR/$name.logstart"
    nohup setsid "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$(pid_file "$name")"
}

# fail_with_log NAME LOGFILE MESSAGE: print MESSAGE and the tail of LOGFILE, then stop.
fail_with_log() {
    local name="$1" logfile="$2" msg="$3"
    printf '%s\n' "[stack] error: $msg" >&2
    local start=0 started_log=""
    if [[ -f "$logfile" ]]; then
        read -r start started_log 2>/dev/null <"$STACK_RUN_DIR/$name.logstart" || true
        [[ "$start" =~ ^[0-9]+$ && "$started_log" == "$logfile" ]] || start=0
        printf '%s\n' "[stack] last lines of $logfile:" >&2
        tail -c "+$((start + 1))" "$logfile" | tail -n 40 | sed 's/^/    /' >&2
    fi
    exit 1
}

# wait_ready NAME LOGFILE CHECK...: run CHECK until it succeeds, the server dies or
# STACK_TIMEOUT passes. Each failure of CHECK is a real readiness probe, not a sleep.
wait_ready() {
    local name="$1" logfile="$2"
    shift 2
    local deadline=$((SECONDS + STACK_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        is_running "$name" || fail_with_log "$name" "$logfile" "$name exited during start."
        ((SECONDS < deadline)) || fail_with_log "$name" "$logfile" "$name was not ready after ${STACK_TIMEOUT}s (STACK_TIMEOUT)."
        sleep 1
    done
}

# stop_daemon NAME: TERM the process group, wait up to 60 s, then KILL. Fine when not running.
stop_daemon() {
    local name="$1" f pid i
    f="$(pid_file "$name")"
    if ! is_running "$name"; then
        rm -f "$f" "$STACK_RUN_DIR/$name.logstart"
        return 0
    fi
    rm -f "$STACK_RUN_DIR/$name.logstart"
    pid="$(cat "$f")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop within 60 s; killing it."
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

# maven_classpath NAME POM: resolve POM's dependencies (cached in the Maven repository) and
# print the classpath. Resolution runs again only when the POM changes.
maven_classpath() {
    local name="$1" pom="$2" out stamp sum
    out="$STACK_LIB_DIR/$name.classpath"
    stamp="$STACK_LIB_DIR/$name.pom.sha256"
    sum="$(sha256sum "$pom" | cut -d' ' -f1)"
    if [[ ! -s "$out" || "$(cat "$stamp" 2>/dev/null)" != "$sum" ]]; then
        require_maven
        ensure_dirs
        log "Fetching $name from Maven Central (first run only; cached in the Maven repository)."
        if ! mvn -B -q -Dstyle.color=never -f "$pom" dependency:build-classpath -Dmdep.outputFile="$out" \
            >"$STACK_LOG_DIR/fetch-$name.log" 2>&1; then
            fail_with_log "$name" "$STACK_LOG_DIR/fetch-$name.log" "downloading $name with Maven failed (is Maven Central reachable?)."
        fi
        echo "$sum" >"$stamp"
    fi
    cat "$out"
}
