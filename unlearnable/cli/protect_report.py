"""Output of ``unlearnable protect``: warnings, failures, the summary table (with the
clustering rows), the expectation line, and the JSON summary."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from .common import err_console, out_console, print_json, summary_table, warn


@contextmanager
def surrogate_warnings():
    """Show a random-surrogate warning as one readable line (other warnings pass through)."""
    from ..protect.surrogate import WeakSurrogateWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WeakSurrogateWarning)
        try:
            yield
        finally:
            for item in caught:
                if issubclass(item.category, WeakSurrogateWarning):
                    warn(str(item.message))
                else:
                    warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def report_protect_run(run_result, quiet: bool, as_json: bool) -> None:
    from rich.markup import escape

    from ..io.manifest import display_name
    from ..protect.expectations import expect_for_run

    summary = run_result.manifest.summary
    expectation = expect_for_run(run_result.manifest.method, run_result.succeeded)
    budget = run_result.manifest.parameters.get("output", {}).get("max_visual_cost")
    if summary.get("over_budget"):
        warn(
            f"{summary['over_budget']} files are over the visual-cost budget {budget} even at "
            "the weakest setting; they were written at it and are flagged over_budget in the "
            "manifest"
        )
    clustering = run_result.manifest.extra.get("clustering")
    if run_result.lossy_output:
        warn(
            "some outputs were written in a lossy format (JPEG/WebP). JPEG with the source's "
            "tables (the default) kept the protection on CIFAR-10 (PER 0.86 vs 0.84 as PNG, "
            "benchmarks/output_format_cifar10.py); a low --quality or WebP may lose part of it. "
            "--format png keeps the pixels exactly."
        )
    if as_json:
        print_json(
            {
                "output": str(run_result.output_dir),
                "manifest": str(run_result.manifest_path),
                "key_fingerprint": run_result.manifest.key_fingerprint,
                "method": run_result.manifest.method,
                **({"clustering": clustering} if clustering else {}),
                **summary,
                "expectation": expectation.to_json() if expectation else None,
                "failures": [
                    {"path": display_name(r.path), "error": r.error} for r in run_result.failed
                ],
            }
        )
        return
    for record in run_result.failed:
        err_console.print(
            f"[red]failed:[/] {escape(display_name(record.path))}: {escape(record.error or '')}",
            highlight=False,
        )
    skipped = run_result.skipped
    if skipped:
        reasons: dict[str, int] = {}
        for record in skipped:
            kind = (record.reason or "skipped").split(";")[0].split(" (")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        detail = ", ".join(f"{count} {kind}" for kind, count in sorted(reasons.items()))
        err_console.print(
            f"[yellow]skipped:[/] {len(skipped)} files ({escape(detail)}); listed in the manifest",
            highlight=False,
        )
    if clustering and clustering.get("uc"):
        err_console.print(
            f"[yellow]warning:[/] {clustering['state_file']} in the output folder holds the "
            "perturbations, which would let anyone remove them: keep it (it makes --resume "
            "fast) but do not publish it with the images",
            highlight=False,
        )
    if quiet:
        return
    rate = summary.get("images_per_second")
    rows = [
        ("files", str(summary["files"])),
        (
            "protected",
            f"{summary['ok']}"
            + (f" ({summary['resumed']} from an earlier run)" if summary["resumed"] else ""),
        ),
        ("failed", str(summary["failed"])),
        ("skipped", str(summary.get("skipped", 0))),
        (
            "mean PSNR",
            f"{summary['mean_psnr']:.2f} dB" if summary["mean_psnr"] is not None else "-",
        ),
        ("mean SSIM", f"{summary['mean_ssim']:.4f}" if summary["mean_ssim"] is not None else "-"),
        ("visual cost", _visual_cost_text(summary, budget)),
        ("time", f"{summary['seconds']:.1f} s" + (f" ({rate:.1f} images/s)" if rate else "")),
        ("key", run_result.manifest.key_fingerprint),
        ("output", str(run_result.output_dir)),
    ]
    if clustering:
        rows[-2:-2] = clustering_rows(run_result.manifest.method, clustering)
    out_console.print(summary_table("unlearnable protect", rows))
    if expectation is not None:
        out_console.print(expectation.line(), highlight=False, soft_wrap=True)


def _visual_cost_text(summary: dict, budget: float | None) -> str:
    """``mean 0.012, max 0.031 (budget 0.05: 2 weakened, 1 over)`` for the summary table."""
    if summary.get("mean_visual_cost") is None:
        return "-"
    text = f"mean {summary['mean_visual_cost']:.3f}, max {summary['max_visual_cost']:.3f}"
    if budget is not None:
        text += (
            f" (budget {budget:g}: {summary.get('weakened', 0)} weakened, "
            f"{summary.get('over_budget', 0)} over)"
        )
    return text


def clustering_rows(method: str, clustering: dict) -> list[tuple[str, str]]:
    """Summary rows for a run that used surrogate clusters (UC or cluster-CUDA)."""
    rate = clustering.get("feature_images_per_second")
    features = (
        "from the cache"
        if clustering.get("features_from_cache")
        else f"{clustering.get('feature_seconds', 0):.1f} s"
        + (f" ({rate:.1f} images/s)" if rate else "")
    )
    rows = [
        ("method", "Unlearnable Clusters" if method == "uc" else "CUDA on clusters"),
        ("surrogate", f"{clustering['surrogate']} ({clustering.get('surrogate_name', '')})"),
        (
            "clusters",
            f"{clustering['k']} (sizes {', '.join(map(str, clustering['cluster_sizes']))})",
        ),
        ("features", features),
    ]
    uc = clustering.get("uc")
    if uc:
        rows.append(
            (
                "perturbations",
                f"eps {uc['eps_255']:g}/255, {uc['config']['steps']} steps, "
                + (
                    "from the cache"
                    if clustering.get("state_from_cache")
                    else f"{uc['optimise_seconds']:.1f} s"
                ),
            )
        )
    rows.append(
        (
            "do not publish",
            f"{clustering['state_file']} and {clustering['feature_cache']} (run caches"
            + (": they hold the perturbations" if uc else "")
            + "); share only the images",
        )
    )
    return rows
