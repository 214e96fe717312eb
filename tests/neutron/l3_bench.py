#!/usr/bin/env python3
"""How long Neutron's own legacy L3 agent takes to build routers.

Runs neutron 29.0.0's L3 agent code (neutron.agent.l3.agent.L3NATAgent and
the LegacyRouter / RouterInfo classes it creates) on router dicts fed
directly, no neutron-server, in real network namespaces on this machine,
and measures the wall and CPU time of:

* full sync: N routers, each with a gateway port on one external network,
  one internal port on its own network and M floating IPs to fixed IPs on
  that network, none of them built yet (the agent's first full sync);
* adding one floating IP to an existing router (the router's dict gets one
  more floating IP, the agent is told `routers_updated`), several times.

Prints one JSON line of figures on stdout.

Which Neutron code runs, and why this path
------------------------------------------
neutron-l3-agent's work on a router dict is: `fetch_and_sync_all_routers`
(full sync) or `routers_updated` (a notification) puts a ResourceUpdate on
the agent's ResourceProcessingQueue; `_process_routers_loop` feeds the
queue to a pool of ROUTER_PROCESS_THREADS (32) worker threads running
`_process_update` -> `_process_router_update` (fetches the router dict
with `plugin_rpc.get_routers` when the update has none) ->
`_process_routers_if_compatible` -> `_process_router_if_compatible` ->
`_process_added_router` (`_router_added`: LegacyRouter.__init__ and
initialize(), which creates qrouter-<id> and sets its sysctls; then
RouterInfo.process()) or `_process_updated_router` (RouterInfo.process()).
This script builds a real L3NATAgent with the agent's configuration
options and drives exactly those methods, in the agent's own thread pool
and queue, so the measured work is what neutron-l3-agent does: namespaces,
sysctls, veth devices, addresses, routes, iptables-save/iptables-restore
per router (IptablesManager), gratuitous ARP (arping threads, through
privsep), floating IP status reports (to a stub here).

What is NOT the real agent here (so the figures favour Neutron):
* init_host() is not called, because it talks to neutron-server; the
  attributes it sets are set here the same way (process monitor, interface
  driver, extension manager with no extensions, namespace manager, pool,
  queue), and `plugin_rpc` is an in-process stub: get_routers returns deep
  copies of the dicts (no RabbitMQ, no server-side DB work) and
  update_floatingip_statuses just records the statuses.
* The metadata proxy is off (enable_metadata_proxy = false): the real
  agent would also spawn one haproxy per router.
* Commands run as root directly (AGENT.root_helper empty), not through
  sudo + neutron-rootwrap (or the rootwrap daemon); privsep runs as the
  agent's usual privsep-helper daemons.
* No L2 agent. The interface driver is BenchBridgeInterfaceDriver below:
  the Linux bridge interface driver was removed from Neutron in 2025.1 and
  OVSInterfaceDriver needs the openvswitch kernel module, which this
  machine lacks. It does what the old bridge driver did -- a veth pair,
  tap<port id[:11]> outside and qr-/qg-<port id[:11]> in the router's
  namespace with the port's MAC, MTU, both up -- and also enslaves the tap
  to the network's bridge brq<network id[:11]> (the old L2 agent's job),
  with one netlink call.

Isolation and cleanup
---------------------
The script (the "outer" process) creates a private network namespace
xnb-<marker> and runs itself again (the "inner" process, the agent) in it:
setns(2) of the network namespace only, so the bridges and taps live there,
never in the root namespace, while the qrouter-* namespaces Neutron creates
are bind-mounted in the host's /run/netns as a real agent's are. Router ids
start with <marker> (8 random hex digits, starting with "b0"), so Neutron's
namespaces are qrouter-<marker>-...; nothing else is touched (the agent's
stale-namespace cleanup, which would delete every other qrouter-* on the
host, is not run). Whatever happens (error, timeout, Ctrl-C, SIGTERM), the
outer process kills the inner process group and every process in those
namespaces (privsep daemons, arping), deletes qrouter-<marker>-* and
xnb-<marker> and the state directory /tmp/xnb-<marker>. If the outer
process itself was killed with SIGKILL, run `l3_bench.py --cleanup MARKER`.

What is measured
----------------
CPU time is that of the agent process (all threads), of the commands it
ran itself (reaped children) and of its privsep daemons with the commands
they ran (in Neutron 29 nearly everything goes through privsep.default:
addresses, iptables-save/iptables-restore, sysctl, arping), measured as
deltas around each step. Kernel work done outside those processes
(softirq, kworkers, namespace teardown) is not counted.

The full sync's `wall_s` ends when the last router's processing has
returned (what the agent logs as "Finished a router update"); the
gratuitous ARPs it started go on after that: `garp_settled_wall_s` is when
the last of them has finished, and the `cpu_s` figures are taken then
(`cpu_s_at_built` at `wall_s`).

Gratuitous ARP dominates. For every address it adds (each floating IP,
each gateway and internal port address) a legacy router starts a thread
that runs `arping -U` and `arping -A` (each one about 1 s: it waits for
replies) three times, 2 s apart, each through the privsep.default daemon,
whose thread pool ([privsep] thread_pool_size) defaults to the number of
CPUs. The router's own privileged calls (one per floating IP address) queue
behind those arpings in the same pool, so the figures depend heavily on
that pool size: --privsep-threads sets it (the JSON says which was used).
--no-garp skips the gratuitous ARPs altogether -- not what Neutron does --
to give a lower bound of the rest of its work.

Measured here (2026-11-29)
--------------------------
2-core AMD EPYC VM, kernel 6.18, iptables 1.8.9 (nf_tables), Python
3.11.7, neutron 29.0.0; other jobs shared the machine (load average noted).
Wall times; CPU is agent + privsep daemons + their commands.

* 10 x 10, privsep pool 128, with GARP (load ~1.5): full sync 11.8 s
  (19.0 CPU-s), its GARPs done at 21.9 s; one floating IP added to a
  router with 10: 0.22 s median of 5 (0.17 CPU-s), GARPs done ~10.3 s.
* 10 x 10, privsep pool 2 (the default here), with GARP (load ~1.5):
  full sync 364 s (18.8 CPU-s: it waits on arping); one floating IP added:
  0.21 s.
* 100 x 100, privsep pool 128, with GARP (load 9-24 from other jobs):
  full sync 803 s (1,110 CPU-s), 10,000 floating IPs reported ACTIVE,
  GARPs done at 813 s; one floating IP added to a router with 100: 0.26 s
  median of 5 (0.25 CPU-s).
* 100 x 100, privsep pool 2, --no-garp (lower bound, load ~4): full sync
  362 s (466 CPU-s); one floating IP added: 0.22 s (0.17 CPU-s).
* 100 x 100, privsep pool 2, with GARP: not run; extrapolated from the
  10 x 10 run (about 6 s of arping per address through 2 threads), about
  10,200 addresses x 3 s = 8.5 hours.

Install and run (as root)
-------------------------
    scripts/setup.sh    # the venv /opt/xrouter-venv, with Neutron
    /opt/xrouter-venv/bin/python tests/neutron/l3_bench.py \\
        --routers 10 --fips 10

or tests/neutron/l3_bench.sh [ARGS].
Needs: iproute2, iptables, arping (iputils-arping), conntrack.
"""

import argparse
import copy
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid

NETNS_DIR = "/run/netns"
STATE_ROOT = "/tmp"


# --------------------------------------------------------------------------
# Outer process: private namespace, bounded run of the inner one, cleanup.
# --------------------------------------------------------------------------


def run(cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def our_namespaces(marker):
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(
        n for n in names
        if n.startswith("qrouter-" + marker) or n == "xnb-" + marker)


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cleanup(marker, pgid=None):
    """Kill our processes, delete our namespaces and state directory."""
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(3):
        names = our_namespaces(marker)
        for name in names:
            out = run(["ip", "netns", "pids", name], check=False).stdout
            kill_pids(int(p) for p in out.split() if p.isdigit())
        # qrouter namespaces first: their veth ends die with them.
        for name in sorted(names, key=lambda n: n.startswith("xnb-")):
            run(["ip", "netns", "delete", name], check=False)
        if not our_namespaces(marker):
            break
        time.sleep(1)
    shutil.rmtree(os.path.join(STATE_ROOT, "xnb-" + marker),
                  ignore_errors=True)
    left = our_namespaces(marker)
    if left:
        print("l3_bench: could not delete namespaces: %s" % left,
              file=sys.stderr)
    return not left


def outer(args):
    if os.geteuid() != 0:
        sys.exit("l3_bench: run as root")
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    marker = "b0" + secrets.token_hex(3)
    nsname = "xnb-" + marker
    state = os.path.join(STATE_ROOT, nsname)
    pgid = None
    rc = 1
    try:
        os.makedirs(state, mode=0o700)
        run(["ip", "netns", "add", nsname])
        run(["ip", "-n", nsname, "link", "set", "lo", "up"])
        cmd = [sys.executable, os.path.abspath(__file__), "--inner",
               "--netns", nsname, "--marker", marker,
               "--state", state, "--routers", str(args.routers),
               "--fips", str(args.fips), "--adds", str(args.adds),
               "--timeout", str(args.timeout),
               "--privsep-threads", str(args.privsep_threads)] + (
                   ["--debug"] if args.debug else []) + (
                   ["--no-garp"] if args.no_garp else [])
        env = dict(os.environ)
        env["PATH"] = (os.path.dirname(sys.executable) + ":" +
                       env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
        print("l3_bench: marker %s, %d routers x %d floating IPs"
              % (marker, args.routers, args.fips), file=sys.stderr)
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        pgid = proc.pid
        try:
            rc = proc.wait(timeout=args.timeout + 60)
        except subprocess.TimeoutExpired:
            print("l3_bench: timed out after %d s" % (args.timeout + 60),
                  file=sys.stderr)
            rc = 124
        if rc != 0 and os.path.exists(os.path.join(state, "l3-agent.log")):
            with open(os.path.join(state, "l3-agent.log")) as f:
                tail = f.readlines()[-40:]
            print("l3_bench: agent log tail:\n" + "".join(tail),
                  file=sys.stderr)
    except KeyboardInterrupt:
        rc = 130
    finally:
        if args.log and os.path.exists(os.path.join(state, "l3-agent.log")):
            shutil.copy(os.path.join(state, "l3-agent.log"), args.log)
        cleaned = cleanup(marker, pgid)
    if not cleaned and rc == 0:
        rc = 1
    sys.exit(rc)


# --------------------------------------------------------------------------
# Inner process: Neutron's L3 agent, inside xnb-<marker>.
# --------------------------------------------------------------------------

def _inner_imports():
    """Neutron imports, only in the inner process (the venv has them)."""
    global cfg, oslo_log, interface, ip_lib, l3_agent_main
    global l3_agent, external_process, common_utils, neutron_utils
    global resource_queue, pyroute2, namespace_manager
    import warnings
    warnings.filterwarnings("ignore", module="futurist")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from oslo_config import cfg
    from oslo_log import log as oslo_log
    import pyroute2
    from neutron.agent.common import resource_processing_queue \
        as resource_queue
    from neutron.agent.common import utils as common_utils
    from neutron.agent.l3 import agent as l3_agent
    from neutron.agent.l3 import namespace_manager
    from neutron.agent import l3_agent as l3_agent_main
    from neutron.agent.linux import external_process
    from neutron.agent.linux import interface
    from neutron.agent.linux import ip_lib
    from neutron.common import utils as neutron_utils


def _make_driver_class():
    class BenchBridgeInterfaceDriver(interface.LinuxInterfaceDriver):
        """veth pair, host end tap<port[:11]> in bridge brq<net[:11]>."""

        DEV_NAME_PREFIX = "ns-"

        def __init__(self, conf, **kwargs):
            super().__init__(conf, **kwargs)
            self._ipr = pyroute2.IPRoute()
            self._ipr_lock = threading.Lock()

        def _tap_name(self, device_name, prefix):
            return "tap" + device_name[len(prefix or self.DEV_NAME_PREFIX):]

        def plug_new(self, network_id, port_id, device_name, mac_address,
                     bridge=None, namespace=None, prefix=None, mtu=None):
            tap = self._tap_name(device_name, prefix)
            host_dev, ns_dev = ip_lib.IPWrapper().add_veth(
                tap, device_name, namespace2=namespace)
            host_dev.disable_ipv6()
            ns_dev.link.set_address(mac_address)
            if mtu:
                self.set_mtu(device_name, mtu, namespace=namespace,
                             prefix=prefix)
            bridge = bridge or "brq" + network_id[:11]
            with self._ipr_lock:
                br = self._ipr.link_lookup(ifname=bridge)
                dev = self._ipr.link_lookup(ifname=tap)
                self._ipr.link("set", index=dev[0], master=br[0])
            host_dev.link.set_up()
            ns_dev.link.set_up()

        def unplug(self, device_name, bridge=None, namespace=None,
                   prefix=None):
            ip_lib.IPDevice(device_name, namespace=namespace).link.delete()

        def set_mtu(self, device_name, mtu, namespace=None, prefix=None):
            tap = self._tap_name(device_name, prefix)
            ip_lib.IPDevice(tap).link.set_mtu(mtu)
            ip_lib.IPDevice(device_name,
                            namespace=namespace).link.set_mtu(mtu)

    return BenchBridgeInterfaceDriver


class StubServer:
    """What the agent asks neutron-server, answered from router dicts."""

    def __init__(self):
        self.routers = {}
        self.statuses = {}
        self.lock = threading.Lock()

    def get_router_ids(self, context):
        with self.lock:
            return list(self.routers)

    def get_routers(self, context, router_ids=None):
        with self.lock:
            ids = list(self.routers) if router_ids is None else router_ids
            return [copy.deepcopy(self.routers[r]) for r in ids
                    if r in self.routers]

    def update_floatingip_statuses(self, context, router_id, fip_statuses):
        with self.lock:
            self.statuses.setdefault(router_id, {}).update(fip_statuses)

    def get_networks(self, context, filters=None, fields=None):
        return []

    def get_host_ha_router_count(self, context):
        return 0

    def get_service_plugin_list(self, context):
        return []


class NoopNamespaceManager:
    """fetch_and_sync_all_routers' ns_manager, without the stale-namespace
    cleanup (Neutron's would delete every other qrouter-* on the host)."""

    def keep_router(self, router_id):
        pass

    def keep_ext_net(self, ext_net_id):
        pass

    def ensure_snat_cleanup(self, router_id):
        pass


EXT_NET = "100.64.0.0/10"     # external network: gateways and floating IPs
EXT_GW = "100.64.0.1"
MTU = 1500


def ip_at(cidr_base, offset):
    import netaddr
    return str(netaddr.IPAddress(int(netaddr.IPAddress(cidr_base)) + offset))


def make_port(network_id, subnet_id, cidr, gateway_ip, ip, prefixlen):
    return {
        "id": str(uuid.uuid4()),
        "network_id": network_id,
        "mac_address": "fa:16:3e:%02x:%02x:%02x" % tuple(
            secrets.token_bytes(3)),
        "admin_state_up": True,
        "device_owner": "network:router_interface",
        "fixed_ips": [{"ip_address": ip, "prefixlen": prefixlen,
                       "subnet_id": subnet_id}],
        "subnets": [{"id": subnet_id, "cidr": cidr,
                     "gateway_ip": gateway_ip, "dns_nameservers": [],
                     "host_routes": [], "ipv6_ra_mode": None,
                     "ipv6_address_mode": None}],
        "extra_subnets": [],
        "address_scopes": {"4": None, "6": None},
        "mtu": MTU,
    }


class Topology:
    """Router dicts as neutron-server's sync_routers would send them."""

    def __init__(self, marker, n_routers, n_fips):
        self.marker = marker
        self.ext_net = str(uuid.uuid4())
        self.ext_subnet = str(uuid.uuid4())
        self.networks = [self.ext_net]
        self.routers = []
        self.next_fip = {}
        self.n_fips = n_fips
        for r in range(n_routers):
            self.routers.append(self.router(r, n_fips))

    def router_id(self, r):
        return "%s-%04x-4000-8000-%s" % (self.marker, r & 0xffff,
                                         secrets.token_hex(6))

    def internal_cidr(self, r):
        # 10.0.0.0/8 in /20s: router r gets 10.0.0.0 + r * 4096.
        return ip_at("10.0.0.0", r * 4096) + "/20"

    def fip(self, router, r, j):
        base = self.internal_cidr(r).split("/")[0]
        return {
            "id": str(uuid.uuid4()),
            "floating_ip_address": ip_at("100.64.0.0", 65536 + r * 2048 + j),
            "fixed_ip_address": ip_at(base, 16 + j),
            "fixed_ip_address_scope": None,
            "floating_network_id": self.ext_net,
            "port_id": str(uuid.uuid4()),
            "router_id": router["id"],
            "status": "DOWN",
            "project_id": router["project_id"],
            "tenant_id": router["project_id"],
            "host": None,
            "dns_domain": "", "dns_name": "", "qos_policy_id": None,
            "description": "", "tags": [], "revision_number": 0,
        }

    def router(self, r, n_fips):
        # Floating IPs: 100.64.1.0 + r * 2048 + j, inside 100.64.0.0/10.
        assert n_fips < 2000 and r < 2000
        rid = self.router_id(r)
        net = str(uuid.uuid4())
        self.networks.append(net)
        cidr = self.internal_cidr(r)
        base = cidr.split("/")[0]
        project = secrets.token_hex(16)
        gw = make_port(self.ext_net, self.ext_subnet, EXT_NET, EXT_GW,
                       ip_at("100.64.0.0", 2 + r), 10)
        gw["device_owner"] = "network:router_gateway"
        qr = make_port(net, str(uuid.uuid4()), cidr, ip_at(base, 1),
                       ip_at(base, 1), 20)
        router = {
            "id": rid, "name": "bench-%d" % r, "admin_state_up": True,
            "status": "ACTIVE", "project_id": project, "tenant_id": project,
            "distributed": False, "ha": False, "enable_snat": True,
            "flavor_id": None, "routes": [], "gw_port_host": None,
            "external_gateway_info": {
                "network_id": self.ext_net, "enable_snat": True,
                "external_fixed_ips": [{"subnet_id": self.ext_subnet,
                                        "ip_address":
                                            gw["fixed_ips"][0]["ip_address"]}
                                       ]},
            "gw_port": gw, "gw_port_id": gw["id"],
            "_interfaces": [qr],
        }
        router["_floatingips"] = [self.fip(router, r, j)
                                  for j in range(n_fips)]
        self.next_fip[rid] = (r, n_fips)
        return router

    def add_fip(self, router):
        r, j = self.next_fip[router["id"]]
        router["_floatingips"].append(self.fip(router, r, j))
        self.next_fip[router["id"]] = (r, j + 1)
        return router["_floatingips"][-1]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def privsep_pids(state):
    """The agent's privsep daemons (they detach from the agent)."""
    conf = os.path.join(state, "l3_agent.ini").encode()
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"privsep-helper" in a for a in cmdline) and conf in cmdline:
            pids.append(pid)
    return pids


def cpu_snapshot(state):
    t = os.times()
    priv = 0.0
    for pid in privsep_pids(state):
        try:
            with open("/proc/%s/stat" % pid) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # utime stime cutime cstime: fields 14-17 of stat, 12-15 here.
        priv += sum(int(x) for x in fields[11:15]) / CLK_TCK
    return {"agent_process": t.user + t.system,
            "children": t.children_user + t.children_system,
            "privsep": priv}


def cpu_delta(a, b):
    d = {k: round(b[k] - a[k], 3) for k in a}
    d["total"] = round(sum(d.values()), 3)
    return d


def arping_threads():
    return sum(1 for t in threading.enumerate()
               if t.name.endswith("(arping)"))


def wait_garp(deadline):
    while arping_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    return arping_threads() == 0


class Tracker:
    """Records each _process_routers_if_compatible the workers finish."""

    def __init__(self, agent):
        self.cond = threading.Condition()
        self.done = {}      # router id -> number of successful passes
        self.failed = 0
        orig = agent._process_routers_if_compatible

        def tracked(routers, update):
            ok = orig(routers, update)
            with self.cond:
                if ok:
                    self.done[update.id] = self.done.get(update.id, 0) + 1
                else:
                    self.failed += 1
                self.cond.notify_all()
            return ok
        agent._process_routers_if_compatible = tracked

    def count(self, rid):
        with self.cond:
            return self.done.get(rid, 0)

    def wait(self, pred, deadline):
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1.0))
            return True


def write_conf(state, marker, debug, privsep_threads):
    path = os.path.join(state, "l3_agent.ini")
    with open(path, "w") as f:
        f.write("""[DEFAULT]
host = xnb-%(marker)s
state_path = %(state)s
interface_driver = __main__.BenchBridgeInterfaceDriver
enable_metadata_proxy = false
debug = %(debug)s
log_file = %(state)s/l3-agent.log
[AGENT]
root_helper =
[oslo_concurrency]
lock_path = %(state)s/lock
""" % {"marker": marker, "state": state, "debug": str(debug).lower()})
        if privsep_threads:
            for section in ("privsep", "privsep_namespace", "privsep_link",
                            "privsep_conntrack"):
                f.write("[%s]\nthread_pool_size = %d\n"
                        % (section, privsep_threads))
    return path


def make_agent(state, marker, server, debug, privsep_threads):
    conf_file = write_conf(state, marker, debug, privsep_threads)
    l3_agent_main.register_opts(cfg.CONF)
    try:
        oslo_log.register_options(cfg.CONF)
    except cfg.ArgsAlreadyParsedError:
        pass
    except cfg.DuplicateOptError:
        pass
    cfg.CONF(args=["--config-file", conf_file], project="neutron",
             default_config_files=[])
    oslo_log.setup(cfg.CONF, "neutron")
    # What config.setup_privsep() does with root_helper = "sudo", without
    # sudo (not installed, and we are root): privsep-helper is started as
    # `env privsep-helper --config-file ... --privsep_context ...`.
    from oslo_privsep import priv_context
    priv_context.init(root_helper=["env"])

    agent = l3_agent.L3NATAgent(cfg.CONF.host, conf=cfg.CONF)
    # What L3NATAgent.init_host sets, without neutron-server.
    agent.process_monitor = external_process.ProcessMonitor(
        config=cfg.CONF, resource_type="router")
    agent.plugin_rpc = server
    agent.driver = common_utils.load_interface_driver(
        cfg.CONF, get_networks_callback=None)
    agent.ha_router_count = 0
    agent.init_extension_manager(server)
    agent.metadata_driver = None
    agent.namespaces_manager = namespace_manager.NamespaceManager(
        cfg.CONF, agent.driver, agent.metadata_driver)
    agent._pool = neutron_utils.ThreadPoolExecutorWithBlock(
        max_workers=l3_agent.ROUTER_PROCESS_THREADS)
    agent._queue = resource_queue.ResourceProcessingQueue()
    threading.Thread(target=agent._process_routers_loop, daemon=True,
                     name="process_routers_loop").start()
    return agent


def make_bridges(networks):
    with pyroute2.IPRoute() as ipr:
        for net in networks:
            name = "brq" + net[:11]
            ipr.link("add", ifname=name, kind="bridge")
            idx = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=idx, state="up")


def ns_of(rid):
    return "qrouter-" + rid


def check_router(router):
    """Addresses on qg- and DNAT rules, as the router dict says."""
    ns = ns_of(router["id"])
    qg = "qg-" + router["gw_port"]["id"][:11]
    addrs = run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", qg]
                ).stdout
    have = {line.split()[3] for line in addrs.splitlines()}
    nat = run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"]
              ).stdout
    missing = []
    for fip in router["_floatingips"]:
        if fip["floating_ip_address"] + "/32" not in have:
            missing.append(fip["floating_ip_address"] + " address")
        rule = "-d %s/32 -j DNAT --to-destination %s" % (
            fip["floating_ip_address"], fip["fixed_ip_address"])
        if rule not in nat:
            missing.append(fip["floating_ip_address"] + " DNAT")
    return missing


def enter_netns(name):
    """setns(2) into network namespace `name`, network only: unlike
    `ip netns exec` it keeps the mount namespace, so the qrouter-*
    namespaces Neutron bind-mounts under /run/netns are visible (and
    removable) from the host, like a real agent's."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:   # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, "setns %s: %s" % (name, os.strerror(err)))
    finally:
        os.close(fd)


def inner(args):
    # First, before any thread: every thread and child inherits it.
    enter_netns(args.netns)
    os.environ["PATH"] = (os.path.dirname(sys.executable) + ":" +
                          os.environ.get("PATH", ""))
    _inner_imports()
    sys.modules["__main__"].BenchBridgeInterfaceDriver = _make_driver_class()
    if args.no_garp:
        ip_lib.send_ip_addr_adv_notif = lambda *a, **k: None
    import neutron
    from importlib import metadata
    deadline = time.monotonic() + args.timeout
    result = {"what": "neutron-l3-agent legacy routers, real namespaces",
              "neutron": metadata.version("neutron"),
              "routers": args.routers, "fips_per_router": args.fips,
              "fips_total": args.routers * args.fips,
              "privsep_thread_pool_size": (args.privsep_threads or
                                           os.cpu_count()),
              "garp": ("skipped (--no-garp): not Neutron's behaviour"
                       if args.no_garp else "as Neutron does"),
              "machine": {"cpus": os.cpu_count(),
                          "cpu": cpu_model(),
                          "kernel": platform.release(),
                          "iptables": run(["iptables", "-V"]).stdout.strip(),
                          "python": platform.python_version()}}
    del neutron

    server = StubServer()
    topo = Topology(args.marker, args.routers, args.fips)
    # The warm-up router: one more, with one floating IP, never timed.
    wr = topo.router(args.routers, 1)
    make_bridges(topo.networks)

    agent = make_agent(args.state, args.marker, server, args.debug,
                       args.privsep_threads)
    tracker = Tracker(agent)
    ctx = agent.context

    # Warm-up: one router built and deleted, so privsep daemons are up and
    # lazy imports done before anything is timed (a running agent has).
    server.routers[wr["id"]] = wr
    agent.routers_updated(ctx, [wr["id"]])
    if not tracker.wait(lambda: tracker.count(wr["id"]) >= 1, deadline):
        raise SystemExit("warm-up router not built (failures: %d)"
                         % tracker.failed)
    wait_garp(deadline)
    del server.routers[wr["id"]]
    agent.router_deleted(ctx, wr["id"])
    while wr["id"] in agent.router_info and time.monotonic() < deadline:
        time.sleep(0.05)
    if wr["id"] in agent.router_info:
        raise SystemExit("warm-up router not deleted")

    # Full sync of all routers.
    with server.lock:
        for r in topo.routers:
            server.routers[r["id"]] = r
    ids = [r["id"] for r in topo.routers]
    c0 = cpu_snapshot(args.state)
    t0 = time.monotonic()
    agent.fetch_and_sync_all_routers(ctx, NoopNamespaceManager())
    built = tracker.wait(
        lambda: all(tracker.done.get(i, 0) >= 1 for i in ids), deadline)
    t1 = time.monotonic()
    c1 = cpu_snapshot(args.state)
    settled = wait_garp(deadline)
    t2 = time.monotonic()
    c2 = cpu_snapshot(args.state)
    n_built = sum(1 for i in ids if tracker.count(i) >= 1)
    active = sum(1 for s in server.statuses.values()
                 for v in s.values() if v == "ACTIVE")
    result["full_sync"] = {
        "complete": built,
        "routers_built": n_built,
        "wall_s": round(t1 - t0, 3),
        "cpu_s_at_built": cpu_delta(c0, c1),
        "garp_settled": settled,
        "garp_settled_wall_s": round(t2 - t0, 3),
        "cpu_s": cpu_delta(c0, c2),
        "failed_passes": tracker.failed,
        "fip_status_active_reported": active,
        "per_router_wall_ms": round((t1 - t0) * 1000 / max(n_built, 1), 1),
    }
    print("l3_bench: full sync %s" % json.dumps(result["full_sync"]),
          file=sys.stderr)
    if not built:
        result["error"] = "full sync incomplete at timeout"
        print(json.dumps(result))
        return 2

    # Check: every router has its addresses and DNAT rules.
    missing = []
    for r in topo.routers:
        missing += check_router(r)
    result["full_sync"]["check_missing"] = len(missing)

    # One floating IP added to an existing router, args.adds times.
    adds = []
    r0 = topo.routers[0]
    for _ in range(args.adds):
        with server.lock:
            fip = topo.add_fip(r0)
        before = tracker.count(r0["id"])
        c0 = cpu_snapshot(args.state)
        t0 = time.monotonic()
        agent.routers_updated(ctx, [r0["id"]])
        ok = tracker.wait(lambda: tracker.count(r0["id"]) > before,
                          deadline)
        t1 = time.monotonic()
        c1 = cpu_snapshot(args.state)
        wait_garp(deadline)
        t2 = time.monotonic()
        c2 = cpu_snapshot(args.state)
        if not ok:
            result["error"] = "floating IP add incomplete at timeout"
            break
        adds.append({"wall_s": round(t1 - t0, 4),
                     "cpu_s_at_done": cpu_delta(c0, c1),
                     "garp_settled_wall_s": round(t2 - t0, 3),
                     "cpu_s": cpu_delta(c0, c2),
                     "fip": fip["floating_ip_address"]})
    if adds:
        walls = [a["wall_s"] for a in adds]
        result["add_one_fip"] = {
            "router_fips_before": args.fips,
            "runs": len(adds),
            "wall_s_median": round(statistics.median(walls), 4),
            "wall_s_min": min(walls), "wall_s_max": max(walls),
            "cpu_s_at_done_median": round(statistics.median(
                a["cpu_s_at_done"]["total"] for a in adds), 4),
            "cpu_s_median": round(statistics.median(
                a["cpu_s"]["total"] for a in adds), 4),
            "check_missing": len(check_router(r0)),
            "each": adds,
        }
    print(json.dumps(result))
    sys.stdout.flush()
    return 0 if not result.get("error") else 2


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routers", type=int, default=10)
    p.add_argument("--fips", type=int, default=10,
                   help="floating IPs per router")
    p.add_argument("--adds", type=int, default=5,
                   help="times to add one floating IP to router 0")
    p.add_argument("--timeout", type=int, default=1800,
                   help="seconds for the whole run (then cleanup)")
    p.add_argument("--log", metavar="FILE",
                   help="copy the agent's log there before cleanup")
    p.add_argument("--privsep-threads", type=int, default=0,
                   help="[privsep] thread_pool_size (default: oslo.privsep's,"
                   " the number of CPUs)")
    p.add_argument("--no-garp", action="store_true",
                   help="NOT what Neutron does: skip its gratuitous ARPs "
                   "(ip_lib.send_ip_addr_adv_notif made a no-op), for a "
                   "lower bound of the rest of its work")
    p.add_argument("--debug", action="store_true",
                   help="agent log at DEBUG (slower; not for figures)")
    p.add_argument("--cleanup", metavar="MARKER",
                   help="only delete what a killed run MARKER left")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--marker", help=argparse.SUPPRESS)
    p.add_argument("--netns", help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cleanup:
        if not (len(args.cleanup) == 8 and args.cleanup.startswith("b0")):
            sys.exit("l3_bench: a marker is 8 hex digits starting with b0")
        sys.exit(0 if cleanup(args.cleanup) else 1)
    if args.inner:
        rc = 1
        try:
            rc = inner(args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            # The agent's worker threads block on its queue forever: leave
            # without joining them; the outer process cleans up.
            os._exit(rc)
    outer(args)


if __name__ == "__main__":
    main()
