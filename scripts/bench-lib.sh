# Shared by scripts/bench and scripts/demo (sourced, not run): sandboxes, the load recorder,
# marks, and deploying a bundle the way the CodeDeploy agent runs the hooks.
#
# Callers set ROOT (the workspace) and WORK (a scratch folder outside /tmp: the sandboxes
# cover /tmp with a tmpfs of their own) and call `trap bl_cleanup EXIT`.

SANDBOX_SH=$ROOT/scripts/sandbox
# The host's tools: the debug build's, or HANDOFF_TOOLS (a build folder: `make test`'s e2e tests
# run the scripts with their own build's).
TOOLS=${HANDOFF_TOOLS:-$ROOT/target/debug}
LOADGEN=$TOOLS/loadgen
REPORT=$TOOLS/report
DEPLOY_LOCAL=$TOOLS/deploy-local
BL_SANDBOXES=()
BL_PIDS=()

bl_log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bl_die() { bl_log "ERROR: $*"; exit 1; }
# Bytes as megabytes (10^6), one decimal: the unit the README gives binary sizes in.
bl_mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
now_ms() { date +%s%3N; }

# Stops what we started, by PID / sandbox folder: loadgen first (it writes its results on
# SIGTERM), then every sandbox (which ends everything inside it).
bl_cleanup() {
  local pid dir
  for pid in "${BL_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for dir in "${BL_SANDBOXES[@]}"; do
    [[ -d $dir ]] && { "$SANDBOX_SH" stop "$dir" || bl_log "sandbox stop $dir failed"; }
  done
  BL_PIDS=()
  BL_SANDBOXES=()
}

# A real systemd in its own namespaces; sets SB (its folder). A watchdog stops it if this
# script dies without its trap.
sb_start() {
  local out
  out=$("$SANDBOX_SH" start --owner $$) || bl_die "could not start a sandbox"
  SB=$(sed -n 's/^SANDBOX_DIR=//p' <<<"$out")
  [[ -n $SB ]] || bl_die "sandbox start printed no SANDBOX_DIR: $out"
  BL_SANDBOXES+=("$SB")
}
sb_exec() { local dir=$1; shift; "$SANDBOX_SH" exec "$dir" -- "$@"; }
sb_stop() {
  local dir=$1 keep=() d
  "$SANDBOX_SH" stop "$dir"
  for d in "${BL_SANDBOXES[@]}"; do [[ $d == "$dir" ]] || keep+=("$d"); done
  BL_SANDBOXES=("${keep[@]}")
}

# A loopback port nobody listens on: above the front's default release ports (20000-20999)
# and below the kernel's ephemeral range (where the local end of any outgoing connection may
# take it between this check and the bind).
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p low span
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  span=$((low - 21000))
  ((span > 1000)) || span=10000
  for _ in $(seq 200); do
    p=$((21000 + RANDOM % span))
    port_in_use "$p" || { echo "$p"; return; }
  done
  bl_die "no free port found"
}

# Keeps the load tools and the service from starving each other: with 2 cores or more (and
# $1 not 0), this script, so every sandbox, app instance and hook it starts, runs on all cores
# but the last, and loadgen (with the ab and wrk it starts) on the last one (LG_CPUS). Sets
# PINNING to a sentence for the report. `unpin` gives this script every core again.
pin_apart() {
  local want=${1:-1} cpus
  PINNING="none: clients and service share every core"
  LG_CPUS=""
  if [[ $want == 0 ]] || ! command -v taskset >/dev/null; then
    return 0
  fi
  BL_CPUS_BEFORE=$(taskset -pc $$ | sed 's/.*: //') || return 0
  # The CPUs this script may use (a cpuset may allow 2,3 only), one per line.
  mapfile -t cpus < <(tr ',' '\n' <<<"$BL_CPUS_BEFORE" |
    awk -F- '{ if (NF == 2) { for (i = $1; i <= $2; i++) print i } else print $1 }')
  if [[ ${#cpus[@]} -lt 2 ]]; then
    return 0
  fi
  LG_CPUS=${cpus[-1]}
  local service
  service=$(IFS=,; echo "${cpus[*]:0:${#cpus[@]}-1}")
  taskset -pc "$service" $$ >/dev/null || bl_die "could not pin this script to CPUs $service (BENCH_PIN=0 / SCALE_PIN=0 skips pinning)"
  PINNING="loadgen, ab and wrk on CPU $LG_CPUS; the sandboxes' systemd, the app instances and the hooks on CPU $service"
}
unpin() {
  if [[ -n ${LG_CPUS:-} && -n ${BL_CPUS_BEFORE:-} ]]; then taskset -pc "$BL_CPUS_BEFORE" $$ >/dev/null; fi
  LG_CPUS=""
}

# The X-Release that answers GET / on the port ("" if none).
answering_release() {
  curl -s -o /dev/null -D - --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null |
    sed -n 's/^[Xx]-[Rr]elease:[[:space:]]*\([^[:space:]]*\).*/\1/p' | tr -d '\r'
}
# Waits until release $2 answers on port $1.
wait_release() {
  local port=$1 want=$2 got=""
  for _ in $(seq 150); do
    got=$(answering_release "$port")
    [[ $got == "$want" ]] && return 0
    sleep 0.1
  done
  bl_die "release $want does not answer on 127.0.0.1:$port (last answer: '${got}')"
}

# loadgen in the background; sets LG_DIR, LG_CTL, LG_PID. Extra arguments go to loadgen.
# LG_CPUS (a taskset list) binds loadgen and the ab and wrk it starts to those CPUs.
loadgen_start() {
  LG_DIR=$1; local port=$2; shift 2
  LG_CTL=$LG_DIR/control
  local wrap=()
  [[ -n ${LG_CPUS:-} ]] && wrap=(taskset -c "$LG_CPUS")
  mkdir -p "$LG_DIR"
  : >"$LG_CTL"
  "${wrap[@]}" "$LOADGEN" --port "$port" --out "$LG_DIR" --control "$LG_CTL" "$@" 2>"$LG_DIR/loadgen.log" &
  LG_PID=$!
  BL_PIDS+=("$LG_PID")
  # LG_START_WAIT: seconds until every client is up (thousands of WebSockets take a while).
  for _ in $(seq $((${LG_START_WAIT:-5} * 20))); do
    [[ -f $LG_DIR/ready ]] && return 0
    kill -0 "$LG_PID" 2>/dev/null || { cat "$LG_DIR/loadgen.log" >&2; bl_die "loadgen exited"; }
    sleep 0.05
  done
  bl_die "loadgen did not start"
}
ctl() { echo "$*" >>"$LG_CTL"; }
# mark NAME LABEL [k=v…] [msg=…], timed now.
mark() { local name=$1 label=$2; shift 2; ctl "mark $name $label at=$(now_ms) $*"; }
loadgen_stop() {
  ctl stop
  wait "$LG_PID" || bl_die "loadgen failed (see $LG_DIR/loadgen.log)"
  grep '^loadgen: .* results in' "$LG_DIR/loadgen.log" >&2 || true
}

# The four hooks' own timing of one deployment (each hook's last line, see hooks/src/timing.rs:
# "application-start: took N ms: A ms waiting on the app, S ms on systemd[, L ms on another
# step's lock], O ms own work"), added up, from a deployment's log: hooks_ms=N app_ms=A
# systemd_ms=S own_ms=O, or nothing. A hook's line may appear twice (its output and the
# agent's scripts.log): the last one of each hook counts. Also lock_ms (waiting on another
# step's lock) and hooks=N (how many hooks ran: fewer than 4 when one failed). The Beanstalk
# hooks' lines ("beanstalk postdeploy: took …") count the same way (2 of them).
hook_timing() {
  local log=$1
  sed -E 's/beanstalk (predeploy|postdeploy): took/beanstalk-\1: took/' "$log" |
    grep -E '(application-stop|before-install|application-start|validate-service|beanstalk-predeploy|beanstalk-postdeploy): took [0-9]+ ms: ' |
    sed -nE 's/.*(application-stop|before-install|application-start|validate-service|beanstalk-predeploy|beanstalk-postdeploy): took ([0-9]+) ms: ([0-9]+) ms waiting on the app, ([0-9]+) ms on systemd(, ([0-9]+) ms on another step.s lock)?, ([0-9]+) ms own work.*/\1 \2 \3 \4 \7 0\6/p' |
    awk '{ last[$1] = $2 " " $3 " " $4 " " $5 " " $6 }
      END {
        n = 0
        for (h in last) { split(last[h], v, " "); t += v[1]; a += v[2]; s += v[3]; o += v[4]; l += v[5]; n++ }
        if (n) printf "hooks_ms=%d app_ms=%d systemd_ms=%d lock_ms=%d own_ms=%d hooks=%d\n", t, a, s, l, o, n
      }' || true
}
# Why a deployment failed, in one line, from its log: the hooks' own error, without the
# runner's prefixes ("ApplicationStart: ERROR application-start failed: ").
failure_reason() {
  { grep -E 'did not take over|failed validation|rolled back' "$1" || grep -E 'ERROR|failed' "$1" || tail -1 "$1"; } |
    tail -1 | sed 's/.*ERROR[[:space:]]*//; s/^[a-z-]* failed: //; s/^[[:space:]]*//' | cut -c1-300
}

# Rewrites an unpacked revision's deploy.yml: LISTEN (ip:port), then any KEY=VALUE for
# app.environment, and deadline overrides as deadline.start=5s (drain.budget=60s likewise).
patch_revision() {
  local dir=$1 listen=$2; shift 2
  local f=$dir/deploy.yml kv key val
  sed -i "s/^listen:.*/listen: [\"$listen\"]/" "$f"
  grep -q "^listen: \[\"$listen\"\]" "$f" || bl_die "could not set listen in $f"
  for kv in "$@"; do
    key=${kv%%=*}; val=${kv#*=}
    case $key in
      deadline.* | drain.*)
        local d=${key#*.} block=deadlines
        [[ $key == drain.* ]] && block=drain
        # Only inside that block (deadlines: or drain:).
        awk -v d="$d" -v v="$val" -v b="$block:" '
          /^[^[:space:]#]/ { inblock = ($1 == b) }
          inblock && $1 == d":" { sub(/:.*/, ": " v); }
          { print }' "$f" >"$f.new" && mv "$f.new" "$f"
        grep -Eq "^  $d: $val" "$f" || bl_die "could not set $block.$d in $f"
        ;;
      *)
        sed -i "/^  environment:/a\\    $key: \"$val\"" "$f"
        grep -q "^    $key: \"$val\"" "$f" || bl_die "could not set app.environment.$key in $f (no '  environment:' under app:?)"
        ;;
    esac
  done
}

# Deploys a bundle (zip or folder) as deployment $3 into sandbox $1, the way the CodeDeploy
# agent would: with target/debug/deploy-local when it exists (DEPLOY_WITH=hooks forces the
# fallback), else by running the bundle's hooks in the agent's order. All output goes to $4.
# Returns the hooks' status.
deploy_bundle() {
  local sb=$1 bundle=$2 id=$3 log=$4
  local with=${DEPLOY_WITH:-auto}
  if [[ $with == auto ]]; then
    if [[ -x $DEPLOY_LOCAL ]]; then with=deploy-local; else with=hooks; fi
  fi
  DEPLOYED_WITH=$with
  if [[ $with == deploy-local ]]; then
    mkdir -p "$WORK/agent"
    local rc=0
    sb_exec "$sb" "$DEPLOY_LOCAL" --bundle "$bundle" --deployment-id "$id" --root "$WORK/agent" \
      --application demo --group demo-group --group-id dg-demo >>"$log" 2>&1 || rc=$?
    # Its scripts.log (the agent's per-deployment log) has the hooks' own output.
    local f
    for f in "$WORK"/agent/*/"$id"/logs/scripts.log; do
      [[ -f $f ]] && { echo "--- scripts.log ---"; cat "$f"; } >>"$log"
    done
    return $rc
  fi
  deploy_with_hooks "$sb" "$bundle" "$id" "$log"
}

# The agent's in-place order: ApplicationStop from the last successfully installed revision,
# BeforeInstall, (Install), ApplicationStart, ValidateService. Revisions are unpacked under
# $WORK/archives/<id> (the agent's deployment-archive).
deploy_with_hooks() {
  local sb=$1 bundle=$2 id=$3 log=$4
  local rev=$WORK/archives/$id last_file
  last_file=$WORK/last-installed.$(basename "$sb")
  rm -rf "$rev"
  mkdir -p "$rev"
  if [[ -d $bundle ]]; then cp -a "$bundle/." "$rev/"; else unzip -q "$bundle" -d "$rev"; fi
  run_hook() {
    local event=$1 exe=$2 rc=0
    echo "[$(date +%T.%3N)] $event ($exe)" >>"$log"
    sb_exec "$sb" env DEPLOYMENT_ID="$id" LIFECYCLE_EVENT="$event" APPLICATION_NAME=demo \
      DEPLOYMENT_GROUP_NAME=demo-group DEPLOYMENT_GROUP_ID=dg-demo "$exe" >>"$log" 2>&1 || rc=$?
    [[ $rc -eq 0 ]] || echo "[$(date +%T.%3N)] $event failed with exit code $rc" >>"$log"
    return $rc
  }
  if [[ -f $last_file ]]; then
    run_hook ApplicationStop "$(<"$last_file")/hooks/application-stop" || return 1
  fi
  run_hook BeforeInstall "$rev/hooks/before-install" || return 1
  echo "$rev" >"$last_file"   # the agent records the install right after Install
  run_hook ApplicationStart "$rev/hooks/application-start" || return 1
  run_hook ValidateService "$rev/hooks/validate-service" || return 1
}
