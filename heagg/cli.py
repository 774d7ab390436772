"""The ``heagg`` command line: thin click callbacks that build a config and call one library function.

Every ``HeaggError`` becomes one line on stderr and its exit code, in one place (``main``); a traceback
means a bug in heagg, never a mistake of the user's.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import click

from heagg import __version__
from heagg.errors import HeaggError, UsageError

logger = logging.getLogger("heagg")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="heagg")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """heagg: federated learning between hospitals with threshold-CKKS secure aggregation.

    \b
    The main paths:
      heagg keygen       the key ceremony: manifest, public context, one sealed share file per site
      heagg aggregator   the coordinator: sums encrypted updates it cannot read
      heagg node         one hospital: trains locally, encrypts, helps decrypt the sum
      heagg simulate     the whole consortium on this machine, on the bundled breast-cancer data
      heagg bench        encrypted-aggregation benchmarks against plaintext and single-key baselines
    """
    _setup_logging(verbose)


# keygen -------------------------------------------------------------------------------------------


def _features_option(value: str) -> tuple[str, ...]:
    from heagg.data import WDBC_FEATURES

    if value == "wdbc":
        return tuple(WDBC_FEATURES)
    path = Path(value)
    if path.is_file():
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        return tuple(line for line in lines if line)
    if "," in value:
        return tuple(v.strip() for v in value.split(",") if v.strip())
    raise UsageError(f"--features {value!r}: give 'wdbc', a file with one feature name per line, or a comma list")


def _ceremony_passphrases(sites: tuple[str, ...], insecure: bool) -> dict[str, str | None]:
    from heagg.ceremony import site_passphrase_env
    from heagg.crypto.keyfile import passphrase_from_env_or_prompt

    if insecure:
        return {name: None for name in (*sites, "aggregator")}
    shared = os.environ.get("HEAGG_PASSPHRASE")
    if shared:
        logger.warning("HEAGG_PASSPHRASE gives every key file the same passphrase; prefer one per site")
    out: dict[str, str | None] = {}
    for name in (*sites, "aggregator"):
        env = site_passphrase_env(name)
        if os.environ.get(env):
            out[name] = os.environ[env]
        elif shared:
            out[name] = shared
        else:
            out[name] = passphrase_from_env_or_prompt(
                env, prompt=f"New passphrase for {name}'s key file: ", confirm=True
            )
    return out


@cli.command()
@click.option("--sites", required=True, help="Comma-separated site names, e.g. hospital-a,hospital-b,hospital-c.")
@click.option("--threshold", "-t", type=int, required=True, help="How many sites must cooperate to decrypt (t of n).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New directory for the ceremony output.")
@click.option(
    "--preset",
    default="compact",
    show_default=True,
    type=click.Choice(["compact", "precise"]),
    help="CKKS parameters: compact (15 B/param) or precise (30 B/param). See README's preset table.",
)
@click.option(
    "--features",
    default="wdbc",
    show_default=True,
    help="The consortium's feature columns: 'wdbc', a file with one name per line, or a comma list.",
)
@click.option("--clip", type=float, default=1.0, show_default=True, help="Per-coordinate clip of model updates.")
@click.option(
    "--max-site-samples",
    type=int,
    default=1000,
    show_default=True,
    help="Samples that give a site full weight; larger sites count as this many (keeps encrypted sums bounded).",
)
@click.option(
    "--insecure-no-passphrase",
    is_flag=True,
    help="Seal key files without a passphrase (demos and tests only: anyone who reads a file has its secrets).",
)
def keygen(
    sites: str,
    threshold: int,
    out: Path,
    preset: str,
    features: str,
    clip: float,
    max_site_samples: int,
    insecure_no_passphrase: bool,
) -> None:
    """Run the key ceremony: split one CKKS key t-of-n among the sites.

    \b
    Writes OUT/consortium.json (manifest), OUT/public.tenseal (public context, TenSEAL format),
    OUT/aggregator.key and OUT/sites/<site>.share (sealed, mode 0600). Give each site its own share
    file plus consortium.json and public.tenseal; give the aggregator aggregator.key plus those two.
    The CKKS secret key never touches the disk.

    \b
    Passphrases: HEAGG_PASSPHRASE_<SITE> (e.g. HEAGG_PASSPHRASE_HOSPITAL_A) and
    HEAGG_PASSPHRASE_AGGREGATOR, else HEAGG_PASSPHRASE for all, else a prompt per file.
    """
    from heagg.ceremony import CeremonyConfig, run_ceremony, sites_from_option
    from heagg.fedavg import FedAvgSettings

    config = CeremonyConfig(
        sites=sites_from_option(sites),
        threshold=threshold,
        out=out,
        preset=preset,
        features=_features_option(features),
        fedavg=FedAvgSettings(clip=clip, max_site_samples=max_site_samples),
    )
    config.validate()  # before asking for passphrases
    result = run_ceremony(config, _ceremony_passphrases(config.sites, insecure_no_passphrase))
    c = result.consortium
    click.echo(f"consortium {c.consortium_id}: {c.n_sites} sites, threshold {c.threshold}, preset {c.preset}")
    click.echo(f"  scale 2^{c.scale_log2}, flooding sigma 2^{math.log2(c.sigma):.1f}, decryption budget {c.tau} chunks")
    click.echo(f"  wrote {out}/consortium.json, public.tenseal, aggregator.key, sites/<site>.share")
    click.echo(f"  manifest fingerprint {c.fingerprint[:16]}")
    if insecure_no_passphrase:
        click.echo("  WARNING: key files have no passphrase (--insecure-no-passphrase): demo use only", err=True)


# keys ----------------------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Look at key files without revealing their secrets."""


@keys.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--check-passphrase",
    is_flag=True,
    help="Also verify the sealed part (passphrase from HEAGG_PASSPHRASE or a prompt).",
)
def keys_inspect(file: Path, check_passphrase: bool) -> None:
    """Print what FILE is, its fingerprint, and whether it is intact.

    FILE is a site share file, the aggregator's key file, consortium.json or public.tenseal.
    """
    from heagg.inspect import describe

    for line in describe(file, check_passphrase=check_passphrase):
        click.echo(line)


def main() -> None:
    try:
        code = cli.main(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except HeaggError as exc:
        click.echo(f"heagg: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("heagg: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("heagg: interrupted", err=True)
        sys.exit(130)
