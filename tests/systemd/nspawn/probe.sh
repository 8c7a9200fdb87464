#!/bin/bash
# Runs inside the booted Debian 12 test container (compass-probe.service), as root under
# the container's own systemd; .ci/systemd-test reads /results afterwards. Each check
# prints "ok - WHAT (N.Ns)" or "not ok - WHAT: why"; the last line is PASS or FAIL.
# Every wait is bounded. At the end the container powers off.
set -u
exec >>/results/probe.log 2>&1
cd /opt/compass-test
failed=0
t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
ok() { echo "ok - $1 ($(elapsed "$2")s)"; }
bad() { echo "not ok - $1"; failed=1; }
prop() { systemctl show -P "$2" "$1"; }
# wait_for SECONDS COMMAND...: run COMMAND every 0.2 s until it succeeds or time is up
wait_for() {
    local end=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.2
    done
}
active() { [ "$(systemctl is-active "$1")" = active ]; }
status_has() { prop "$1" StatusText | grep -q -- "$2"; }
restarted_since() { [ "$(prop "$1" NRestarts)" -gt "$2" ] && active "$1"; }
leftovers() {  # processes of the server's user, session directories, arenas
    pgrep -u compass-server -a || true
    find /var/lib/compass-server/demo /var/lib/private/compass-server 2>/dev/null -name 'session-*'
    find /dev/shm -user compass-server 2>/dev/null
}
journal() { echo "--- journal of $1"; journalctl -b --no-pager -o short-monotonic -u "$1" | tail -n "${2:-40}"; }

echo "probe started, uptime $(cut -d' ' -f1 /proc/uptime) s"

# 1. the tracker, enabled by its package, came up at boot and said READY
t=$(date +%s.%N)
if wait_for 30 active compass-tracker.service && status_has compass-tracker.service "[0-9] devices\?,"; then
    ok "compass-tracker.service active at boot, status: $(prop compass-tracker.service StatusText)" "$t"
else
    bad "compass-tracker.service is $(systemctl is-active compass-tracker.service)"; journal compass-tracker.service
fi

t=$(date +%s.%N)
if wait_for 30 active compass-proxy.service && status_has compass-proxy.service open; then
    ok "compass-proxy.service active at boot, status: $(prop compass-proxy.service StatusText)" "$t"
else
    bad "compass-proxy.service is $(systemctl is-active compass-proxy.service)"; journal compass-proxy.service
fi

# 1b. the packages made the credentials: the tracker runs with its tokens file, no token
#     is on any command line, and a caller without a token is refused
t=$(date +%s.%N)
modes="$(stat -c '%a %U:%G' /etc/compassd/tokens) $(stat -c '%a %U:%G' /etc/compassd/admin.token) $(stat -c '%a %U:%G' /etc/compassd/board.token)"
admin_token=$(cat /etc/compassd/admin.token)
board_token=$(grep -v '^#' /etc/compassd/board.token | head -n 1)
if [ "$modes" = "640 root:compass-tracker 600 root:root 600 root:root" ] \
        && [ -n "$admin_token" ] && [ -n "$board_token" ] \
        && [ "$(grep -c '^sha256:' /etc/compassd/tokens)" = 2 ] \
        && ps -eo args= | grep -q -- 'compass-tracker --tokens /etc/compassd/tokens'; then
    ok "install made the tokens file, the admin token and this host's board token ($modes)" "$t"
else
    bad "credentials after install: modes '$modes', tokens file: $(cat /etc/compassd/tokens)"
fi
t=$(date +%s.%N)
if COMPASS_TOKEN= python3 client.py devices >/tmp/anonymous.log 2>&1; then
    bad "an anonymous caller was served by the packaged tracker: $(cat /tmp/anonymous.log)"
elif grep -q "needs a token" /tmp/anonymous.log; then
    ok "the packaged tracker refuses a caller without a token" "$t"
else
    bad "the anonymous caller failed for another reason: $(tail -3 /tmp/anonymous.log)"
fi
# a client token, made as docs/operations.md says
t=$(date +%s.%N)
minted=$(compass token probe --roles client --json)
echo "$minted" | python3 -c 'import json, sys; print(json.load(sys.stdin)["line"])' >>/etc/compassd/tokens
COMPASS_TOKEN=$(echo "$minted" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
export COMPASS_TOKEN
systemctl reload compass-tracker.service
if wait_for 30 python3 client.py devices; then
    ok "a client token from \`compass token\` works after systemctl reload" "$t"
else
    bad "the minted client token is not accepted: $(python3 client.py devices 2>&1 | tail -2)"
fi

# 2. compass-server@demo: `systemctl start` returns once it listens and is registered
t=$(date +%s.%N)
if timeout 90 systemctl start compass-server@demo.service && active compass-server@demo.service \
        && status_has compass-server@demo.service "registered with tracker"; then
    ok "compass-server@demo active and registered, status: $(prop compass-server@demo.service StatusText)" "$t"
else
    bad "compass-server@demo is $(systemctl is-active compass-server@demo.service)"; journal compass-server@demo.service
fi
printf '%s\n' "$board_token" "$admin_token" "$COMPASS_TOKEN" >/tmp/secrets
if ps -eo args= | grep -q -F -f /tmp/secrets; then
    bad "a token is on a command line: $(ps -eo args= | grep -e twistd3 -e python3)"
else
    ok "no token on any command line (the board reads its credential board.token)" "$t"
fi
t=$(date +%s.%N)
if python3 client.py wait-online board-demo; then
    ok "the tracker lists board-demo online" "$t"
else
    bad "the tracker does not list board-demo"; python3 client.py devices
fi

# 2b. the tracker with --metrics and --http, set in tracker.conf as it documents
sed -i 's|^COMPASS_TRACKER_ARGS="\(.*\)"$|COMPASS_TRACKER_ARGS="\1 --metrics tcp:9290:interface=127.0.0.1 --http tcp:9280:interface=127.0.0.1"|' \
    /etc/compassd/tracker.conf
timeout 60 systemctl restart compass-tracker.service
t=$(date +%s.%N)
if wait_for 30 status_has compass-tracker.service "[0-9] devices\?," \
        && python3 client.py wait-online board-demo >/dev/null \
        && wait_for 10 python3 client.py dashboard http://127.0.0.1:9280/; then
    ok "the tracker restarted with --metrics and --http; its dashboard lists board-demo" "$t"
else
    bad "no dashboard listing board-demo on 127.0.0.1:9280 (tracker status: $(prop compass-tracker.service StatusText); devices: $(python3 client.py devices 2>&1 | tail -3); dashboard: $(python3 client.py dashboard http://127.0.0.1:9280/ 2>&1 | tail -3; echo "exit $?"))"
    journal compass-tracker.service
fi

# 3. a client run through the tracker and the board
t=$(date +%s.%N)
if timeout 120 python3 client.py run; then ok "a client ran a model on compass-server@demo" "$t"
else bad "the client run failed"; journal compass-server@demo.service 60; fi
t=$(date +%s.%N)
if python3 client.py metrics http://127.0.0.1:9290/metrics; then
    ok "the tracker's /metrics counted the run's grant" "$t"
else
    bad "the tracker's /metrics did not count the grant"; journal compass-tracker.service
fi

# 3b. systemctl restart of the tracker during a lease keeps the lease: its state is in
#     the unit's StateDirectory= (/var/lib/compass-tracker/tracker.sqlite); the session
#     on the board goes on, the restarted tracker lists the lease, and its holder, which
#     reconnects by itself, can still release it
rm -f /tmp/tracker-restarted
python3 client.py across-restart /tmp/tracker-restarted >/tmp/across.log 2>&1 &
holder=$!
holding() { grep -q '^holding ' /tmp/across.log; }
t=$(date +%s.%N)
if wait_for 60 holding; then
    lease=$(sed -n 's/^holding //p' /tmp/across.log)
    pid=$(prop compass-tracker.service MainPID)
    timeout 60 systemctl restart compass-tracker.service
    brought_back() {  # the journal may have the line a moment after systemctl returns
        journalctl -b --no-pager -u compass-tracker.service | grep -q "brought back [0-9]* devices, 1 leases"
    }
    if wait_for 30 status_has compass-tracker.service "[0-9] devices\?," \
            && [ "$(prop compass-tracker.service MainPID)" != "$pid" ] \
            && [ "$(stat -c %U /var/lib/compass-tracker/tracker.sqlite)" = compass-tracker ] \
            && wait_for 10 brought_back; then
        ok "systemctl restart compass-tracker with $lease active: the tracker brought it back from /var/lib/compass-tracker/tracker.sqlite" "$t"
    else
        bad "the restarted tracker did not bring $lease back: $(ls -l /var/lib/compass-tracker)"
        journal compass-tracker.service
    fi
    touch /tmp/tracker-restarted
else
    bad "the client holding a lease across the restart got none: $(cat /tmp/across.log)"
fi
t=$(date +%s.%N)
(sleep 120; kill "$holder" 2>/dev/null) & guard=$!
wait "$holder"; status=$?
kill "$guard" 2>/dev/null
if [ "$status" = 0 ]; then
    ok "across the tracker's restart the session went on and its holder released the lease: $(tr '\n' ';' </tmp/across.log)" "$t"
else
    bad "the lease across the tracker's restart (exit $status): $(cat /tmp/across.log)"
    journal compass-tracker.service; journal compass-server@demo.service
fi

# 4. systemctl stop is clean, even in the middle of a session: no processes, session
#    directories or arenas are left, and the client hears that its session ended
python3 client.py hold >/tmp/hold.log 2>&1 &
holder=$!
session_open() { find /var/lib/compass-server/demo -maxdepth 1 -name 'session-*' | grep -q .; }
wait_for 60 session_open || bad "the holding client opened no session: $(cat /tmp/hold.log)"
t=$(date +%s.%N)
timeout 60 systemctl stop compass-server@demo.service
(sleep 30; kill "$holder" 2>/dev/null) & guard=$!
wait "$holder"; kill "$guard" 2>/dev/null
grep -q "the session ended" /tmp/hold.log || bad "the client was not told: $(cat /tmp/hold.log)"
result=$(prop compass-server@demo.service Result)
left=$(leftovers)
if [ "$result" = success ] && [ -z "$left" ]; then ok "systemctl stop of compass-server@demo mid-session is clean; the client was told" "$t"
else bad "stop: result $result, left behind: $left"; journal compass-server@demo.service; fi

# 5. SIGKILL of the server: systemd restarts it and it registers again
timeout 90 systemctl start compass-server@demo.service
wait_for 30 status_has compass-server@demo.service "registered with tracker"
t=$(date +%s.%N)
before=$(prop compass-server@demo.service NRestarts)
pid=$(prop compass-server@demo.service MainPID)
kill -KILL "$pid"
if wait_for 60 restarted_since compass-server@demo.service "$before" \
        && wait_for 30 status_has compass-server@demo.service "registered with tracker" \
        && [ "$(prop compass-server@demo.service MainPID)" != "$pid" ] \
        && python3 client.py wait-online board-demo >/dev/null; then
    ok "SIGKILLed compass-server@demo (pid $pid) restarted and re-registered" "$t"
else
    bad "after SIGKILL: $(systemctl is-active compass-server@demo.service), NRestarts $(prop compass-server@demo.service NRestarts)"
    journal compass-server@demo.service
fi

# 6. a hung tracker (the test-only switch) is restarted by the watchdog
mkdir -p /run/systemd/system/compass-tracker.service.d
cat > /run/systemd/system/compass-tracker.service.d/hang.conf <<'CONF'
[Service]
Environment=COMPASS_TEST_HANG_AFTER=2
WatchdogSec=3
CONF
systemctl daemon-reload
timeout 60 systemctl restart compass-tracker.service
t=$(date +%s.%N)
before=$(prop compass-tracker.service NRestarts)
if wait_for 30 restarted_since compass-tracker.service "$before" \
        && journalctl -b --no-pager -u compass-tracker.service | grep -q "Watchdog timeout"; then
    ok "the hung tracker was killed by the watchdog and restarted" "$t"
else
    bad "no watchdog restart: NRestarts $(prop compass-tracker.service NRestarts), result $(prop compass-tracker.service Result)"
    journal compass-tracker.service
fi
rm -r /run/systemd/system/compass-tracker.service.d
systemctl daemon-reload
timeout 60 systemctl restart compass-tracker.service
t=$(date +%s.%N)
if wait_for 30 status_has compass-tracker.service "[0-9] devices\?," \
        && python3 client.py wait-online board-demo >/dev/null; then
    ok "after the tracker's restart compass-server@demo registered again" "$t"
else
    bad "compass-server@demo did not come back to the restarted tracker (tracker status: $(prop compass-tracker.service StatusText); devices: $(python3 client.py devices 2>&1 | tail -3))"
    journal compass-server@demo.service; journal compass-tracker.service
fi

# 7. upgrade: reinstalling the packages restarts the running server instance
pid=$(prop compass-server@demo.service MainPID)
t=$(date +%s.%N)
if DEBIAN_FRONTEND=noninteractive timeout 120 dpkg -i --force-confold /debs/*.deb \
        >/tmp/reinstall.log 2>&1 \
        && wait_for 60 status_has compass-server@demo.service "registered with tracker" \
        && [ "$(prop compass-server@demo.service MainPID)" != "$pid" ]; then
    ok "reinstalling the packages restarted the running compass-server@demo" "$t"
else
    bad "after reinstall: pid $pid -> $(prop compass-server@demo.service MainPID)"; tail -20 /tmp/reinstall.log
fi

# 8. socket activation: the tracker starts on its first connection
timeout 60 systemctl stop compass-tracker.service
systemctl start compass-tracker.socket
t=$(date +%s.%N)
if ! active compass-tracker.service && python3 client.py devices >/dev/null \
        && wait_for 30 active compass-tracker.service \
        && journalctl -b --no-pager -u compass-tracker.service | grep -q "listening on"; then
    ok "compass-tracker.socket started the tracker on the first connection" "$t"
else
    bad "socket activation: service $(systemctl is-active compass-tracker.service), socket $(systemctl is-active compass-tracker.socket)"
    journal compass-tracker.service
fi
t=$(date +%s.%N)
if wait_for 60 status_has compass-server@demo.service "registered with tracker" \
        && timeout 120 python3 client.py run >/dev/null; then
    ok "a client ran a model through the socket-activated tracker" "$t"
else
    bad "no run through the socket-activated tracker"; journal compass-server@demo.service
fi

# 9. everything stops cleanly
t=$(date +%s.%N)
timeout 60 systemctl stop compass-server@demo.service compass-tracker.socket compass-tracker.service
left=$(leftovers; pgrep -u compass-tracker -a || true)
if [ -z "$left" ] && [ "$(prop compass-server@demo.service Result)" = success ]; then
    ok "all stopped, nothing left behind" "$t"
else
    bad "left behind: $left"
fi

# 10. purge removes the services, configuration, state and enable links
t=$(date +%s.%N)
timeout 60 systemctl enable compass-server@demo.service 2>/dev/null
if DEBIAN_FRONTEND=noninteractive timeout 120 apt-get purge -y -q \
        compass-server compass-tracker compass-proxy >/tmp/purge.log 2>&1; then
    left=$(ls /etc/compassd/*.conf /etc/compassd/tokens /etc/compassd/*.token \
               /var/lib/compass-* /lib/systemd/system/compass-* \
               /etc/systemd/system/*/compass-* 2>/dev/null | grep -v -e server-demo.conf -e compass-probe)
    if [ -z "$left" ] && ! pgrep -u compass-server >/dev/null; then
        ok "apt purge removed units, configuration, state and enable links" "$t"
    else
        bad "after purge: $left"
    fi
else
    bad "apt purge failed"; tail -20 /tmp/purge.log
fi

failed_units=$(systemctl list-units --failed --plain --no-legend)
[ -n "$failed_units" ] && echo "# failed units: $failed_units"
echo "probe took $(elapsed "$t0") s"
if [ "$failed" = 0 ]; then echo PASS; else echo FAIL; fi
systemctl --no-block poweroff
