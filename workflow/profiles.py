"""Make the project's profiles answer to their short names: ``snakemake --profile slurm``.

Snakemake looks a profile name up in the working directory, then in the user's and the site's
Snakemake config directories. This links each ``profiles/<name>`` of the repository into the user's
directory (``~/.config/snakemake/<name>``, or under ``$XDG_CONFIG_HOME``), so the name works from the
repository root; ``--profile profiles/<name>`` works without it. A name the user already has for
another profile is left alone, and said so.

    python -m workflow.profiles          # what `make setup` runs
"""

from __future__ import annotations

import sys
from pathlib import Path

from snakemake.common import get_appdirs

ROOT = Path(__file__).resolve().parents[1]


def install(profiles: Path = ROOT / "profiles", target: Path | None = None) -> list[str]:
    """Link every profile folder into ``target`` (the user's Snakemake config directory); one line per profile."""
    target = Path(get_appdirs().user_config_dir) if target is None else target
    target.mkdir(parents=True, exist_ok=True)
    report = []
    for profile in sorted(p for p in profiles.iterdir() if (p / "config.yaml").is_file()):
        link = target / profile.name
        if link.is_symlink() and link.resolve() == profile.resolve():
            report.append(f"--profile {profile.name}: {link} -> {profile} (already)")
        elif link.is_symlink() and not link.exists():  # left by a checkout that is gone
            link.unlink()
            link.symlink_to(profile.resolve(), target_is_directory=True)
            report.append(f"--profile {profile.name}: {link} -> {profile} (replaced a dangling link)")
        elif link.exists():
            report.append(
                f"--profile {profile.name}: {link} is another profile, left alone; "
                f"use --profile {profile.relative_to(ROOT)}"
            )
        else:
            link.symlink_to(profile.resolve(), target_is_directory=True)
            report.append(f"--profile {profile.name}: {link} -> {profile}")
    return report


if __name__ == "__main__":
    print("\n".join(install()))
    sys.exit(0)
