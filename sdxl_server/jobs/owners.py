"""What one caller's key may use: its limits and its share of the queue. Read from the keys file
by the api (one :class:`Limits` per key, carried on the caller's ``Identity``), enforced by the
api's admission (requests per minute, allowed models and LoRAs) and by the queue (jobs running
and waiting, images and GPU-seconds per day, the fair queue's weight). Never imports torch or
aiohttp."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """One key's limits; None is no limit. ``models`` and ``loras`` name what it may use (None:
    any); ``weight`` is its share of the fair queue (a key of weight 2 is taken twice as often as
    one of weight 1 while both have jobs waiting)."""

    requests_per_minute: int | None = None
    running: int | None = None
    waiting: int | None = None
    images_per_day: int | None = None
    gpu_seconds_per_day: float | None = None
    models: tuple[str, ...] | None = None
    loras: tuple[str, ...] | None = None
    weight: int = 1


UNLIMITED = Limits()
