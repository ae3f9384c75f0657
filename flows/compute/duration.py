"""Duration of a media file in seconds, verified against its data (see `flows.compute.probe`)."""

from __future__ import annotations

from pathlib import Path

from flows.compute.probe import probe

#: The compute version of media-duration (stored beside each value it makes): bump it when
#: results change; `backfill run media-duration --mode stale` then redoes the older records.
COMPUTE_VERSION = 1


def media_duration(path: Path) -> float:
    """Seconds of media in the file at `path`, at full precision.

    A sample count (WAV, FLAC, Ogg, ...), a header checked against the file (mp3 Xing/LAME,
    mp4 index), or a count of demuxed frames (mp3 without header, ADTS); docs/analysis.md
    lists each format. Raises `flows.compute.errors.MediaError` for a missing, empty,
    truncated, corrupt or non-media file: a failure is never returned as 0.0.
    """
    return probe(path).duration
