"""Duration of a media file in seconds, from its headers (see `flows.compute.probe`)."""

from __future__ import annotations

from pathlib import Path

from flows.compute.probe import probe


def media_duration(path: Path) -> float:
    """Seconds of media in the file at `path`.

    Exact (``frames / samplerate``) for what libsndfile reads (WAV, FLAC, Ogg, MP3, ...),
    to ffmpeg's 10 ms banner precision for video and other containers. Raises
    `flows.compute.errors.MediaError` for a missing, empty, corrupt or non-media file.
    """
    return probe(path).duration
