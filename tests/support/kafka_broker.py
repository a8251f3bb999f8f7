"""Host librdkafka's mock Kafka cluster in its own process, reachable over loopback TCP.

Usage: python -m tests.support.kafka_broker [--brokers N] [--until-signal]
Prints the bootstrap servers ("127.0.0.1:PORT") as the first stdout line, then serves
until stdin reaches EOF (the parent closed its end or died) or SIGTERM/SIGINT arrives.
With --until-signal stdin is ignored (for `... &` in a shell where stdin is /dev/null).

Why a separate process: confluent-kafka has no Python API for the mock cluster, and
svctrace must see Kafka traffic between distinct processes over real sockets, exactly as
with a real broker. The broker listens on an ephemeral port chosen by the kernel: librdkafka
binds 127.0.0.1:0 and offers no setting for the listen port (rd_kafka_mock_broker_set_host_port
only changes the address advertised in metadata).
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import os
import signal
import sys

RD_KAFKA_PRODUCER = 0  # rd_kafka_type_t


def find_librdkafka() -> str:
    """Path of the librdkafka bundled in confluent-kafka's wheel (auditwheel's .libs dirs)."""
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("confluent-kafka is not installed in this Python")
    pkg = list(spec.submodule_search_locations)[0]
    patterns = [os.path.join(os.path.dirname(pkg), "confluent_kafka.libs", "librdkafka*.so*"),
                os.path.join(pkg, ".libs", "librdkafka*.so*"),
                os.path.join(pkg, ".dylibs", "librdkafka*.dylib")]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError(f"no bundled librdkafka found next to {pkg} (looked for {patterns})")


def load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    vp = ctypes.c_void_p
    lib.rd_kafka_conf_new.restype = vp
    lib.rd_kafka_conf_set.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_size_t]
    lib.rd_kafka_new.restype = vp
    lib.rd_kafka_new.argtypes = [ctypes.c_int, vp, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_mock_cluster_new.restype = vp
    lib.rd_kafka_mock_cluster_new.argtypes = [vp, ctypes.c_int]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [vp]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [vp]
    lib.rd_kafka_destroy.argtypes = [vp]
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms.argtypes = [vp, ctypes.c_int32]
    return lib


def serve(brokers: int, until_signal: bool) -> int:
    lib = load(find_librdkafka())
    # SIGTERM becomes SystemExit so the finally-block below destroys the cluster cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    errstr = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    # The hosting client has no bootstrap.servers of its own; hide that notice (level 5).
    lib.rd_kafka_conf_set(conf, b"log_level", b"4", errstr, len(errstr))
    # The mock cluster needs a client handle to live in; rd_kafka_new takes over the conf.
    rk = lib.rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
    if not rk:
        print(f"kafka_broker: rd_kafka_new failed: {errstr.value.decode()}", file=sys.stderr)
        return 1
    mcluster = lib.rd_kafka_mock_cluster_new(rk, brokers)
    if not mcluster:
        print("kafka_broker: rd_kafka_mock_cluster_new failed", file=sys.stderr)
        lib.rd_kafka_destroy(rk)
        return 1
    # Like Kafka's group.initial.rebalance.delay.ms the mock waits 3 s before the first
    # group assignment; tests want a subscribing consumer to start at once.
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms(mcluster, 0)
    try:
        print(lib.rd_kafka_mock_cluster_bootstraps(mcluster).decode(), flush=True)
        if until_signal:
            while True:
                signal.pause()
        else:
            # EOF on stdin means the parent is gone: never outlive it as an orphan broker.
            while sys.stdin.buffer.read(65536):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        lib.rd_kafka_mock_cluster_destroy(mcluster)
        lib.rd_kafka_destroy(rk)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument("--until-signal", action="store_true",
                        help="ignore stdin; serve until SIGTERM or SIGINT")
    args = parser.parse_args()
    return serve(args.brokers, args.until_signal)


if __name__ == "__main__":
    sys.exit(main())
