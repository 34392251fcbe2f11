"""Two local nodes on one machine (a demo and a test run) never hand out the same pod IP, and a
node skips an address whose declared ports another process already holds."""

from __future__ import annotations

import socket
from pathlib import Path

from switchboard_testkit.localnode import POD_NET, IPAllocator


def test_two_nodes_hold_different_blocks_and_a_dead_ones_block_is_free_again(
        tmp_path: Path) -> None:
    first, second = IPAllocator(tmp_path), IPAllocator(tmp_path)
    try:
        assert first.block != second.block
        assert first.block.subnet_of(POD_NET) and second.block.subnet_of(POD_NET)
        a, b = first.take([8080]), second.take([8080])
        assert a != b
    finally:
        first.close()
    third = IPAllocator(tmp_path)  # the first one's lock went with it
    try:
        assert third.block == first.block
    finally:
        second.close()
        third.close()


def test_an_address_whose_port_is_taken_is_skipped(tmp_path: Path) -> None:
    node = IPAllocator(tmp_path)
    squatter = socket.socket()
    try:
        first_host = str(next(node.block.hosts()))
        squatter.bind((first_host, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        got = node.take([port])
        assert got != first_host
        with socket.socket() as pod:  # the pod can bind its port on what it was given
            pod.bind((got, port))
        assert node.take([]) == first_host  # free for a pod that does not need that port
    finally:
        squatter.close()
        node.close()
