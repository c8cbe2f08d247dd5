"""Ray connections for the RayGrid: a local instance sized to this machine, or an existing cluster (attached within
a bounded time, with fedsim's code shipped to workers that cannot import it)."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import ray

from fedsim.errors import FedsimError

RAY_INIT = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}


def connect(address: str | None, connect_timeout_s: float, runtime_env: dict | None = None,
            ship_code: bool | None = None) -> Path | None:
    """Start a local Ray sized to this machine, or attach to `address`; returns the code snapshot shipped (delete
    it after disconnecting), or None. A process already connected is left as it is."""
    if ray.is_initialized():
        return None
    if not address:
        ray.init(address="local", num_cpus=os.cpu_count(), runtime_env=runtime_env, **RAY_INIT)
        return None
    return attach(address, connect_timeout_s, runtime_env, ship_code)


def reachable(address: str, timeout_s: float) -> None:
    """Raise the one-line `cannot attach` error unless something accepts TCP connections at `address`'s host:port
    within `timeout_s` (Ray itself retries an unreachable GCS for many minutes). "auto" and addresses without a
    port are left to Ray."""
    host_port = address.removeprefix("ray://").rsplit(":", 1)
    if address == "auto" or len(host_port) != 2 or not host_port[1].isdigit():
        return
    host, port = host_port[0].strip("[]"), int(host_port[1])
    deadline, reason = time.monotonic() + timeout_s, "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if time.monotonic() >= deadline:
            raise FedsimError("run.ray_address", f"cannot attach to Ray at '{address}': nothing answered within "
                              f"{timeout_s:g} s ({reason})", "start the cluster (`ray start --head`), fix the "
                              "address, or raise run.ray_connect_timeout_s")
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def stale_cluster_file(timeout_s: float = 2.0) -> tuple[Path, str] | None:
    """Ray's `ray_current_cluster` file and the address it names, when nothing answers there (a cluster stopped
    by killing its processes, not by `ray stop`): an address-less `ray.init()`, as Flower's simulation makes, would
    retry that address for many minutes without a word. None when $RAY_ADDRESS is set, there is no such file, or
    something answers. (fedsim's own Ray runtime starts a local instance, `address="local"`, and never reads it.)"""
    from ray._common.utils import get_ray_address_file

    if os.environ.get("RAY_ADDRESS"):
        return None
    path = Path(get_ray_address_file(None))
    try:
        address = path.read_text().strip()
    except OSError:
        return None
    try:
        reachable(address, timeout_s)
    except FedsimError:
        return path, address
    return None


def attach(address: str, connect_timeout_s: float = 30.0, runtime_env: dict | None = None,
           ship_code: bool | None = None) -> Path | None:
    """Connect this process to the existing Ray cluster at `address` (bounded by `connect_timeout_s`), shipping
    fedsim's code to its workers when they cannot import it (or when `ship_code`); returns the shipped snapshot
    (delete it after disconnecting), or None."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    reachable(address, connect_timeout_s)
    try:  # an existing cluster: Ray refuses num_cpus / num_gpus here
        ray.init(address=address, runtime_env=runtime_env, **RAY_INIT)
        if ship_code is None:
            ship_code = not _cluster_has_fedsim()
        if not ship_code:
            return None
        ray.shutdown()  # code can only be uploaded per job, so reconnect with it
        snapshot = package_snapshot()
        env = dict(runtime_env or {})
        env["py_modules"] = [*env.get("py_modules", []), str(snapshot)]
        ray.init(address=address, runtime_env=env, **RAY_INIT)
        return snapshot
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise FedsimError("run.ray_address", f"cannot attach to Ray at '{address}': {exc}",
                          "start the cluster (`ray start --head`) or fix the address") from None


@ray.remote(num_cpus=0)
def _import_fedsim() -> bool:
    try:
        importlib.import_module("fedsim.clients.app")
    except ImportError:
        return False
    return True


def _cluster_has_fedsim() -> bool:
    """Can the cluster's workers import fedsim as they are (same machine / same environment)?"""
    return ray.get(_import_fedsim.remote())


def package_modules(sources: list[Path]) -> tuple[Path, list[str]]:
    """Copies of the user's own modules (a model factory's) to ship as Ray py_modules, in a new temporary folder
    (delete it after disconnecting): a package as it is, a single-file module as a package of the same name."""
    root = Path(tempfile.mkdtemp(prefix="fedsim-user-code-"))
    shipped = []
    for source in sources:
        target = root / (source.name if source.is_dir() else source.stem)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.mkdir()
            shutil.copyfile(source, target / "__init__.py")
        shipped.append(str(target))
    return root, shipped


def package_snapshot() -> Path:
    """An importable copy of fedsim (strategies/, clients/, scenarios/ folded in) to ship as a Ray py_module."""
    import fedsim

    root = Path(tempfile.mkdtemp(prefix="fedsim-code-")) / "fedsim"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(fedsim.__file__).parent, root, ignore=skip)
    for sub in ("strategies", "clients", "scenarios"):  # separate folders in a source checkout
        if not (root / sub).exists():
            source = Path(importlib.import_module(f"fedsim.{sub}").__file__).parent
            shutil.copytree(source, root / sub, ignore=skip)
    return root
