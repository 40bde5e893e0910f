# shellcheck shell=bash
# Sourced by .ci/run: install (Debian packages) and start a real PostgreSQL server on loopback,
# with a throwaway data directory, owned by an unprivileged user, and export
#   COMPEMB_TEST_POSTGRES_URL=postgresql://<user>@127.0.0.1:<port>/compemb_test
# for tests/test_sweeps_postgres.py. Idempotent: when the variable already points at a live
# server nothing happens; when the packages are installed no package manager runs.
# Fails loudly (non-zero return, message on stderr) when no server can be started.
#
# Can also be run on its own (`bash .ci/postgres.sh`) to check that a server starts; it is then
# stopped again when the script exits.

_compemb_pg_fail() {
  echo "postgres.sh: $*" >&2
  return 1
}

_compemb_pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
    echo "$dir"
  fi
}

_compemb_pg_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { _compemb_pg_fail "not root and no sudo: cannot apt-get install postgresql"; return 1; }
    sudo="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || { _compemb_pg_fail "no apt-get: install PostgreSQL (initdb, pg_ctl) by hand"; return 1; }
  echo "postgres.sh: installing PostgreSQL (Debian packages)" >&2
  $sudo apt-get update -qq || { _compemb_pg_fail "apt-get update failed"; return 1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
    || { _compemb_pg_fail "apt-get install postgresql failed"; return 1; }
}

_compemb_pg_free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

compemb_postgres_start() {
  local bindir user datadir port log
  # already running (sourced twice)?
  if [ -n "${COMPEMB_TEST_POSTGRES_URL:-}" ] && [ -n "${COMPEMB_PG_BINDIR:-}" ] \
     && "$COMPEMB_PG_BINDIR/pg_isready" -q -d "$COMPEMB_TEST_POSTGRES_URL" 2>/dev/null; then
    return 0
  fi
  bindir=$(_compemb_pg_bindir)
  if [ -z "$bindir" ]; then
    _compemb_pg_install || return 1
    bindir=$(_compemb_pg_bindir)
    [ -n "$bindir" ] || { _compemb_pg_fail "installed postgresql but found no /usr/lib/postgresql/*/bin/initdb"; return 1; }
  fi
  # root may not run postgres: run it as the 'postgres' system user the package creates.
  if [ "$(id -u)" -eq 0 ]; then
    user=postgres
    id "$user" >/dev/null 2>&1 || { _compemb_pg_fail "running as root but there is no 'postgres' user"; return 1; }
    _compemb_pg_run() { runuser -u postgres -- "$@"; }
  else
    user=$(id -un)
    _compemb_pg_run() { "$@"; }
  fi
  datadir=$(mktemp -d "${TMPDIR:-/tmp}/compemb-pg.XXXXXX") || { _compemb_pg_fail "mktemp failed"; return 1; }
  chmod 700 "$datadir"
  if [ "$(id -u)" -eq 0 ]; then chown "$user": "$datadir"; fi
  log="$datadir/server.log"
  _compemb_pg_run "$bindir/initdb" -D "$datadir/data" -U "$user" --auth=trust -E UTF8 --no-sync >"$datadir/initdb.log" 2>&1 \
    || { cat "$datadir/initdb.log" >&2; _compemb_pg_fail "initdb failed in $datadir"; return 1; }
  port=$(_compemb_pg_free_port) || { _compemb_pg_fail "could not pick a free port"; return 1; }
  # loopback only, socket in the throwaway directory, fsync off (throwaway data).
  _compemb_pg_run "$bindir/pg_ctl" -D "$datadir/data" -l "$log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $datadir -c fsync=off -c max_connections=100" start >/dev/null \
    || { cat "$log" >&2 2>/dev/null; _compemb_pg_fail "pg_ctl start failed (data directory $datadir)"; return 1; }
  _compemb_pg_run "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$user" compemb_test \
    || { _compemb_pg_fail "createdb compemb_test failed"; return 1; }
  export COMPEMB_PG_BINDIR="$bindir"
  export COMPEMB_PG_DATADIR="$datadir"
  export COMPEMB_TEST_POSTGRES_URL="postgresql://$user@127.0.0.1:$port/compemb_test"
  echo "postgres.sh: PostgreSQL running at $COMPEMB_TEST_POSTGRES_URL (data in $datadir)" >&2
}

compemb_postgres_stop() {
  [ -n "${COMPEMB_PG_DATADIR:-}" ] && [ -d "$COMPEMB_PG_DATADIR/data" ] || return 0
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$COMPEMB_PG_BINDIR/pg_ctl" -D "$COMPEMB_PG_DATADIR/data" -m fast -w stop >/dev/null 2>&1 || true
  else
    "$COMPEMB_PG_BINDIR/pg_ctl" -D "$COMPEMB_PG_DATADIR/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$COMPEMB_PG_DATADIR"
  unset COMPEMB_PG_DATADIR COMPEMB_TEST_POSTGRES_URL
}

if compemb_postgres_start; then
  # stop the throwaway server and remove its data when the sourcing shell exits
  trap compemb_postgres_stop EXIT
else
  echo "postgres.sh: could not start a PostgreSQL server" >&2
  return 1 2>/dev/null || exit 1
fi
