"""`adamshap serve`: register a scheduled deployment of the curate flow and serve it.

Schedules need a Prefect server (the ephemeral mode runs flows but not schedules):

    prefect server start --host 127.0.0.1
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    adamshap serve data_manifests/demo.yaml --cron "0 3 * * *"
"""

from __future__ import annotations

from pathlib import Path

from curation.errors import UsageError
from flows import prefect_env  # noqa: F401  (offline settings before prefect is imported)

SERVER_HELP = (
    "start a local server with `prefect server start --host 127.0.0.1` and point the CLI at it "
    "with `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
)


def api_url() -> str | None:
    """The Prefect API URL from the environment or the active profile (None when unset)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url).rstrip("/") if url else None


def check_server(url: str | None = None, timeout: float = 5.0) -> str:
    """Return the API URL when a Prefect server answers /health there; else raise UsageError."""
    import httpx

    url = url or api_url()
    if not url:
        raise UsageError(
            f"scheduled runs need a Prefect server and PREFECT_API_URL is not set: {SERVER_HELP}"
        )
    if "api.prefect.cloud" not in url:
        try:
            response = httpx.get(f"{url}/health", timeout=timeout)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise UsageError(
                f"no Prefect server answers at PREFECT_API_URL={url} ({exc.__class__.__name__}): "
                f"{SERVER_HELP}"
            ) from None
    return url


def deployment_name(manifest_name: str) -> str:
    """Deployment name for a manifest: `curate-<name>`."""
    from flows.curate import slug

    return f"curate-{slug(manifest_name)}"


def serve(
    manifest: str | Path,
    cron: str | None = None,
    interval: float | None = None,
    keep: float | None = None,
    out: str | None = None,
) -> None:
    """Serve the curate flow for `manifest` on a cron or interval schedule until interrupted."""
    from prefect.deployments.runner import EntrypointType

    from curation.manifest import load_manifest
    from flows.curate import curate_flow, resolve_out

    if (cron is None) == (interval is None):
        raise UsageError("give exactly one of --cron EXPR or --interval SECONDS")
    if interval is not None and interval <= 0:
        raise UsageError(f"--interval must be > 0 seconds, got {interval}")
    if cron is not None:
        _check_cron(cron)
    manifest_path = Path(manifest).resolve()
    loaded = load_manifest(manifest_path)  # fail now, not at the first scheduled run
    url = check_server()
    out_dir = resolve_out(str(manifest_path), loaded.name, out)
    name = deployment_name(loaded.name)
    print(f"serving deployment 'curate/{name}' on {url} ({cron or f'every {interval:g}s'})")
    print(f"outputs go to {out_dir}; stop with Ctrl-C")
    curate_flow.serve(
        name=name,
        cron=cron,
        interval=interval,
        parameters={"manifest_path": str(manifest_path), "keep": keep, "out": str(out_dir)},
        description=f"adamshap curate {manifest_path}",
        tags=["adamshap"],
        entrypoint_type=EntrypointType.MODULE_PATH,
        pause_on_shutdown=True,
        limit=1,  # never two runs of one pipeline over the same output folder at once
    )


def _check_cron(expr: str) -> None:
    """Raise UsageError for a cron expression Prefect's scheduler cannot parse."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expr)
    except Exception as exc:  # pydantic ValidationError
        detail = str(exc).splitlines()[2].strip() if len(str(exc).splitlines()) > 2 else exc
        raise UsageError(
            f"--cron {expr!r} is not a valid cron expression ({detail}); e.g. '0 3 * * *'"
        ) from None
