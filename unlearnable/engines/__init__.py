"""Engines that run protect's work elsewhere than the local process pool.

:mod:`.ray_engine`: :class:`~.ray_engine.RayExecutor`, an :class:`~unlearnable.io.executors.
Executor` on a Ray cluster (``unlearnable protect --engine ray``). Ray is an optional extra
(``pip install "unlearnable[ray]"``), imported only when an engine is used.
"""
