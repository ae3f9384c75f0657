"""clip-compile: render each queued project into one H.264/AAC MP4 (plus a JPEG poster)
under BACKFILL_OUTPUT_ROOT, and record it through the API.

uv run backfill run clip-compile --dry-run
uv run python -m flows.clip_compile        # the same, with defaults

One chunk is one project by default (a render is heavy). Each project is:

1. claimed by the engine through the spec's `claim` (`claim_compile`, in the chunk's
   thread, with the run's one client): `PUT /projects/{id}/status` to `compiling`
   (`failed` -> `queued` first with `mode=failed`). A 409 means another run holds it: this
   run skips it and counts it as unchanged, never as a failure (the other run may still
   compile it);
2. described in one call (`GET /projects/{id}/compilation-context`), handed to compute in
   `Job.context`: clips, extras, tier limits, remaining render seconds;
3. planned (compute, `compile_project`: no API calls from here on) from file headers
   only: the first `max_clips` clips, the height capped at the tier's `max_height`, every
   path under the media root, every span inside its media. A render that would exceed the
   remaining render seconds fails here, before any rendering;
4. rendered on the run's compute threads (`flows.compute.render` streams frames: memory
   stays bounded) to a name derived from the project and its plan, written atomically, so
   a retried render overwrites the same file and never leaves a second copy (a dry run
   stops before rendering and returns `Planned`: counted as would-apply);
5. posted as a `ClipCompileResult` by the engine; the server links the output media
   record, marks the project compiled and counts render usage once (Idempotency-Key).

A bad project (missing or unsafe media, a span outside its media, no clips, over quota,
a failed render) raises `MediaError`: the engine posts it to `/failures` and the project
becomes `failed` with that reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Annotated

from prefect import get_run_logger
from pydantic import Field

from api.schemas import (
    BackfillKind,
    ClipCompileResult,
    CompilationContext,
    MediaPublic,
    PendingItem,
    ProjectStatus,
    ProjectStatusUpdate,
    ReprocessMode,
    is_url,
)
from flows.client import BackfillClient, ConflictError, Logger, NotFoundError
from flows.compute.errors import MediaError
from flows.compute.hashing import hash_file
from flows.compute.render import (
    COMPUTE_VERSION,
    MediaInfo,
    RenderClip,
    RenderPlan,
    plan_timeline,
    probe_media,
    render,
    sweep_parts,
)
from flows.engine import BackfillReport, backfill_flow, run_backfill
from flows.media import RemotePolicy, downloaded, resolve_media_path
from flows.settings import ClientSettings, ConfigError, load_settings
from flows.spec import (
    Backfill,
    BackfillParams,
    BatchSize,
    Job,
    Limit,
    Mismatch,
    PauseChunks,
    Planned,
    Ratio,
    ShardIndex,
    Skip,
    differences,
)

logger = logging.getLogger(__name__)

#: Frame rate of a project that sets none.
DEFAULT_FPS = 24.0
#: Seconds of quota a planned render may exceed by (float noise), as the server allows.
QUOTA_SLACK_S = 1e-6

Fps = Annotated[float, Field(ge=1, le=120, allow_inf_nan=False)]


class CompileParams(BackfillParams):
    """clip-compile: one project per chunk; a project without fps renders at `default_fps`."""

    not_parameters = frozenset({"media_type"})  # items are projects
    # A render is counted once: no recompiling of compiled projects (all, stale).
    modes = frozenset({ReprocessMode.MISSING, ReprocessMode.FAILED})

    batch_size: BatchSize = Field(
        1, description="Projects per chunk task (and per POST), 1 to 1000; renders are heavy."
    )
    limit: Limit = Field(
        None, description="Process at most this many projects in this run; empty for all."
    )
    dry_run: bool = Field(
        False,
        description="Claim and render nothing: check each project's media, spans and quota "
        "from file headers, and report what would render.",
    )
    mode: ReprocessMode = Field(
        ReprocessMode.MISSING,
        description="missing: the queued projects (and stale leases); failed: requeue and "
        "render the failed projects (quarantined ones included) only.",
    )
    shard_index: ShardIndex = Field(
        0,
        description="This run's shard, 0 to shard_count - 1 (projects with id % count == index).",
    )
    max_failure_ratio: Ratio = Field(
        1.0,
        description="End Failed when more than this share of projects fail (0 to 1); 1 by "
        "default: a bad project (over quota, missing clip) is its owner's problem and is "
        "recorded on the project, while a bad media or output root fails the run at once.",
    )
    default_fps: Fps = Field(DEFAULT_FPS, description="Frame rate of projects that set none.")
    pause_failed_chunks: PauseChunks = Field(
        0,
        description="Circuit breaker: pause after this many consecutive projects failed; 0 "
        "(default) turns this check off: one chunk is one project, and a few bad projects "
        "in a row are their owners' problem.",
    )


# --- Claim: one project, through the API --------------------------------------------------


def claim_project(client: BackfillClient, project_id: int, *, requeue: bool) -> str | None:
    """Mark the project `compiling` (from `failed` via `queued` when `requeue`).

    Returns None once claimed, or why this run must leave the project alone.
    """

    def put(status: ProjectStatus) -> None:
        client.set_project_status(project_id, ProjectStatusUpdate(status=status))

    try:
        if requeue:
            try:
                put(ProjectStatus.QUEUED)
            except ConflictError:
                pass  # requeued by someone else already; the claim below decides
        put(ProjectStatus.COMPILING)
    except ConflictError as exc:
        return f"project {project_id} was claimed by another run ({exc.detail})"
    except NotFoundError:
        return f"project {project_id} no longer exists"
    return None


def claim_compile(client: BackfillClient, job: Job[CompileParams]) -> Job[CompileParams] | Skip:
    """The engine's pre-step for one project: claim it (not in a dry run), then fetch its
    compilation context for `compile_project`. `Skip` if another run holds it."""
    project_id = job.item.record_id
    if not job.params.dry_run:
        refused = claim_project(client, project_id, requeue=job.params.mode is ReprocessMode.FAILED)
        if refused is not None:
            logger.info("skipping: %s", refused)
            return Skip(refused)
    return replace(job, context=client.compilation_context(project_id))


# --- Compute: one project, no API calls ----------------------------------------------------


def content_key(context: CompilationContext, clips: int, height: int, fps: float) -> str:
    """16 hex characters of what the output depends on: sources, spans, size and rate."""

    def uri(media: MediaPublic | None) -> str | None:
        return media.uri if media is not None else None

    spec = {
        "clips": [[c.media.uri, c.start, c.end] for c in context.clips[:clips]],
        "intro": uri(context.intro),
        "outro": uri(context.outro),
        "transition": uri(context.transition),
        "height": height,
        "fps": fps,
    }
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class _Sources:
    """Local files of a project's media: resolved under the root, or downloaded once."""

    def __init__(self, settings: ClientSettings, stack: ExitStack) -> None:
        self.settings = settings
        self.stack = stack
        self.paths: dict[int, Path] = {}

    def path(self, media: MediaPublic, role: str) -> Path:
        if media.id not in self.paths:
            try:
                self.paths[media.id] = self._open(media.uri)
            except MediaError as exc:
                raise MediaError(f"{role} (media {media.id}): {exc}") from None
        return self.paths[media.id]

    def _open(self, uri: str) -> Path:
        if is_url(uri):
            policy = RemotePolicy.from_settings(self.settings)
            return self.stack.enter_context(downloaded(uri, policy))
        return resolve_media_path(self.settings.MEDIA_ROOT, uri)


def _cached(probe: Callable[[Path], MediaInfo]) -> Callable[[Path], MediaInfo]:
    seen: dict[Path, MediaInfo] = {}

    def cached(path: Path) -> MediaInfo:
        if path not in seen:
            seen[path] = probe(path)
        return seen[path]

    return cached


def media_uri(settings: ClientSettings, path: Path) -> str:
    """`path` as a record uri: POSIX, relative to the media root."""
    try:
        return path.resolve().relative_to(settings.MEDIA_ROOT.resolve()).as_posix()
    except ValueError:
        raise MediaError(f"{path} is not under the media root") from None


def compile_project(job: Job[CompileParams]) -> ClipCompileResult | Planned:
    """Plan (headers only), check the quota, then render one claimed project."""
    params, settings, context = job.params, job.settings, job.context
    if not isinstance(context, CompilationContext):
        raise RuntimeError("clip-compile computes claimed projects only (see claim_compile)")
    project_id = job.item.record_id
    tier, project = context.tier, context.project
    if not context.clips:
        raise MediaError("project has no clips")
    kept = context.clips[: tier.max_clips]
    if len(kept) < len(context.clips):
        logger.info(
            "project %d: rendering the first %d of %d clips (tier %s allows %d)",
            project_id,
            len(kept),
            len(context.clips),
            tier.name,
            tier.max_clips,
        )
    probe = _cached(probe_media)
    with ExitStack() as stack:
        sources = _Sources(settings, stack)
        clips = [
            RenderClip(path=sources.path(c.media, f"clip {n}"), start=c.start, end=c.end)
            for n, c in enumerate(kept, start=1)
        ]
        extras = {
            role: sources.path(media, role) if media is not None else None
            for role, media in (
                ("intro", context.intro),
                ("outro", context.outro),
                ("transition", context.transition),
            )
        }
        first = probe(clips[0].path)
        height = min(project.height or first.height, tier.max_height)
        fps = project.fps or params.default_fps
        plan = RenderPlan(
            clips=clips,
            intro=extras["intro"],
            outro=extras["outro"],
            transition=extras["transition"],
            height=height,
            fps=fps,
            output_dir=settings.output_root,
            name_stem=f"project-{project_id}-{project.name[:100]}",
            content_key=content_key(context, len(kept), height, fps),
        )
        timeline = plan_timeline(plan, probe=probe)
        remaining = context.remaining_render_seconds
        if timeline.duration > remaining + QUOTA_SLACK_S:
            raise MediaError(
                f"render quota exceeded: the video would last {timeline.duration:.2f} s but "
                f"owner {project.owner!r} has {remaining:.2f} s of "
                f"{tier.monthly_render_seconds:g} s left this month (tier {tier.name!r}); "
                "not rendered"
            )
        if params.dry_run:
            note = f"would render {timeline.duration:.2f} s at {timeline.width}x{timeline.height}"
            return Planned(note=note)
        output = render(plan)
    logger.info(
        "project %d: %.2f s of %dx%d video, %d bytes, rendered in %.2f s",
        project_id,
        output.duration,
        timeline.width,
        timeline.height,
        output.size_bytes,
        output.elapsed_seconds,
    )
    return ClipCompileResult(
        project_id=project_id,
        output_uri=media_uri(settings, output.path),
        thumbnail_uri=media_uri(settings, output.thumbnail),
        duration=output.duration,
        hash=output.sha256,
        size_bytes=output.size_bytes,
        render_seconds=output.duration,
    )


# --- Verify: the output file against its record, not a second render ----------------------

#: Seconds a compiled output's duration may differ from its record (ffmpeg's resolution).
DURATION_TOLERANCE_S = 0.01


def verify_outputs(
    client: BackfillClient, settings: ClientSettings, items: list[PendingItem]
) -> list[Mismatch]:
    """Each sampled project: its output media record exists, and the file at its uri has the
    sha256 and duration the record holds."""
    found: list[Mismatch] = []
    for item in items:
        project_id = item.record_id
        project = client.get_project(project_id)
        if project.output_media_id is None:
            found.append(Mismatch(record_id=project_id, field="output_media_id", recomputed="set"))
            continue
        media = client.get_media(project.output_media_id)
        try:
            path = resolve_media_path(settings.MEDIA_ROOT, media.uri)
            actual = {"hash": hash_file(path, "sha256"), "duration": probe_media(path).duration}
        except MediaError as exc:
            found.append(
                Mismatch(
                    record_id=project_id, field="output", stored=media.uri, recomputed=str(exc)
                )
            )
            continue
        found += differences(
            project_id,
            {"hash": media.hash, "duration": media.duration},
            actual,
            {"duration": DURATION_TOLERANCE_S},
        )
    return found


CLIP_COMPILE = Backfill(
    kind=BackfillKind.CLIP_COMPILE,
    result_model=ClipCompileResult,
    compute=compile_project,
    compute_version=COMPUTE_VERSION,
    executor="thread",  # moviepy drives ffmpeg subprocesses; the GIL is not the limit
    open_file=None,  # items are projects; compute opens their media itself
    claim=claim_compile,
    verify=verify_outputs,
)


def check_roots(settings: ClientSettings, *, create_output: bool) -> None:
    """Fail the run at once (before any project is claimed) if the roots are unusable."""
    if not settings.MEDIA_ROOT.is_dir():
        raise ConfigError(f"BACKFILL_MEDIA_ROOT {settings.MEDIA_ROOT} is not a directory")
    output = settings.output_root
    if create_output:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"BACKFILL_OUTPUT_ROOT {output} cannot be created: {exc}") from None
        if not os.access(output, os.W_OK | os.X_OK):
            raise ConfigError(f"BACKFILL_OUTPUT_ROOT {output} is not writable")


def sweep_leftovers(settings: ClientSettings, logger: Logger) -> None:
    """Remove what killed renders left under the output root (live renders' files stay)."""
    removed = sweep_parts(settings.output_root)
    if removed:
        names = ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else "")
        logger.info("removed %d temporary files of killed renders: %s", len(removed), names)


@backfill_flow(BackfillKind.CLIP_COMPILE, CompileParams)
def clip_compile(params: CompileParams) -> BackfillReport:
    """Render every queued project into one MP4 under the output root and record it."""
    settings = load_settings()
    check_roots(settings, create_output=not params.dry_run)
    logger = get_run_logger()
    if not params.dry_run:  # a dry run writes nothing, and removes nothing either
        sweep_leftovers(settings, logger)
    return run_backfill(CLIP_COMPILE, params, settings=settings)


if __name__ == "__main__":
    clip_compile()
