"""RayGrid: fedsim's ClientApp in a pool of long-lived Ray actors, locally or on an existing cluster (connecting
and shipping code: fedsim.runtime.ray_cluster).

Each actor hosts the ClientApp, its cached partitions and one model instance, and serves many virtual
clients. Per push, each distinct message content (the global model) is `ray.put` once and shared by
reference; messages go to actors in chunks (one Ray call per chunk, not per client). Contexts live on the
driver and travel with their task, so `context.state` persists whichever actor serves a node.

Faults: a client that raises is an error reply; an actor that dies is replaced and its chunk retried once;
with a timeout, unfinished chunks become error replies and their actors are replaced, so nothing hangs.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import ray
from flwr.app import Context, Message, Metadata, RecordDict
from flwr.common.constant import ErrorCode

from fedsim.errors import FedsimError
from fedsim.reduction import Partial, Reduction
from fedsim.runtime.base import VirtualNodesGrid, error_reply, run_clients
from fedsim.runtime.ray_cluster import connect, package_modules
from fedsim.scenario import ResourcesSection


def load_object(spec: str):
    """'package.module:attribute' -> the attribute."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class ClientWorker:
    """A Ray actor hosting the ClientApp; it deserialises each round's shared content once."""

    def __init__(self, client_app: str, num_threads: int, cohort: str | None = None) -> None:
        import torch

        from fedsim.allocator import keep_freed_memory

        keep_freed_memory()
        torch.set_num_threads(num_threads)
        self.app = load_object(client_app)
        self.cohort = load_object(cohort) if cohort else None
        self._content_key: str | None = None
        self._content: RecordDict | None = None

    def warm_up(self) -> None:
        from fedsim.training import warm_up

        warm_up()

    def where(self) -> tuple[str, str]:
        """(Ray node id, directory fedsim was imported from) of this actor."""
        import fedsim

        return ray.get_runtime_context().get_node_id(), str(Path(fedsim.__file__).parent)

    def run(self, content_ref: list, run_config: dict, tasks: list[tuple[Metadata, dict, RecordDict, float]],
            reduction: Reduction | None = None) -> tuple[list[tuple[Message, RecordDict]], int, list[Partial]]:
        """Execute a chunk of virtual clients (metadata, node config, node state, delay), through the vectorised
        handler where the run vectorises; returns (reply, state) per task, how many were trained vectorised and,
        with `reduction`, the chunk's partial results (in host memory: one model a chunk, not one a client)."""
        ref = content_ref[0]  # wrapped in a list so Ray hands us the reference, not a fresh copy per call
        if ref.hex() != self._content_key:
            self._content, self._content_key = ray.get(ref), ref.hex()
        messages = [Message(content=self._content, metadata=metadata) for metadata, _, _, _ in tasks]
        contexts = [Context(metadata.run_id, metadata.dst_node_id, node_config, state, run_config)
                    for metadata, node_config, state, _ in tasks]
        replies, vectorized, partials = run_clients(self.app, self.cohort, messages, contexts, [t[3] for t in tasks],
                                                    reduction)
        return ([(reply, context.state) for reply, context in zip(replies, contexts)], vectorized,
                [p.cpu() for p in partials])


@dataclass
class _Chunk:
    content_ref: ray.ObjectRef
    messages: list[Message]
    attempts: int = 0
    actor: int = -1


NODE_LOSS_WAIT_S = 30.0  # how long an unreachable actor's node may take to be declared dead


class RayGrid(VirtualNodesGrid):
    """Virtual clients served by `pool size` Ray actors (from per-client `resources` and the cluster's size)."""

    def __init__(self, num_nodes: int, run_config: dict, resources: ResourcesSection, address: str | None = None,
                 client_app: str = "fedsim.clients.app:app", cohort: str | None = None,
                 runtime_env: dict | None = None,
                 chunks_per_actor: int = 1, ship_code: bool | None = None, faults=None, seed: int = 0,
                 connect_timeout_s: float = 30.0, user_modules: list[Path] = ()) -> None:
        """`user_modules`: the user's own modules the clients import (a model factory's), shipped to the workers of
        an existing cluster at `address` (a local Ray shares this machine's files)."""
        super().__init__(num_nodes, run_config, faults=faults, seed=seed)
        self.run_config = dict(run_config)  # shared by every node; sent once per chunk, not per client
        self.resources, self.address, self.client_app, self.cohort = resources, address, client_app, cohort
        self.chunks_per_actor = chunks_per_actor
        self.connect_timeout_s = connect_timeout_s
        self._owns_connection = not ray.is_initialized()
        self._user_code = None
        if address and user_modules and not ray.is_initialized():
            self._user_code, shipped = package_modules(list(user_modules))
            runtime_env = {**(runtime_env or {}), "py_modules": [*(runtime_env or {}).get("py_modules", []), *shipped]}
        self._snapshot = connect(address, connect_timeout_s, runtime_env, ship_code)
        self.shipped_code = self._snapshot is not None
        self.num_actors = pool_size(resources, ray.cluster_resources())
        options = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, "max_restarts": 0}
        self._actor_cls = ray.remote(ClientWorker).options(**options)
        self.actors = [self._spawn() for _ in range(self.num_actors)]
        where = ray.get([a.where.remote() for a in self.actors])
        self.actor_nodes = [node for node, _ in where]  # the Ray node each actor runs on
        self.ray_node_ids = sorted(set(self.actor_nodes))
        self.lost_nodes: list[str] = []
        self.worker_code = sorted({code for _, code in where})
        self.retries = 0

    def _spawn(self):
        threads = max(1, int(self.resources.num_cpus))
        return self._actor_cls.remote(self.client_app, threads, self.cohort)

    def _replace(self, index: int) -> None:
        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._spawn()
        self.actor_nodes[index] = None  # known again once it answers `where`

    def _node_lost(self, index: int, exc: Exception) -> bool:
        """Whether actor `index` failed because its Ray node is gone. An actor that is merely unreachable may be
        on a node that died: Ray declares a node dead after its health checks fail (~15 s), so wait up to
        NODE_LOSS_WAIT_S for that verdict before treating it as a crash on a live node."""
        node = self.actor_nodes[index]
        if node is None:
            return False
        unreachable = isinstance(exc, ray.exceptions.ActorUnavailableError | ray.exceptions.RayTaskError)
        deadline = time.monotonic() + (NODE_LOSS_WAIT_S if unreachable else 0.0)
        while True:
            if not any(n["NodeID"] == node and n["Alive"] for n in ray.nodes()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    def _retire(self, index: int) -> None:
        """Drop actor `index` (its node was lost): the pool goes on with the actors left, on the nodes left."""
        with contextlib.suppress(Exception):
            ray.kill(self.actors[index], no_restart=True)
        if self.actor_nodes[index] not in self.lost_nodes:
            self.lost_nodes.append(self.actor_nodes[index])
        self.actors[index] = None
        self.num_actors = sum(a is not None for a in self.actors)
        if not self.num_actors:
            raise FedsimError("run.ray_address", f"every Ray node running fedsim's clients was lost "
                              f"({', '.join(n[:8] for n in self.lost_nodes)})", "restart the cluster's nodes and "
                              "continue with `fedsim run --resume RUN_DIR`")

    # ---- executing a batch of messages ---------------------------------------------------------
    def _chunks(self, messages: list[Message]) -> deque[_Chunk]:
        groups: dict[int, list[Message]] = {}
        for msg in messages:  # messages sharing one content object share one object-store entry
            groups.setdefault(id(msg.content), []).append(msg)
        chunks: deque[_Chunk] = deque()
        for group in groups.values():
            ref = ray.put(group[0].content)
            start = 0
            while start < len(group):
                if self.cohort:  # one chunk per actor, each trained together
                    size = math.ceil(len(group) / self.num_actors)
                else:  # guided self-scheduling: big chunks first, small ones to even out the end
                    size = max(1, math.ceil((len(group) - start) / (self.num_actors * self.chunks_per_actor)))
                chunks.append(_Chunk(ref, group[start : start + size]))
                start += size
        return chunks

    def _submit(self, chunk: _Chunk, actor: int, reduction: Reduction | None) -> ray.ObjectRef:
        chunk.actor = actor
        chunk.attempts += 1
        contexts = [self.contexts[m.metadata.dst_node_id] for m in chunk.messages]
        tasks = [(m.metadata, c.node_config, c.state, self.delays.get(m.metadata.message_id, 0.0))
                 for m, c in zip(chunk.messages, contexts)]
        return self.actors[actor].run.remote([chunk.content_ref], self.run_config, tasks, reduction)

    def _execute(self, messages: list[Message], timeout: float | None, reduction: Reduction | None
                 ) -> dict[str, Message]:
        replies: dict[str, Message] = {}
        waiting = self._chunks(messages)
        running: dict[ray.ObjectRef, _Chunk] = {}
        idle = deque(i for i, actor in enumerate(self.actors) if actor is not None)
        deadline = time.monotonic() + timeout if timeout is not None and math.isfinite(timeout) else None
        while waiting or running:
            while waiting and idle:
                chunk = waiting.popleft()
                running[self._submit(chunk, idle.popleft(), reduction)] = chunk
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=left)
            if not done:  # the round's time is up: give up on what is still running
                for chunk in running.values():
                    self._replace(chunk.actor)
                    for msg in chunk.messages:
                        replies[msg.metadata.message_id] = error_reply(
                            msg, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, f"timed out after {timeout:g} s")
                # the replacements start now, not on the next round's clock: the timeout bounds client work
                ray.get([self.actors[chunk.actor].where.remote() for chunk in running.values()])
                break
            chunk = running.pop(done[0])
            try:
                results = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                # run_client turns a client's own exception into an error reply, so this is the infrastructure:
                # the actor died, or its node did (its task may also fail half-way, e.g. "Broken pipe")
                if self._node_lost(chunk.actor, exc):
                    self._retire(chunk.actor)  # its other chunks fail the same way and are retried elsewhere
                else:
                    self._replace(chunk.actor)
                    idle.append(chunk.actor)
                if chunk.attempts < 2:
                    self.retries += 1
                    waiting.appendleft(chunk)
                else:
                    for msg in chunk.messages:
                        replies[msg.metadata.message_id] = error_reply(
                            msg, ErrorCode.CLIENT_APP_CRASHED, f"client process died twice: {exc}")
                continue
            idle.append(chunk.actor)
            results, vectorized, partials = results
            self.vectorized += vectorized
            self._partials += partials
            for msg, (reply, state) in zip(chunk.messages, results):
                self.contexts[msg.metadata.dst_node_id].state = state
                replies[msg.metadata.message_id] = reply
        return replies

    def warm_up(self) -> None:
        ray.get([actor.warm_up.remote() for actor in self.actors])

    def describe(self) -> dict:
        return {"kind": "ray", "address": self.address or "local", "actors": self.num_actors,
                "vectorized_clients": self.vectorized,
                "ray_node_ids": self.ray_node_ids, "actor_retries": self.retries, "lost_nodes": self.lost_nodes,
                "shipped_code": self.shipped_code, "worker_code": self.worker_code}

    def close(self) -> None:
        for actor in self.actors:
            if actor is not None:
                with contextlib.suppress(Exception):  # an actor on a lost node
                    ray.kill(actor, no_restart=True)
        self.actors = []
        if self._snapshot:
            shutil.rmtree(self._snapshot.parent, ignore_errors=True)
        if self._user_code:
            shutil.rmtree(self._user_code, ignore_errors=True)
        if self._owns_connection:
            ray.shutdown()  # stops a local instance we started; only disconnects from an existing cluster


def pool_size(resources: ResourcesSection, cluster: dict[str, float]) -> int:
    """How many actors fit the cluster given each one's CPU and GPU share (at least 1)."""
    fits = [cluster.get("CPU", 1) / resources.num_cpus]
    if resources.num_gpus > 0:
        if cluster.get("GPU", 0) <= 0:
            raise FedsimError("run.resources.num_gpus", f"{resources.num_gpus} GPUs per client but the Ray cluster "
                              "has none", "set num_gpus = 0, or run on a machine with a GPU")
        fits.append(cluster["GPU"] / resources.num_gpus)
    size = max(1, int(min(fits) + 1e-9))
    return min(size, resources.max_actors) if resources.max_actors else size


