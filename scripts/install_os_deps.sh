#!/usr/bin/env bash
# Installs the OS tools the test suite runs for real (Debian/Ubuntu, as root):
#   nginx                      the reverse proxy under test
#   prometheus, promtool       promtool checks prometheus/prometheus.yml
#   prometheus-nginx-exporter  turns nginx's stub_status into metrics
#   docker-compose             validates docker-compose.yml, and runs it in the end-to-end test
#   dockerd (docker.io)        the private Docker engine the end-to-end test starts (tests/container)
#   mmdebstrap                 builds the stand-in base images from Debian packages (no registry here)
#   iptables, ip (iproute2)    dockerd's networking, and the test's clean-up of what dockerd leaves;
#                              ip also makes the multi-host tests' network namespaces (tests/fleet)
#   nft (nftables)             that clean-up: deletes the nf_tables tables dockerd created through
#                              iptables-nft (no iptables command removes a table)
#   redis-server               the shared store of the global generation limit, in tests/fleet
#   chromium, chromedriver     the browser the studio's tests drive through Selenium (tests/browser)
# Idempotent: when every command is present it exits at once, without touching apt.
# Services are never started: Debian's postinst scripts would start nginx and prometheus daemons.
set -euo pipefail

# command -> Debian package that provides it
declare -A PACKAGE_OF=(
  [nginx]=nginx
  [prometheus]=prometheus
  [promtool]=prometheus
  [prometheus-nginx-exporter]=prometheus-nginx-exporter
  [docker-compose]=docker-compose
  [dockerd]=docker.io
  [mmdebstrap]=mmdebstrap
  [iptables]=iptables
  [nft]=nftables
  [ip]=iproute2
  [redis-server]=redis-server
  [chromium]=chromium
  [chromedriver]=chromium-driver
)
# The daemons a postinst could start; any that appear during the install are stopped again.
DAEMONS=(nginx prometheus prometheus-nginx-exporter dockerd containerd redis-server)

have() {  # sbin is not on every user's PATH, yet nginx lives there
  command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /usr/bin/$1 ]]
}

missing=()
for cmd in "${!PACKAGE_OF[@]}"; do
  have "$cmd" || missing+=("${PACKAGE_OF[$cmd]}")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
# Only the missing packages: an nginx installed some other way is left as it is.
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)

if [[ $EUID -ne 0 ]]; then
  echo "Missing OS packages. As root, run:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends ${packages[*]}" >&2
  echo "(or: sudo $0)" >&2
  exit 1
fi

daemon_pids() {
  local name
  # pgrep -x matches the kernel's process name, which is cut at 15 characters.
  for name in "${DAEMONS[@]}"; do pgrep -x "${name:0:15}" || true; done | sort  # lexical order, as comm wants
}
before=$(daemon_pids)

# policy-rc.d exiting 101 tells invoke-rc.d/deb-systemd-invoke not to start services. Any existing
# policy (container images ship one) is put back afterwards, exactly as it was.
POLICY=/usr/sbin/policy-rc.d
backup=""
if [[ -e $POLICY ]]; then
  backup=$(mktemp)
  cp -p "$POLICY" "$backup"
fi
restore_policy() {
  if [[ -n $backup ]]; then
    cp -p "$backup" "$POLICY" && rm -f "$backup"
  else
    rm -f "$POLICY"
  fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# scripts/install_os_deps.sh: do not start services while installing.\nexit 101\n' >"$POLICY"
chmod 755 "$POLICY"

echo "Installing: ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

# Belt and braces: stop, by process id, any daemon that was not running before the install.
for pid in $(comm -13 <(echo "$before") <(daemon_pids)); do
  echo "Stopping $(ps -o comm= -p "$pid" 2>/dev/null || echo process) $pid, started by the package install" >&2
  kill -TERM "$pid" 2>/dev/null || true
done

still_missing=()
for cmd in "${!PACKAGE_OF[@]}"; do
  have "$cmd" || still_missing+=("$cmd")
done
if ((${#still_missing[@]})); then
  echo "Still missing after the install: ${still_missing[*]}" >&2
  exit 1
fi
