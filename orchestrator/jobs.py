"""Names of jobs: one (deployment, partition, device) as revisions and devices see it.

Pure. A revision keeps one mini-manifest per *job key*: the device id for partition 0 (so a
deployment without partitions reads exactly as before), ``<device>#<k>`` for partition
``k >= 1``. A device keeps one mini-manifest per *device-side deployment id*: the deployment
id for partition 0, ``<deployment id>-p<k>`` for the others. Two partitions may then share a
device (a small fleet) without their chains mixing: each has its own endpoints and files.

``#`` never occurs in a device id (``supervisor.protocol.check_name``) and deployment ids are
hex, so both spellings parse back unambiguously.
"""

from __future__ import annotations

import re

__all__ = ["device_of", "job_key", "parent_deployment", "parse_job_key", "remote_id"]

_REMOTE = re.compile(r"^(?P<dep>[0-9a-f]+)-p(?P<k>[1-9][0-9]*)$")


def job_key(device: str, partition: int) -> str:
    return device if partition == 0 else f"{device}#{partition}"


def parse_job_key(key: str) -> tuple[str, int]:
    """``(device id, partition)`` of a job key."""
    device, sep, k = key.rpartition("#")
    if not sep:
        return key, 0
    return device, int(k)


def device_of(key: str) -> str:
    return parse_job_key(key)[0]


def remote_id(deployment_id: str, partition: int) -> str:
    """The deployment id a device knows partition ``partition`` of ``deployment_id`` by."""
    return deployment_id if partition == 0 else f"{deployment_id}-p{partition}"


def parent_deployment(remote: str) -> tuple[str, int]:
    """``(deployment id, partition)`` of a device-side deployment id."""
    match = _REMOTE.match(remote)
    if match is None:
        return remote, 0
    return match["dep"], int(match["k"])
