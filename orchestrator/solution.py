"""The per-device mini-manifests (wasmiot ``DeploymentNode``) for a placed manifest.

Pure: :func:`build_nodes` turns a manifest, where each step runs, the module records and the
device URLs into one :class:`~supervisor.protocol.DeploymentNode` per device, shaped like the
reference orchestrator's ``createSolution`` output (``wasmiot.md`` §3.6.2 to §3.6.4) so that the
same document deploys on a reference supervisor, plus Baton's ``baton`` key (digests, limits,
typed parameters).

Wire choices, for compatibility with the reference supervisor:

* a ``number`` parameter or result is written ``"float"`` in the OpenAPI schemas, the
  reference orchestrator's own spelling; ``baton.params`` keeps the canonical ``number``.
  Reference supervisors whose ``SchemaType`` lacks ``float`` refuse such functions (a
  failed push, then a rollback): only integer results travel to every wasmiot version;
* ``request_body`` lists the **execution** mounts only: they are what a caller (or the
  previous step) uploads, and the supervisor's chain logic renames a single output file to
  the next step's single file field. Deployment mounts travel in ``mounts`` and
  ``urls.other``, where supervisors read them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import msgspec

from orchestrator.model import FunctionSpec, Manifest, ModuleRecord
from supervisor import protocol
from supervisor.protocol import (
    DeploymentNode,
    Endpoint,
    EndpointRequest,
    EndpointResponse,
    FunctionLink,
    FunctionMounts,
    Instructions,
    ModuleRef,
    ModuleUrls,
    Parameter,
    ParamSpec,
    RequestBody,
    Schema,
)

_WIRE_TYPE = {"number": "float"}
"""Canonical type → the type written in an endpoint's OpenAPI schemas."""


def build_nodes(  # noqa: PLR0917 - the callers' positional signature
    deployment_id: str,
    manifest: Manifest,
    devices: Sequence[str],
    modules: Mapping[str, ModuleRecord],
    device_urls: Mapping[str, str],
    blob_url: Callable[[str], str],
    *,
    description_url: Callable[[ModuleRecord], str] | None = None,
) -> dict[str, DeploymentNode]:
    """One mini-manifest per device used, keyed by device id.

    ``devices[i]`` runs ``manifest.sequence[i]``; ``modules`` is keyed by ``step.module``;
    ``device_urls`` maps a device id to its base URL; ``blob_url(sha256hex)`` is where a device
    downloads a blob (binary or data file); ``description_url``, if given, fills
    ``urls.description`` (old reference supervisors GET it).

    Each step's function is served at ``/<deployment_id>/modules/<module name>/<func>`` on its
    device and chained to the next step's endpoint (``to`` is ``None`` for the last step).
    Every node passes :func:`supervisor.protocol.validate_node`.

    Raises ``ValueError`` for inconsistent input: lengths differ, an unknown module, function
    or device, a deployment mount without a data file, two different binaries under one module
    name on a device, or the same ``(module name, func)`` twice on a device (the wasmiot
    chaining format has one ``instructions`` entry per function).
    """
    protocol.check_name(deployment_id, "deploymentId")
    steps = manifest.sequence
    if len(devices) != len(steps):
        raise ValueError(f"{len(steps)} steps but {len(devices)} devices")
    endpoints: list[Endpoint] = []
    records: list[ModuleRecord] = []
    for i, (step, device) in enumerate(zip(steps, devices, strict=True)):
        record = modules.get(step.module)
        if record is None:
            raise ValueError(f"sequence[{i}]: unknown module {step.module!r}")
        spec = record.functions.get(step.func)
        if spec is None:
            raise ValueError(f"sequence[{i}]: module {record.ref} describes no {step.func!r}")
        if device not in device_urls:
            raise ValueError(f"sequence[{i}]: no URL for device {device!r}")
        records.append(record)
        endpoints.append(_endpoint(device_urls[device], deployment_id, record.name, spec))

    nodes: dict[str, DeploymentNode] = {}
    for i, (step, device, record) in enumerate(zip(steps, devices, records, strict=True)):
        node = nodes.get(device)
        if node is None:
            node = nodes[device] = _empty_node(deployment_id)
        _add_module(node, record, blob_url, description_url, i)
        name, func = record.name, step.func
        if func in node.endpoints.setdefault(name, {}):
            raise ValueError(f"sequence[{i}]: {name}.{func} is already on device {device!r}")
        spec = record.functions[func]
        own = endpoints[i]
        node.endpoints[name][func] = own
        nxt = endpoints[i + 1] if i + 1 < len(steps) else None
        node.instructions.modules.setdefault(name, {})[func] = FunctionLink(own, nxt)
        node.mounts.setdefault(name, {})[func] = _mounts(spec)
        baton = node.baton
        assert baton is not None  # _empty_node sets it
        baton.params.setdefault(name, {})[func] = [ParamSpec(p.name, p.type) for p in spec.params]
        limits = manifest.limits.get(f"{step.module}.{func}") or manifest.limits.get(
            f"{name}.{func}"
        )
        if limits is not None:
            baton.limits.setdefault(name, {})[func] = protocol.Limits(
                timeoutMs=limits.timeoutMs, fuel=limits.fuel, memoryBytes=limits.memoryBytes
            )
    for node in nodes.values():
        protocol.validate_node(node)
    return nodes


def _empty_node(deployment_id: str) -> DeploymentNode:
    return DeploymentNode(
        deploymentId=deployment_id,
        modules=[],
        endpoints={},
        instructions=Instructions(modules={}),
        mounts={},
        baton=protocol.BatonExtension(),
    )


def _add_module(
    node: DeploymentNode,
    record: ModuleRecord,
    blob_url: Callable[[str], str],
    description_url: Callable[[ModuleRecord], str] | None,
    index: int,
) -> None:
    """List ``record`` in the node once; a different binary under the same name is an error."""
    assert node.baton is not None  # _empty_node sets it
    for ref in node.modules:
        if ref.name == record.name:
            if ref.id != record.digest:
                raise ValueError(
                    f"sequence[{index}]: two different binaries named {record.name!r} on one device"
                )
            return
    for spec in record.functions.values():
        for mount in spec.mounts_at("deployment"):
            if mount.name not in record.data_files:
                raise ValueError(
                    f"sequence[{index}]: {record.ref} has no data file for mount {mount.name!r}"
                )
    urls = ModuleUrls(
        binary=blob_url(record.digest),
        description=description_url(record) if description_url is not None else msgspec.UNSET,
        other={mount: blob_url(sha) for mount, sha in record.data_files.items()},
    )
    node.modules.append(ModuleRef(id=record.digest, name=record.name, urls=urls))
    node.baton.modules[record.name] = protocol.ModuleExtension(
        digest=f"sha256:{record.digest}",
        files={mount: f"sha256:{sha}" for mount, sha in record.data_files.items()},
    )


def _endpoint(url: str, deployment_id: str, module: str, spec: FunctionSpec) -> Endpoint:
    """The function's endpoint on ``url``, as the reference derives it from the OpenAPI doc."""
    parameters = [
        Parameter(
            name=p.name,
            in_="query",
            description=f"{p.name} ({p.type})",
            required=True,
            schema=Schema(type=_WIRE_TYPE.get(p.type, p.type)),
        )
        for p in spec.params
    ]
    uploads = spec.mounts_at("execution")
    body: RequestBody | msgspec.UnsetType = msgspec.UNSET
    if uploads:
        body = RequestBody(
            media_type="multipart/form-data",
            schema={
                "type": "object",
                "properties": {m.name: {"type": "string", "format": "binary"} for m in uploads},
            },
            encoding={m.name: {"contentType": m.mediaType} for m in uploads},
        )
    outputs = spec.mounts_at("output")
    if outputs:
        response = EndpointResponse(
            media_type=outputs[0].mediaType, schema=Schema(type="string", format="binary")
        )
    else:
        output = spec.output or "integer"
        response = EndpointResponse(
            media_type=protocol.JSON, schema=Schema(type=_WIRE_TYPE.get(output, output))
        )
    return Endpoint(
        url=url.rstrip("/"),
        path=f"/{deployment_id}/modules/{module}/{spec.name}",
        method=spec.method.lower(),
        request=EndpointRequest(parameters=parameters, request_body=body),
        response=response,
    )


def _mounts(spec: FunctionSpec) -> FunctionMounts:
    lists: dict[str, list[protocol.Mount]] = {"execution": [], "deployment": [], "output": []}
    for m in spec.mounts:
        lists[m.stage].append(protocol.Mount(path=m.name, stage=m.stage, media_type=m.mediaType))
    return FunctionMounts(**lists)
