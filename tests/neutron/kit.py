"""Shared plumbing of the stand-ins for Neutron's side of the RPC.

server.py (neutron-server), notify.py (its notifications to the agents) and
peer.py (a plain RPC peer for the Rust RPC library's interop tests) all talk
through real oslo.messaging with its rabbit driver, as Neutron does; this
module holds what they share: building the transport from a URL and a
control_exchange, Neutron's admin request context as a plain dict, and a
recorder that logs every message an RPC server receives as a JSON line.
"""

import datetime
import json
import os
import signal
import threading
import time
import uuid
import warnings

# oslo.service warns on import that eventlet is deprecated; nothing here
# uses eventlet (the servers run the threading executor).
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from oslo_config import cfg  # noqa: E402
import oslo_messaging as messaging  # noqa: E402
from oslo_messaging._drivers import amqp as rpc_amqp  # noqa: E402
from oslo_messaging._drivers import impl_rabbit  # noqa: E402
from oslo_messaging.rpc import dispatcher as rpc_dispatcher  # noqa: E402


def transport(url, exchange, ping=False, fast_reconnect=False, rabbit=None):
    """An RPC transport to `url` whose default exchange is `exchange`
    (Neutron's control_exchange, "neutron"). `ping` makes RPC servers built
    on it answer oslo_rpc_server_ping, as rpc_ping_enabled does.
    `fast_reconnect`: after losing the broker, try again every second
    (instead of backing off up to 30 s), so that a stand-in is back soon
    after a broker restart. `rabbit`: more [oslo_messaging_rabbit] options,
    e.g. {"amqp_durable_queues": True} (they shape the declarations)."""
    messaging.set_transport_defaults(control_exchange=exchange)
    conf = cfg.CONF
    conf([], project="xrouter-kit", default_config_files=[])
    group = "oslo_messaging_rabbit"
    overrides = dict(rabbit or {})
    if fast_reconnect:
        overrides.update(rabbit_retry_backoff=0, rabbit_interval_max=1)
    if overrides:
        conf.register_opts(impl_rabbit.rabbit_opts, group=group)
        conf.register_opts(rpc_amqp.amqp_opts, group=group)
        for name, value in overrides.items():
            conf.set_override(name, value, group=group)
    if ping:
        conf.register_opts(rpc_dispatcher._dispatcher_opts)
        conf.set_override("rpc_ping_enabled", True)
    return messaging.get_rpc_transport(conf, url=url)


def admin_context():
    """What neutron_lib's get_admin_context().to_dict() gives (oslo.context's
    keys plus Neutron's own), as the request context Neutron sends with its
    notifications. The rabbit driver sends each key as `_context_<key>`."""
    return {
        "user": None,
        "project_id": None,
        "system_scope": None,
        "project": None,
        "domain": None,
        "user_domain": None,
        "project_domain": None,
        "is_admin": True,
        "read_only": False,
        "show_deleted": False,
        "auth_token": None,
        "request_id": "req-" + str(uuid.uuid4()),
        "global_request_id": None,
        "resource_uuid": None,
        "roles": ["admin"],
        "user_identity": "- - - - -",
        "is_admin_project": True,
        "user_id": None,
        "tenant_id": None,
        "timestamp": str(datetime.datetime.utcnow()),
        "tenant_name": None,
        "project_name": None,
        "user_name": None,
        "has_global_access": True,
    }


class Recorder:
    """Appends one JSON line per message received to a file: when, topic
    and server of the RPC server, call or cast, method, args, version,
    namespace, and the request context (its keys, and the whole of it; the
    rabbit driver adds `client_timeout`, from the message's `_timeout`)."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def attach(self, server, topic, host):
        """Wraps `server`'s dispatcher so every message is recorded before
        it is dispatched (also those no endpoint accepts)."""
        dispatch = server.dispatcher.dispatch

        def recorded(incoming):
            msg = incoming.message
            ctxt = incoming.ctxt or {}
            self.write({
                "t": time.time(),
                "topic": topic,
                "server": host,
                "call": bool(getattr(incoming, "reply_q", None)),
                "method": msg.get("method"),
                "args": msg.get("args", {}),
                "version": msg.get("version", "1.0"),
                "namespace": msg.get("namespace"),
                "context_keys": sorted(ctxt.keys()),
                "context": ctxt,
            })
            return dispatch(incoming)

        server.dispatcher.dispatch = recorded

    def write(self, record):
        line = json.dumps(record, default=str, sort_keys=True)
        with self.lock, open(self.path, "a") as f:
            f.write(line + "\n")


def serve_until_term(servers, transport):
    """Starts `servers`, prints "ready" once they all consume, and waits
    for SIGTERM or SIGINT; then stops them (bounded: the process exits
    within 10 s whatever happens)."""
    # Blocked here, before any thread starts, so every thread inherits the
    # mask and sigwait below is the only taker.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    for s in servers:
        s.start()
        # Without eventlet's monkey-patching oslo.messaging picks this one.
        assert s.executor_type == "threading", s.executor_type
    print("ready", flush=True)
    signal.sigwait(stop_signals)
    watchdog = threading.Timer(10, lambda: os._exit(1))
    watchdog.daemon = True
    watchdog.start()
    # Each listener takes about a second to stop: stop them side by side.
    stoppers = [threading.Thread(target=s.stop) for s in servers]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    for s in servers:
        s.wait()
    transport.cleanup()
    print("stopped", flush=True)
