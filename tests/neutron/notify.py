"""Stand-in for neutron-server's notifications to L3 agents.

Sends, over real oslo.messaging (rabbit driver), what neutron-server sends:
neutron.api.rpc.agentnotifiers.l3_rpc_agent_api.L3AgentNotifyAPI on topic
`l3_agent` (client version 1.0, each method with the version it uses), and
neutron.plugins.ml2.rpc.AgentNotifierApi.network_update (fanout on topic
`q-agent-notifier-network-update`, version 1.4), with Neutron's admin
request context. Also a generic call/cast for the RPC library's tests.

    notify.py --url URL [--exchange neutron] [--timeout 10] COMMAND ...

    routers_updated HOST ID...        cast l3_agent.HOST v1.1, one message
                                      per router: routers=[ID] (Neutron with
                                      the l3 scheduler); --fanout: one fanout
                                      v1.0 routers=[IDs] (without it)
    router_deleted ID                 fanout v1.0 router_id=ID
    router_removed_from_agent HOST ID cast v1.0 payload={"router_id": ID}
    router_added_to_agent HOST ID...  CALL v1.0 payload=[IDs]
    agent_updated HOST true|false     cast v1.0 payload={"admin_state_up": B}
    network_update JSON               fanout v1.4 network=JSON
    ping HOST                         call oslo_rpc_server_ping on l3_agent.HOST
    call|cast --topic T [--server S] [--fanout] --method M [--version V]
              [--namespace NS] [--args JSON]

A call prints its reply as one JSON line on stdout. Exit codes: 0 sent (or
answered), 2 the call timed out, 3 the peer answered with an error (then
stdout holds {"error": class, "exc_type": remote class, "message": ...}),
4 not delivered after --retry connection retries (default: retry forever,
as Neutron does; a call's reply queue is connected with endless retries
whatever --retry says, so bound a call to a dead broker from outside).
"""

import argparse
import json
import sys
import time

import kit  # first: it silences the eventlet warning oslo imports give
import oslo_messaging as messaging

L3_AGENT = "l3_agent"
NETWORK_UPDATE = "q-agent-notifier-network-update"


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", default="neutron")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds a call waits for its reply")
    p.add_argument("--retry", type=int, default=None,
                   help="connection retries (default: forever, as Neutron)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("routers_updated")
    s.add_argument("host")
    s.add_argument("ids", nargs="+")
    s.add_argument("--fanout", action="store_true")
    s = sub.add_parser("router_deleted")
    s.add_argument("id")
    s = sub.add_parser("router_removed_from_agent")
    s.add_argument("host")
    s.add_argument("id")
    s = sub.add_parser("router_added_to_agent")
    s.add_argument("host")
    s.add_argument("ids", nargs="+")
    s = sub.add_parser("agent_updated")
    s.add_argument("host")
    s.add_argument("admin_state_up", choices=["true", "false"])
    s = sub.add_parser("network_update")
    s.add_argument("network", type=json.loads)
    s = sub.add_parser("ping")
    s.add_argument("host")
    for name in ("call", "cast"):
        s = sub.add_parser(name)
        s.add_argument("--topic", required=True)
        s.add_argument("--server")
        s.add_argument("--fanout", action="store_true")
        s.add_argument("--method", required=True)
        s.add_argument("--version", default="1.0")
        s.add_argument("--namespace")
        s.add_argument("--args", type=json.loads, default={})
    return p.parse_args()


def main():
    a = parse()
    transport = kit.transport(a.url, a.exchange)
    try:
        rc = send(a, transport)
    except messaging.MessageDeliveryFailure as e:
        print(f"not delivered: {e}", file=sys.stderr)
        rc = 4
    transport.cleanup()
    sys.exit(rc)


def send(a, transport):
    """Sends what the command says; the exit code."""
    ctxt = kit.admin_context()
    l3 = messaging.get_rpc_client(
        transport, messaging.Target(topic=L3_AGENT, version="1.0"),
        timeout=a.timeout, retry=a.retry)

    def call(client, method, **kwargs):
        try:
            reply = client.call(ctxt, method, **kwargs)
        except messaging.MessagingTimeout as e:
            print(f"timed out: {e}", file=sys.stderr)
            return 2
        except messaging.MessageDeliveryFailure:
            raise
        except Exception as e:
            print(json.dumps({"error": type(e).__name__,
                              "exc_type": getattr(e, "exc_type", None),
                              "message": str(e)}), flush=True)
            return 3
        print(json.dumps(reply), flush=True)
        return 0

    if a.cmd == "routers_updated":
        if a.fanout:
            l3.prepare(fanout=True).cast(ctxt, "routers_updated",
                                         routers=a.ids)
        else:
            cctxt = l3.prepare(server=a.host, version="1.1")
            for rid in a.ids:
                cctxt.cast(ctxt, "routers_updated", routers=[rid])
        # When the last cast left, for latency figures.
        print(json.dumps({"sent": time.time()}), flush=True)
    elif a.cmd == "router_deleted":
        l3.prepare(fanout=True).cast(ctxt, "router_deleted", router_id=a.id)
    elif a.cmd == "router_removed_from_agent":
        l3.prepare(server=a.host).cast(ctxt, "router_removed_from_agent",
                                       payload={"router_id": a.id})
    elif a.cmd == "router_added_to_agent":
        return call(l3.prepare(server=a.host), "router_added_to_agent",
                    payload=a.ids)
    elif a.cmd == "agent_updated":
        l3.prepare(server=a.host).cast(
            ctxt, "agent_updated",
            payload={"admin_state_up": a.admin_state_up == "true"})
    elif a.cmd == "network_update":
        l3.prepare(topic=NETWORK_UPDATE, fanout=True, version="1.4").cast(
            ctxt, "network_update", network=a.network)
    elif a.cmd == "ping":
        return call(l3.prepare(server=a.host), "oslo_rpc_server_ping")
    else:
        client = messaging.get_rpc_client(
            transport,
            messaging.Target(topic=a.topic, server=a.server, fanout=a.fanout,
                             version=a.version, namespace=a.namespace),
            timeout=a.timeout, retry=a.retry)
        if a.cmd == "call":
            return call(client, a.method, **a.args)
        client.cast(ctxt, a.method, **a.args)
    return 0


if __name__ == "__main__":
    main()
