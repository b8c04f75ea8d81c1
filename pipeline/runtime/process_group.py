"""SHELL: the workers' torch process group, kept on loopback when the run is on one machine.

Ray Train's `TorchConfig` starts `torch.distributed` with `init_method="env://"`: rank 0's
`TCPStore` then listens on every interface (`::`), whatever `MASTER_ADDR` says, so a laptop
run that keeps Ray itself on 127.0.0.1 would still open one port to the network. When the
workers' node address is loopback (embedded Ray, `launch.connect`), `LoopbackTorchConfig`
binds the store's socket to 127.0.0.1 itself and hands it to `TCPStore(master_listen_fd=...)`,
and pins gloo's own sockets to the loopback interface. On a cluster (a routable node address)
it is Ray's `TorchConfig`, unchanged.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ray.train.torch.config import TorchConfig, _TorchBackend
from ray.train.torch.config import _set_torch_distributed_env_vars as _set_local_rank_env

_STORE: Any = None  # rank 0's TCPStore server: lives as long as its worker process


def _loopback_interface() -> str | None:
    """The loopback interface's name (`lo` on Linux, `lo0` on macOS), for GLOO_SOCKET_IFNAME."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n in ("lo", "lo0")), None)


def _serve_store(world_size: int, timeout_s: int) -> int:
    """On rank 0: the store's listening socket on 127.0.0.1 (a free port), served by a
    `TCPStore`. Returns the port for the other ranks."""
    import torch.distributed as dist

    global _STORE
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    _STORE = dist.TCPStore(
        "127.0.0.1",
        port,
        world_size,
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=sock.detach(),  # the store owns the socket from here on
    )
    return port


def _join(backend: str, my_rank: int, world_size: int, port: int, timeout_s: int) -> None:
    """On every rank: join the process group through the loopback store."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if my_rank == 0:
        store = _STORE
    else:
        store = dist.TCPStore("127.0.0.1", port, world_size, timeout=timeout)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    interface = _loopback_interface()
    if backend == "gloo" and interface and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = interface  # gloo's pair sockets: loopback too
    dist.init_process_group(
        backend=backend, store=store, rank=my_rank, world_size=world_size, timeout=timeout
    )


def _node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        address = worker_group.execute_single(0, _node_address)
        if not address.startswith("127.") or backend_config.backend is None:
            return super().on_start(worker_group, backend_config)
        world, timeout_s = len(worker_group), backend_config.timeout_s
        port = worker_group.execute_single(0, _serve_store, world_size=world, timeout_s=timeout_s)
        worker_group.execute(_set_local_rank_env)  # LOCAL_RANK & co., as Ray's own start sets
        import ray

        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    _join,
                    backend=backend_config.backend,
                    my_rank=rank,  # `rank` is execute_single_async's own
                    world_size=world,
                    port=port,
                    timeout_s=timeout_s,
                )
                for rank in range(world)
            ]
        )


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """`TorchConfig` whose process group stays on 127.0.0.1 when the workers' node does."""

    @property
    def backend_cls(self) -> type:
        return _LoopbackTorchBackend
