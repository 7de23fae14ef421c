# Apicurio Registry 3 for the local stack, serving the Confluent-compatible API
# (http://HOST:PORT/apis/ccompat/v7). Sourced by infra/local/stack after lib/common.sh.
#
# Distribution: the Quarkus fast-jar of io.apicurio:apicurio-registry-app:3.3.3, classifier
# "all", type tar.gz, from Maven Central; unpacked once into $STACK_LIB_DIR.
# Storage: kafkasql, a journal topic in the local Kafka (replayed into an in-memory database
# at each start), so schemas and their ids survive restarts as long as Kafka's data does.
# Java: Apicurio 3.3 is compiled for Java 21, so it runs on a Java 21+ found on the machine
# (see registry_java), while Kafka and Cassandra use the default Java 17.
# shellcheck shell=bash

REGISTRY_VERSION="3.3.3"
REGISTRY_ARTIFACT="io.apicurio:apicurio-registry-app:$REGISTRY_VERSION:tar.gz:all"
REGISTRY_HOME="$STACK_LIB_DIR/apicurio-registry-$REGISTRY_VERSION"
REGISTRY_DATA_DIR="$STACK_DATA_DIR/registry"
REGISTRY_LOG="$STACK_LOG_DIR/registry.log"
REGISTRY_MIN_JAVA=21
# The java binary for the registry; empty: the first Java >= 21 of JAVA_HOME, PATH, /usr/lib/jvm.
STACK_REGISTRY_JAVA="${STACK_REGISTRY_JAVA:-}"
REGISTRY_HEAP_OPTS="${REGISTRY_HEAP_OPTS:--Xms64m -Xmx384m}"
# A development registry serves few requests: the C1 compiler only and the serial collector
# start it sooner on a small machine and keep its memory lower (about 225 MB resident).
REGISTRY_JVM_OPTS="${REGISTRY_JVM_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"
# Kafka topic holding the registry's journal (all its writes); kept with infinite retention.
REGISTRY_JOURNAL_TOPIC="${REGISTRY_JOURNAL_TOPIC:-kafkasql-journal}"

registry_url() { printf 'http://%s:%s/apis/ccompat/v7' "$STACK_HOST" "$STACK_REGISTRY_PORT"; }

# java_major BIN: print the Java feature version of BIN (17, 21, 25...), or nothing.
java_major() {
    local v
    v="$("$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
    v="${v#1.}"
    printf '%s' "${v%%.*}"
}

# registry_java: print a java binary of version >= 21, or stop with what was found.
registry_java() {
    local c m seen=() candidates=()
    if [[ -n "$STACK_REGISTRY_JAVA" ]]; then
        m="$(java_major "$STACK_REGISTRY_JAVA")"
        [[ "$m" =~ ^[0-9]+$ && "$m" -ge "$REGISTRY_MIN_JAVA" ]] ||
            die "STACK_REGISTRY_JAVA=$STACK_REGISTRY_JAVA is ${m:+Java $m, }not a Java $REGISTRY_MIN_JAVA or newer, which Apicurio Registry $REGISTRY_VERSION needs."
        printf '%s' "$STACK_REGISTRY_JAVA"
        return 0
    fi
    [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME/bin/java")
    c="$(command -v java 2>/dev/null)" && candidates+=("$c")
    while IFS= read -r c; do candidates+=("$c"); done < <(printf '%s\n' /usr/lib/jvm/*/bin/java | sort -rV)
    for c in "${candidates[@]}"; do
        [[ -x "$c" ]] || continue
        m="$(java_major "$c")"
        [[ "$m" =~ ^[0-9]+$ ]] || continue
        if [[ "$m" -ge "$REGISTRY_MIN_JAVA" ]]; then
            printf '%s' "$c"
            return 0
        fi
        seen+=("Java $m ($c)")
    done
    die "Apicurio Registry $REGISTRY_VERSION needs Java $REGISTRY_MIN_JAVA or newer (it is compiled for Java 21); found only: ${seen[*]:-no java}. Install a JDK $REGISTRY_MIN_JAVA+ (any vendor; /usr/lib/jvm is searched) or point STACK_REGISTRY_JAVA at its bin/java."
}

# registry_fetch: download and unpack the registry once (cached in the Maven repository and
# in $REGISTRY_HOME); also checks that a suitable Java exists.
registry_fetch() {
    command -v curl >/dev/null 2>&1 || die "curl not found on PATH: the stack uses it to probe the registry ('apt-get install curl')."
    registry_java >/dev/null
    [[ -f "$REGISTRY_HOME/.unpacked" && -f "$REGISTRY_HOME/quarkus-run.jar" ]] && return 0
    require_maven
    ensure_dirs
    local tmp="$REGISTRY_HOME.tmp" fetch_log="$STACK_LOG_DIR/fetch-registry.log"
    rm -rf "$tmp" "$tmp.markers" "$REGISTRY_HOME"
    log "Fetching Apicurio Registry $REGISTRY_VERSION from Maven Central (first run only, about 160 MB)."
    # Outside a project the plugin's markers would land in a folder named '${project.basedir}';
    # they also make it skip artifacts it unpacked before, hence a fresh folder each time.
    if ! (cd "$STACK_LIB_DIR" && mvn -B -q -Dstyle.color=never org.apache.maven.plugins:maven-dependency-plugin:3.8.1:unpack \
        -Dartifact="$REGISTRY_ARTIFACT" -DoutputDirectory="$tmp" -DmarkersDirectory="$tmp.markers") >"$fetch_log" 2>&1; then
        rm -rf "$tmp" "$tmp.markers"
        fail_with_log registry "$fetch_log" "downloading $REGISTRY_ARTIFACT with Maven failed (is Maven Central reachable?)."
    fi
    rm -rf "$tmp.markers"
    [[ -f "$tmp/quarkus-run.jar" ]] || fail_with_log registry "$fetch_log" "$REGISTRY_ARTIFACT has no quarkus-run.jar; the layout of the distribution changed."
    touch "$tmp/.unpacked"
    mv "$tmp" "$REGISTRY_HOME"
}

registry_start() {
    if is_running registry; then
        log "Apicurio Registry is already running (pid $(cat "$(pid_file registry)"))."
        return 0
    fi
    port_in_use "$STACK_KAFKA_PORT" || die "the registry keeps its data in Kafka, which does not answer on $STACK_HOST:$STACK_KAFKA_PORT: start Kafka first (infra/local/stack up)."
    registry_fetch
    local java
    java="$(registry_java)"
    mkdir -p "$REGISTRY_DATA_DIR/tmp"
    # shellcheck disable=SC2206 # both hold several words on purpose.
    local heap=($REGISTRY_HEAP_OPTS $REGISTRY_JVM_OPTS)
    local props=(
        # HTTP API (REST, ccompat, UI) and Quarkus' management interface (health, metrics).
        "-Dquarkus.http.host=$STACK_HOST"
        "-Dquarkus.http.port=$STACK_REGISTRY_PORT"
        "-Dquarkus.management.host=$STACK_HOST"
        "-Dquarkus.management.port=$STACK_REGISTRY_MANAGEMENT_PORT"
        # Storage: the journal in the local Kafka (topic created on first start, retention -1).
        -Dapicurio.storage.kind=kafkasql
        "-Dapicurio.kafkasql.bootstrap.servers=$STACK_HOST:$STACK_KAFKA_PORT"
        "-Dapicurio.kafkasql.topic=$REGISTRY_JOURNAL_TOPIC"
        -Dapicurio.kafkasql.snapshots.topic=kafkasql-snapshots
        # Confluent ids: the "id" of the ccompat API is Apicurio's contentId, one per distinct
        # schema content, shared by every subject that registers that content (as in Confluent);
        # GET /schemas/ids/{id} resolves it. Both are Apicurio's defaults, set here on purpose.
        -Dapicurio.ccompat.legacy-id-mode.enabled=false
        -Dapicurio.ccompat.use-canonical-hash=false
        # Let tests delete subjects and versions (DELETE /subjects/...), as Confluent allows.
        -Dapicurio.rest.deletion.group.enabled=true
        -Dapicurio.rest.deletion.artifact.enabled=true
        -Dapicurio.rest.deletion.artifact-version.enabled=true
        # Scratch files in the stack's folder, not /tmp.
        "-Dapicurio.storage.snapshot.location=$REGISTRY_DATA_DIR/tmp"
        "-Dapicurio.import.work-dir=$REGISTRY_DATA_DIR/tmp"
        "-Djava.io.tmpdir=$REGISTRY_DATA_DIR/tmp"
        # Logs: readable timestamps, no per-request INFO from the Kafka clients.
        '-Dquarkus.log.console.format=%d{yyyy-MM-dd HH:mm:ss,SSS} %-5p [%c{3.}] (%t) %s%e%n'
        '-Dquarkus.log.category."org.apache.kafka".level=WARN'
    )
    ensure_dirs
    printf '\n===== %s starting Apicurio Registry %s (%s) =====\n' "$(date '+%F %T')" "$REGISTRY_VERSION" "$java" >>"$REGISTRY_LOG"
    log "Starting Apicurio Registry $REGISTRY_VERSION on $STACK_HOST:$STACK_REGISTRY_PORT (management on $STACK_HOST:$STACK_REGISTRY_MANAGEMENT_PORT)."
    (cd "$REGISTRY_DATA_DIR" &&
        start_daemon registry "$REGISTRY_LOG" "$java" "${heap[@]}" "${props[@]}" -jar "$REGISTRY_HOME/quarkus-run.jar")
}

# registry_ready: true when Quarkus reports ready (its checks include the storage: the Kafka
# journal replayed) and the Confluent-compatible API answers a real request with 200.
registry_ready() {
    curl -fsS -o /dev/null --max-time 5 "http://$STACK_HOST:$STACK_REGISTRY_MANAGEMENT_PORT/health/ready" &&
        curl -fsS -o /dev/null --max-time 5 "$(registry_url)/subjects"
}

registry_stop() {
    if is_running registry; then
        log "Stopping Apicurio Registry."
    fi
    stop_daemon registry
}

# registry_status: one line, for example `registry   running  pid 123  url http://...`; true when running.
registry_status() {
    if is_running registry; then
        printf 'registry   running  pid %s  url %s%s\n' "$(cat "$(pid_file registry)")" "$(registry_url)" \
            "$(registry_ready 2>/dev/null || echo '  (not answering yet)')"
    else
        printf 'registry   stopped\n'
        return 1
    fi
}
