"""Sample project for the network-namespace end-to-end test: services at their own addresses.

The outer test (tests/test_e2e_netns.py) creates a namespace holding two service hosts
(SVCT_NETNS_A, SVCT_NETNS_B, both in one 10.231.X.0/24) listening on SVCT_NETNS_APP_PORT and
SVCT_NETNS_METRICS_PORT, and names a loopback port nothing listens on (SVCT_NETNS_CLOSED_PORT).
"""
import ipaddress
import os
import socket

import pytest

if "SVCT_NETNS_A" not in os.environ:
    pytest.skip("run by tests/test_e2e_netns.py inside its network namespace",
                allow_module_level=True)

A = os.environ["SVCT_NETNS_A"]
B = os.environ["SVCT_NETNS_B"]
APP = int(os.environ["SVCT_NETNS_APP_PORT"])
METRICS = int(os.environ["SVCT_NETNS_METRICS_PORT"])
CLOSED = int(os.environ["SVCT_NETNS_CLOSED_PORT"])


def talk(host, port):
    """Connect, send, and wait until the listener has read it all (it closes on EOF)."""
    # Only the test hosts of the outer test's own namespace, never anything else.
    assert ipaddress.ip_address(host) in ipaddress.ip_network("10.231.0.0/16"), host
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""


def test_billing_api():        # host:port rule, beats the CIDR rule
    talk(A, APP)


def test_other_host_same_port():   # no host:port rule for B: the CIDR rule catches it
    talk(B, APP)


def test_metrics_on_a():       # CIDR:port beats CIDR (and is not A's host:port rule)
    talk(A, METRICS)


def test_metrics_on_b():
    talk(B, METRICS)


def test_unmatched_loopback():     # no rule: reported by address
    with socket.socket() as sock:
        sock.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", CLOSED))


def test_no_services():
    assert A != B
