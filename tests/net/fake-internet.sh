# The fake internet for tests and benchmarks of sandbox networks, in the
# nested host only (it has no NIC, so nothing here can reach a real one):
# a namespace "kinet" joined to the host by the veth kvh/kvi, at
# documentation addresses (203.0.113.0/24), with dnsmasq at .53 and HTTP,
# HTTPS (a test CA's certificate), TCP echo and UDP sink servers
# (tests/integration/egress-server.py) answering on .10 to .14:
#   allowed.test .10, blocked.test .11, a.wild.test .12, wild.test.evil .13, wild.test .14
# fi_up DIR builds it (the CA in DIR/ca.crt, logs in DIR); fi_down DIR removes it.
# shellcheck shell=bash

fi_dir=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")

fi_up() {
	local eg=$1
	ip netns add kinet || return 1
	ip link add kvh type veth peer name kvi || return 1
	ip link set kvi netns kinet
	ip addr add 203.0.113.1/24 dev kvh
	ip link set kvh up
	ip -n kinet link set lo up
	ip -n kinet addr add 203.0.113.53/24 dev kvi
	for a in 10 11 12 13 14; do ip -n kinet addr add 203.0.113.$a/32 dev kvi; done
	ip -n kinet link set kvi up
	ip -n kinet route add default dev kvi
	# A test CA, and one certificate for every name the servers answer as.
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=kiln-test-ca -keyout "$eg/ca.key" \
		-out "$eg/ca.crt" >/dev/null 2>&1 || return 1
	openssl req -newkey rsa:2048 -nodes -subj /CN=allowed.test -keyout "$eg/srv.key" -out "$eg/srv.csr" \
		>/dev/null 2>&1 || return 1
	printf 'subjectAltName=DNS:allowed.test,DNS:blocked.test,DNS:a.wild.test,DNS:wild.test,DNS:wild.test.evil,DNS:secret.test\n' \
		>"$eg/san.ext"
	openssl x509 -req -in "$eg/srv.csr" -CA "$eg/ca.crt" -CAkey "$eg/ca.key" -CAcreateserial -days 2 \
		-extfile "$eg/san.ext" -out "$eg/srv.crt" >/dev/null 2>&1 || return 1
	ip netns exec kinet dnsmasq --no-resolv --no-hosts --bind-interfaces --listen-address=203.0.113.53 \
		--except-interface=lo --pid-file="$eg/dnsmasq.pid" --user=root --group=root \
		--log-queries --log-facility="$eg/dnsmasq.log" --address=/#/ \
		--address=/allowed.test/203.0.113.10 --address=/blocked.test/203.0.113.11 \
		--address=/a.wild.test/203.0.113.12 --address=/wild.test.evil/203.0.113.13 \
		--address=/wild.test/203.0.113.14 --address=/secret.test/203.0.113.10 || return 1
	ip netns exec kinet python3 "$fi_dir/../integration/egress-server.py" "$eg/srv.crt" "$eg/srv.key" "$eg/udp.log" \
		>"$eg/server.log" 2>&1 &
	echo $! >"$eg/server.pid"
	for _ in $(seq 100); do grep -q ready "$eg/server.log" && return 0; sleep 0.1; done
	echo "the test servers did not start: $(cat "$eg/server.log")"
	return 1
}
fi_down() {
	local eg=$1
	[ -f "$eg/server.pid" ] && kill "$(cat "$eg/server.pid")" 2>/dev/null
	[ -f "$eg/dnsmasq.pid" ] && kill "$(cat "$eg/dnsmasq.pid")" 2>/dev/null
	ip link del kvh 2>/dev/null
	ip netns del kinet 2>/dev/null
}

