#!/usr/bin/env bash
# Debian's ClickHouse server (18.16) for the integration tests.
#   install          install the package if it is missing (apt; root or sudo)
#   start DIR PORT [SECURE_PORT CERT KEY]
#                    run a private server with its data in DIR on 127.0.0.1:PORT (native protocol), and with
#                    TLS on SECURE_PORT (certificate and key files, PEM) when given; DIR/config.d/*.xml, if
#                    present, is merged into its config (the cluster tests put a remote_servers cluster there)
set -euo pipefail

cmd=${1:-install}
SERVER=/usr/sbin/clickhouse-server

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

case "$cmd" in
  install)
    if [ ! -x "$SERVER" ]; then
      as_root apt-get update -qq
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq clickhouse-server >/dev/null
    fi
    # The package's own service is not used: tests start private servers.
    ;;
  start)
    dir=$2; port=$3
    tls=""
    if [ $# -ge 6 ]; then
      tls="<tcp_port_secure>$4</tcp_port_secure>
  <openSSL><server><certificateFile>$5</certificateFile><privateKeyFile>$6</privateKeyFile><verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile><disableProtocols>sslv2,sslv3</disableProtocols></server></openSSL>"
    fi
    mkdir -p "$dir"/{data,tmp,user_files,format_schemas}
    cat > "$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$dir/server.log</log><errorlog>$dir/error.log</errorlog><console>0</console></logger>
  <tcp_port>$port</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <timezone>UTC</timezone>
  $tls
</yandex>
XML
    cat > "$dir/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
    exec "$SERVER" --config-file="$dir/config.xml"
    ;;
  *)
    echo "usage: $0 install | start DIR PORT" >&2; exit 2;;
esac
