"""A plain oslo.messaging RPC server for the Rust RPC library's interop tests.

Stands in for any OpenStack service's RPC server (rabbit driver, threading
executor): consumes topic T as oslo.messaging does (queues `T` and
`T.<server>`, fanout exchange `T_fanout`), answers oslo_rpc_server_ping, and
serves an endpoint with target version 1.3:

    echo(value)      -> value
    fail(message)    raises ValueError(message)
    slow(seconds)    sleeps, then -> seconds

Every message received (calls and casts, also of unknown methods) is
appended as a JSON line to --log (see kit.Recorder). Prints "ready" once it
consumes; stops cleanly on SIGTERM.

    peer.py --url URL [--exchange neutron] --topic T --server S --log FILE
            [--durable] [--quorum]

--durable and --quorum set [oslo_messaging_rabbit] amqp_durable_queues and
rabbit_quorum_queue, to check that other clients declare the same queues.
"""

import argparse
import time

import kit  # first: it silences the eventlet warning oslo imports give
import oslo_messaging as messaging


class TestEndpoint:
    target = messaging.Target(version="1.3")

    def echo(self, context, value):
        return value

    def fail(self, context, message):
        raise ValueError(message)

    def slow(self, context, seconds):
        time.sleep(float(seconds))
        return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", default="neutron")
    p.add_argument("--topic", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--durable", action="store_true",
                   help="amqp_durable_queues = true")
    p.add_argument("--quorum", action="store_true",
                   help="rabbit_quorum_queue = true")
    a = p.parse_args()

    rabbit = {}
    if a.durable:
        rabbit["amqp_durable_queues"] = True
    if a.quorum:
        rabbit["rabbit_quorum_queue"] = True
    transport = kit.transport(a.url, a.exchange, ping=True,
                               fast_reconnect=True, rabbit=rabbit)
    server = messaging.get_rpc_server(
        transport, messaging.Target(topic=a.topic, server=a.server),
        [TestEndpoint()],
        access_policy=messaging.DefaultRPCAccessPolicy)
    kit.Recorder(a.log).attach(server, a.topic, a.server)
    kit.serve_until_term([server], transport)


if __name__ == "__main__":
    main()
