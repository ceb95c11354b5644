#!/usr/bin/env bash
# Runs PostgreSQL 16 with pgvector (the binaries deploy/setup.sh took from PyPI pgserver's wheel)
# on loopback, for the demo and by hand; the tests run the same server from their own harness.
#   deploy/postgres.sh start DIR PORT PASSWORD_FILE   initdb into DIR/data once (user postgres, its
#                                                     password from PASSWORD_FILE, password
#                                                     authentication over TCP), then serve on
#                                                     127.0.0.1:PORT; returns once it accepts
#   deploy/postgres.sh stop DIR                       stop the server started with that directory
#   deploy/postgres.sh psql DIR PORT PASSWORD_FILE SQL   run SQL as postgres, rows unaligned
# PostgreSQL refuses to run as root: as root, the server runs as the system user embedstream-pg
# (made if missing) from a copy of the binaries in DIR that this user can read.
# No local user reaches the superuser without its password: the Unix socket asks for it too, and
# only the server's own user may open the socket (unix_socket_permissions 0700). psql reads the
# password from a private password file, never from its environment.
set -euo pipefail
CACHE="${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}"
INSTALLED="$CACHE/postgres/pgserver/pginstall/bin"
USER_AS_ROOT=embedstream-pg

# The comment above, without its marks: what --help prints (on stdout, exit 0) and a wrong call
# (on stderr, exit 2).
help_text() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
usage() { help_text >&2; exit 2; }
case "${1:-}" in -h | --help | help) help_text; exit 0 ;; esac
[ $# -ge 2 ] || usage
cmd=$1 dir=$2

# The server's binaries, and how to run them as the server's user.
as=()
bin=$INSTALLED
if [ "$(id -u)" = 0 ]; then
  as=(runuser -u "$USER_AS_ROOT" --)
  bin="$dir/pg/pgserver/pginstall/bin"
fi

case $cmd in
  start)
    [ $# -eq 4 ] || usage
    port=$3 password_file=$4
    [ -x "$INSTALLED/postgres" ] || { echo "postgres.sh: no PostgreSQL in $CACHE/postgres: run deploy/setup.sh" >&2; exit 1; }
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
      id -u "$USER_AS_ROOT" >/dev/null 2>&1 ||
        useradd --system --no-create-home --shell /usr/sbin/nologin "$USER_AS_ROOT"
      [ -d "$dir/pg" ] || cp -a "$CACHE/postgres" "$dir/pg"
      chown -R "$USER_AS_ROOT:" "$dir"
      runuser -u "$USER_AS_ROOT" -- test -x "$dir/pg" || {
        echo "postgres.sh: $USER_AS_ROOT cannot reach $dir: every folder above it must let others through (chmod o+x)" >&2
        exit 1
      }
    fi
    if [ ! -d "$dir/data" ]; then
      # initdb reads the password from a file its user can read, removed right after.
      install -m 600 "$password_file" "$dir/pwfile"
      if [ "$(id -u)" = 0 ]; then chown "$USER_AS_ROOT:" "$dir/pwfile"; fi
      "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
        --pwfile="$dir/pwfile" >"$dir/initdb.log" 2>&1 || { rm -f "$dir/pwfile"; cat "$dir/initdb.log" >&2; exit 1; }
      rm -f "$dir/pwfile"
    fi
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c unix_socket_permissions=0700" start >/dev/null
    echo "postgres.sh: PostgreSQL with pgvector on 127.0.0.1:$port (data in $dir/data, log $dir/log)" >&2
    ;;
  stop)
    [ -d "$dir/data" ] || exit 0
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    ;;
  psql)
    [ $# -ge 5 ] || usage
    port=$3 password_file=$4
    shift 4
    passfile=$(mktemp)
    trap 'rm -f "$passfile"' EXIT
    chmod 600 "$passfile"
    printf '127.0.0.1:%s:postgres:postgres:%s\n' "$port" "$(sed 's/[:\\]/\\&/g' "$password_file")" >"$passfile"
    PGPASSFILE=$passfile "$INSTALLED/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres \
      -v ON_ERROR_STOP=1 -X -q -A -t -c "$*"
    ;;
  *) usage ;;
esac
