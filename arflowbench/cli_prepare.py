"""`arflowbench prepare ...`: one-off data preparation (today: VAE latent caches).

Registered on the main app in `cli.py`; heavy modules load inside the command, so `--help` stays
fast. Errors surface as one ``error:`` line with exit code 2 through `cli.main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

prepare_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                         help="Prepare data once (VAE latent caches).")


@prepare_app.command("latents")
def latents(
        vae: str = typer.Option(..., "--vae", help="AutoencoderKL folder (save_pretrained layout), "
                                "or a hub id such as stabilityai/sd-vae-ft-ema where online"),
        images: Path = typer.Option(..., "--images", help="image folder, one sub-folder per class"),
        size: int = typer.Option(..., "--size", help="pixel size after ADM's center crop: 128 or "
                                 "256 for the paper (any multiple of the VAE's factor, 8)"),
        out: Path = typer.Option(..., "--out", help="cache folder to create"),
        batch_size: int = typer.Option(32, help="images per encoder call (each also flipped)"),
        shard_size: int = typer.Option(5000, help="images per shard file (the unit of resumption)"),
        device: str = typer.Option("auto", help="auto | cpu | cuda (cuda:LOCAL_RANK under torchrun)"),
        workers: int = typer.Option(4, help="threads decoding images"),
        progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                             help="progress bar (default: when stderr is a terminal)"),
) -> None:
    """Encode an image folder into posterior moments (mean, log-variance) of every image and its
    horizontal flip. Resumable: rerun the same command after an interruption. Under torchrun each
    rank encodes every W-th shard; the last one to finish publishes the cache."""
    from arflowbench.latents.prepare import prepare_latents

    show = sys.stderr.isatty() if progress is None else progress
    done = prepare_latents(vae, images, size, out, batch_size=batch_size, shard_size=shard_size,
                           device=device, workers=workers, progress=show,
                           echo=lambda s: typer.echo(s, err=True))
    if done is None:
        typer.echo(f"{out}: this rank's shards are written; another rank publishes the cache")
    else:
        typer.echo(f"wrote {done}")
