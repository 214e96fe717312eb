"""Writes the haproxy config Neutron's L3 agent writes for a router's
metadata proxy, rendered by Neutron's own code (MetadataDriver's
HaproxyConfigurator, called as spawn_monitored_metadata_proxy calls it),
with Neutron's defaults for [metadata_haproxy] and
[metadata_rate_limiting] (rate limiting off).

    haproxy_cfg.py --socket PATH --out-dir DIR [--port 9697]
        [--bind 0.0.0.0] [--log-target TARGET] ROUTER_ID...

For each router: DIR/<id>.conf (as the agent's ns-metadata-proxy/<id>.conf)
with pidfile DIR/<id>.pid; prints the paths written. The user and group are
root (metadata_proxy_user/group, as when the agent runs as root).
`--log-target` replaces `/dev/log` in the `log` line (for a machine without
syslog's socket); nothing else is changed.
"""

import argparse
import os
import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

from oslo_config import cfg  # noqa: E402
from oslo_log import log as logging  # noqa: E402

from neutron.agent.metadata import driver  # noqa: E402
from neutron.conf import common as common_conf  # noqa: E402
from neutron.conf.agent.metadata import config as meta_conf  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--port", type=int, default=9697)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--log-target")
    p.add_argument("router_ids", nargs="+")
    a = p.parse_args()

    # cfg.CONF: the configurator reads `debug` from it (log level info).
    conf = cfg.CONF
    logging.register_options(conf)
    common_conf.register_core_common_config_opts(conf)
    # What neutron/agent/l3_agent.py registers for the metadata driver.
    meta_conf.register_meta_conf_opts(meta_conf.SHARED_OPTS, conf)
    meta_conf.register_meta_conf_opts(
        meta_conf.METADATA_RATE_LIMITING_OPTS, conf,
        group=meta_conf.RATE_LIMITING_GROUP)
    meta_conf.register_meta_conf_opts(
        meta_conf.METADATA_HAPROXY_OPTS, conf, group=meta_conf.HAPROXY_GROUP)
    conf([], project="neutron", default_config_files=[])
    conf.set_override("metadata_proxy_socket", a.socket)
    conf.set_override("metadata_proxy_user", "root")
    conf.set_override("metadata_proxy_group", "root")

    os.makedirs(a.out_dir, exist_ok=True)
    for rid in a.router_ids:
        pidfile = os.path.join(a.out_dir, "%s.pid" % rid)
        h = driver.MetadataDriver._get_haproxy_configurator(
            a.bind, a.port, conf, router_id=rid, pid_file=pidfile)
        text = h.haproxy_cfg
        if a.log_target:
            text = text.replace("log         /dev/log ",
                                "log         %s " % a.log_target, 1)
        path = os.path.join(a.out_dir, "%s.conf" % rid)
        with open(path, "w") as f:
            f.write(text)
        print(path)


if __name__ == "__main__":
    main()
