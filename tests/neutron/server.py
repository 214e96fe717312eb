"""Stand-in for neutron-server's side of the L3 agent's RPC.

Serves, over real oslo.messaging (rabbit driver, threading executor), what
neutron-server's RPC consumers serve to an L3 agent:

* topic `q-l3-plugin`, as neutron.api.rpc.handlers.l3_rpc.L3RpcCallback
  (target version 1.13): get_router_ids, sync_routers,
  get_host_ha_router_count, update_floatingip_statuses,
  update_all_ha_network_port_statuses, update_ha_routers_states,
  get_service_plugin_list, get_networks; the DVR-only methods raise.
* topic `q-reports-plugin`, as neutron.db.agents_db.AgentExtRpcCallback
  (target version 1.4): report_state, has_alive_neutron_server,
  delete_agent.
* topic `q-plugin`, as neutron.api.rpc.handlers.metadata_rpc
  .MetadataRpcCallback (target version 1.0): get_ports, what Neutron's
  metadata agent asks to find the instance behind a request.

Each topic is consumed as Neutron's n_rpc.Connection.create_consumer does:
queues `<topic>` and `<topic>.<host>` and the `<topic>_fanout` exchange.

Files in --dir (all optional; re-read on every call):

* routers.json: a JSON list of router dicts (xrouter's routers file
  format). get_router_ids answers all their ids; sync_routers those whose
  id is in router_ids, or all when router_ids is None.
* ports.json: a JSON list of port dicts (VMs' ports: id, network_id,
  device_id, device_owner, project_id, mac_address, fixed_ips); get_ports
  searches them and the routers' interface ports.
* control.json: {"report_state": "revived"} answers that to every
  report_state (default: "new" the first time per agent host, then
  "alive"); {"sleep": {"sync_routers": 5}} makes a method sleep that many
  seconds before it answers; {"fail": {"get_host_ha_router_count": 2}}
  makes the next 2 calls of a method raise (counted from when the entry
  last changed: {"n": 2, "serial": 7} re-arms with the same count);
  {"networks": [...]} is what get_networks answers.
* calls.jsonl (written): one JSON line per message received (see
  kit.Recorder), before it is dispatched.

Prints "ready" once its RPC servers consume; stops cleanly on SIGTERM.

    server.py --url rabbit://xrouter:secret@127.0.0.1:5672/neutron \
        --exchange neutron --dir DIR [--host neutron-server]
"""

import argparse
import collections
import datetime
import json
import os
import threading
import time

import kit  # first: it silences the eventlet warning oslo imports give
import oslo_messaging as messaging

# neutron_lib.constants.ISO8601_TIME_FORMAT, the agent's report time format.
ISO8601_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"


class State:
    """What the endpoints share: the files, call counters, agents seen."""

    def __init__(self, directory):
        self.dir = directory
        self.lock = threading.Lock()
        self.armed = {}
        self.failed = collections.Counter()
        self.agents = set()
        self.start_time = datetime.datetime.utcnow()

    def _json(self, name, default):
        try:
            with open(os.path.join(self.dir, name)) as f:
                return json.load(f)
        except FileNotFoundError:
            return default

    def routers(self):
        return self._json("routers.json", [])

    def control(self):
        return self._json("control.json", {})

    def enter(self, method):
        """Counts a call of `method`, sleeps and fails as control.json says."""
        control = self.control()
        fail = control.get("fail", {}).get(method, 0)
        with self.lock:
            # A new "fail" entry for the method arms it anew.
            if self.armed.get(method) != fail:
                self.armed[method] = fail
                self.failed[method] = 0
            n = fail["n"] if isinstance(fail, dict) else int(fail)
            failing = self.failed[method] < n
            if failing:
                self.failed[method] += 1
            k = self.failed[method]
        delay = control.get("sleep", {}).get(method)
        if delay:
            time.sleep(float(delay))
        if failing:
            raise RuntimeError(f"stand-in failure of {method} ({k} of {n})")
        return control


class L3PluginEndpoint:
    """neutron.api.rpc.handlers.l3_rpc.L3RpcCallback, topic q-l3-plugin."""

    target = messaging.Target(version="1.13")

    def __init__(self, state):
        self.state = state

    def get_router_ids(self, context, host):
        self.state.enter("get_router_ids")
        return [r["id"] for r in self.state.routers()]

    def sync_routers(self, context, **kwargs):
        self.state.enter("sync_routers")
        ids = kwargs.get("router_ids")
        routers = self.state.routers()
        if ids is None:
            return routers
        return [r for r in routers if r["id"] in ids]

    def get_host_ha_router_count(self, context, host):
        self.state.enter("get_host_ha_router_count")
        return sum(1 for r in self.state.routers() if r.get("ha"))

    def update_floatingip_statuses(self, context, router_id, fip_statuses):
        self.state.enter("update_floatingip_statuses")

    def update_all_ha_network_port_statuses(self, context, host):
        self.state.enter("update_all_ha_network_port_statuses")

    def update_ha_routers_states(self, context, **kwargs):
        self.state.enter("update_ha_routers_states")

    def get_service_plugin_list(self, context, **kwargs):
        self.state.enter("get_service_plugin_list")
        return ["CORE", "L3_ROUTER_NAT"]

    def get_networks(self, context, filters=None, fields=None):
        return self.state.enter("get_networks").get("networks", [])

    def _dvr_only(self, method):
        self.state.enter(method)
        raise NotImplementedError(f"{method}: DVR is not served by the stand-in")

    def get_ports_by_subnet(self, context, **kwargs):
        self._dvr_only("get_ports_by_subnet")

    def get_agent_gateway_port(self, context, **kwargs):
        self._dvr_only("get_agent_gateway_port")

    def delete_agent_gateway_port(self, context, **kwargs):
        self._dvr_only("delete_agent_gateway_port")


def port_matches(port, filters):
    """Neutron's get_ports filter semantics: each key a list of allowed
    values; `fixed_ips` a dict of lists matched against any fixed IP."""
    for key, allowed in filters.items():
        if key == "fixed_ips":
            ips = [f.get("ip_address") for f in port.get("fixed_ips", [])]
            wanted = allowed.get("ip_address", [])
            if wanted and not any(ip in wanted for ip in ips):
                return False
        elif port.get(key) not in list(allowed):
            return False
    return True


class MetadataEndpoint:
    """neutron.api.rpc.handlers.metadata_rpc.MetadataRpcCallback, topic
    q-plugin."""

    target = messaging.Target(version="1.0")

    def __init__(self, state):
        self.state = state

    def get_ports(self, context, filters):
        self.state.enter("get_ports")
        ports = list(self.state._json("ports.json", []))
        for r in self.state.routers():
            for i in r.get("_interfaces", []):
                ports.append(dict(i, device_id=r["id"],
                                  device_owner="network:router_interface",
                                  project_id=r.get("project_id", "")))
        return [p for p in ports if port_matches(p, filters)]


class ReportsEndpoint:
    """neutron.db.agents_db.AgentExtRpcCallback, topic q-reports-plugin."""

    target = messaging.Target(version="1.4")

    def __init__(self, state):
        self.state = state

    def report_state(self, context, **kwargs):
        control = self.state.enter("report_state")
        # Neutron drops reports stamped before the server started.
        time_ = datetime.datetime.strptime(kwargs["time"], ISO8601_TIME_FORMAT)
        if self.state.start_time > time_:
            return None
        agent_state = kwargs["agent_state"]["agent_state"]
        host = agent_state.get("host")
        with self.state.lock:
            new = host not in self.state.agents
            self.state.agents.add(host)
        if control.get("report_state"):
            return control["report_state"]
        return "new" if new else "alive"

    def has_alive_neutron_server(self, context, **kwargs):
        self.state.enter("has_alive_neutron_server")
        return True

    def delete_agent(self, context, **kwargs):
        self.state.enter("delete_agent")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="transport URL (rabbit://...)")
    p.add_argument("--exchange", default="neutron", help="control_exchange")
    p.add_argument("--dir", required=True, help="routers/control/log files")
    p.add_argument("--host", default="neutron-server",
                   help="the server's own host name (its <topic>.<host> queues)")
    a = p.parse_args()

    transport = kit.transport(a.url, a.exchange, fast_reconnect=True)
    state = State(a.dir)
    recorder = kit.Recorder(os.path.join(a.dir, "calls.jsonl"))
    servers = []
    for topic, endpoint in (("q-l3-plugin", L3PluginEndpoint(state)),
                            ("q-reports-plugin", ReportsEndpoint(state)),
                            ("q-plugin", MetadataEndpoint(state))):
        target = messaging.Target(topic=topic, server=a.host)
        server = messaging.get_rpc_server(
            transport, target, [endpoint],
            access_policy=messaging.DefaultRPCAccessPolicy)
        recorder.attach(server, topic, a.host)
        servers.append(server)
    kit.serve_until_term(servers, transport)


if __name__ == "__main__":
    main()
