"""`normlab train | diagnose | reproduce | demo | bench`: argument parsing only; the work lives in the modules below."""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="normlab")
def main() -> None:
    """normlab: normalization layers, the instruments of the papers, and their reproduction."""


@main.command()
def demo() -> None:
    """The main job on embedded/offline data (make demo)."""
    raise click.ClickException("demo: not built yet")


if __name__ == "__main__":
    main()
