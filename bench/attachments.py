"""Benchmark: what it costs to take in a photo someone attached (bot/attachments.py).

Makes a realistic 4000x3000 phone photo in memory (a noisy gradient, a JPEG of several MB),
then runs :func:`bot.attachments.prepare` on it a few times and prints the medians of:

* CPU seconds (``time.process_time``);
* the tracemalloc peak: Python objects only (the downloaded and re-encoded bytes); Pillow's
  pixel buffers are C memory that tracemalloc does not see;
* the process's peak RSS (``VmHWM`` in /proc/self/status), which does see them, reset before
  the run (writing 5 to /proc/self/clear_refs), next to the RSS before the run.

Each run is one photo in a fresh process (see :func:`measure_fresh`).

For comparison, the same figures for the obvious Pillow code (decode at full size, then
thumbnail), which is what the JPEG draft mode in bot/attachments.py saves.

Run by hand: ``.venv/bin/python -m bench.attachments``.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import re
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from bot.attachments import Prepared, prepare

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def make_photo(width: int = 4000, height: int = 3000) -> bytes:
    """A JPEG that compresses like a photo: gradients under sensor-like noise."""
    gradient = Image.linear_gradient("L").resize((width, height))
    across = gradient.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    bands = (gradient, across, gradient.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    channels = [Image.blend(b, Image.effect_noise((width, height), 24), 0.35) for b in bands]
    out = io.BytesIO()
    Image.merge("RGB", channels).save(out, "JPEG", quality=92)
    return out.getvalue()


def _status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: VmHWM starts again from the current RSS
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Run:
    cpu_s: float
    tracemalloc_peak_mb: float
    rss_before_mb: float | None
    rss_peak_mb: float | None


def measure_once(step: Callable[[bytes], object], data: bytes) -> Run:
    """One run of ``step(data)`` in this process (see :func:`measure_fresh`)."""
    reset = _reset_peak_rss()
    before = _status_kb("VmRSS")
    tracemalloc.start()
    started = time.process_time()
    step(data)
    cpu = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _status_kb("VmHWM") if reset else None
    return Run(
        cpu,
        peak / 1e6,
        before / 1024 if before is not None else None,
        hwm / 1024 if hwm is not None else None,
    )


def measure_fresh(step: Callable[[bytes], object], data: bytes) -> Run:
    """One run in a new process, after a warm-up on a tiny photo (Pillow loads its codecs
    lazily). A new process because the C heap keeps what an earlier run freed: a second run
    in the same process reuses it and its peak RSS would hide what one photo needs."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        pool.apply(step, (make_photo(64, 48),))
        return pool.apply(measure_once, (step, data))


def median_run(step: Callable[[bytes], object], data: bytes, runs: int) -> Run:
    done = [measure_fresh(step, data) for _ in range(runs)]

    def mid(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    return Run(
        statistics.median(r.cpu_s for r in done),
        statistics.median(r.tracemalloc_peak_mb for r in done),
        mid([r.rss_before_mb for r in done]),
        mid([r.rss_peak_mb for r in done]),
    )


def ours(data: bytes) -> Prepared:
    return prepare([("photo.jpg", "image/jpeg", data)])


def naive(data: bytes) -> bytes:
    """The obvious way: full-size decode, rotate, thumbnail, save."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
        upright.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        upright.save(out, "JPEG", quality=85, optimize=True)
        return out.getvalue()


def show(label: str, run: Run) -> str:
    rss = (
        f"peak RSS {run.rss_peak_mb:.0f} MB (from {run.rss_before_mb:.0f} MB before, "
        f"+{run.rss_peak_mb - run.rss_before_mb:.0f} MB)"
        if run.rss_peak_mb is not None and run.rss_before_mb is not None
        else "peak RSS unavailable (no /proc/self/clear_refs)"
    )
    return (
        f"{label}: {run.cpu_s * 1000:.0f} ms of CPU, tracemalloc peak "
        f"{run.tracemalloc_peak_mb:.1f} MB, {rss}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    data = make_photo(args.width, args.height)
    (part,) = ours(data).images
    print(
        f"{args.width}x{args.height} JPEG of {len(data) / 1e6:.1f} MB -> {part.width}x"
        f"{part.height} JPEG of {len(part.data) / 1e3:.0f} KB; median of {args.runs} runs:"
    )
    print(show("  prepare()", median_run(ours, data, args.runs)))
    print(show("  naive Pillow", median_run(naive, data, args.runs)))


if __name__ == "__main__":
    main()
