"""Ray start-up for the Ray engines (predict/ray_engine.py, serve/ray_engine.py): import Ray, join a cluster
or start one.

Needs the `ray` extra; without it, the error says so in one line.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from bertdeploy.errors import import_extra


def import_ray():
    """The `ray` module, with Ray Data and Ray Serve loaded; a BertdeployError naming the extra when missing."""
    for module in ("ray.data", "ray.serve"):
        import_extra(module, "ray", "--engine ray", "Ray")
    return sys.modules["ray"]


@contextlib.contextmanager
def ray_cluster(address: str | None = None):
    """Connect to the cluster at `address` (or $RAY_ADDRESS), else start a local one for this run only."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
