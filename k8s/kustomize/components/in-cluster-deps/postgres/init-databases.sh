#!/usr/bin/env bash
# First-start initialisation of the development PostgreSQL (run once by the
# official image's entrypoint from /docker-entrypoint-initdb.d, as the
# superuser, on an empty data directory). Creates one role and one database
# each: auth (auth-svc's users), notify (notify-svc's sent-log) and media (job
# state, shared by gateway-svc and converter-svc). Each service migrates its
# own schema at start.
#
# Passwords come from AUTH_DB_PASSWORD / NOTIFY_DB_PASSWORD / MEDIA_DB_PASSWORD,
# or from the files named by AUTH_DB_PASSWORD_FILE / NOTIFY_DB_PASSWORD_FILE /
# MEDIA_DB_PASSWORD_FILE (Kubernetes Secrets mounted as files). Used by
# docker-compose.yml and the in-cluster-deps component.
set -euo pipefail

secret() { # secret NAME: $NAME, else the content of the file $NAME_FILE
  local name=$1 file_var="${1}_FILE"
  if [[ -n ${!name:-} ]]; then
    printf '%s' "${!name}"
  elif [[ -n ${!file_var:-} ]]; then
    cat "${!file_var}"
  else
    echo "init-databases: set $name or $file_var" >&2
    exit 1
  fi
}

auth_pw=$(secret AUTH_DB_PASSWORD)
notify_pw=$(secret NOTIFY_DB_PASSWORD)
media_pw=$(secret MEDIA_DB_PASSWORD)

# psql's :'var' quoting keeps the passwords out of the SQL text's syntax.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
  -v auth_pw="$auth_pw" -v notify_pw="$notify_pw" -v media_pw="$media_pw" <<'SQL'
CREATE ROLE auth LOGIN PASSWORD :'auth_pw';
CREATE DATABASE auth OWNER auth;
REVOKE ALL ON DATABASE auth FROM PUBLIC;
CREATE ROLE notify LOGIN PASSWORD :'notify_pw';
CREATE DATABASE notify OWNER notify;
REVOKE ALL ON DATABASE notify FROM PUBLIC;
CREATE ROLE media LOGIN PASSWORD :'media_pw';
CREATE DATABASE media OWNER media;
REVOKE ALL ON DATABASE media FROM PUBLIC;
SQL
