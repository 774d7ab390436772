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
    "--min-sites",
    type=int,
    default=None,
    help="Fewest contributions a share holder accepts in one sum [default: max(2, threshold)].",
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
    min_sites: int | None,
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
        min_sites=min_sites,
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


# aggregator and node ------------------------------------------------------------------------------


def _service_logging() -> None:
    """Services log one line per round event by default (-v adds debug)."""
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)


def _key_passphrase(path: Path) -> str | None:
    """None for a file sealed with --insecure-no-passphrase, else HEAGG_PASSPHRASE or a prompt."""
    from heagg.crypto.keyfile import inspect_keyfile, passphrase_from_env_or_prompt

    if inspect_keyfile(path).insecure:
        return None
    return passphrase_from_env_or_prompt("HEAGG_PASSPHRASE", prompt=f"Passphrase for {path}: ", confirm=False)


def _hidden_widths(hidden: str) -> tuple[int, ...]:
    try:
        return tuple(int(h) for h in hidden.split(",") if h.strip())
    except ValueError:
        raise UsageError(f"--hidden {hidden!r}: give comma-separated layer widths, e.g. 32,16") from None


def _plan(
    model: str,
    hidden: str,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    rounds: int,
    seed: int,
    n_features: int,
):
    from heagg.protocol.plan import TrainingPlan

    return TrainingPlan(
        model={"kind": model, "n_features": n_features, "hidden": list(_hidden_widths(hidden))},
        train={"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer},
        rounds=rounds,
        seed=seed,
    )


def _plan_options(f):
    for option in reversed(
        [
            click.option(
                "--model",
                type=click.Choice(["logreg", "mlp"]),
                default="logreg",
                show_default=True,
                help="The model every site trains.",
            ),
            click.option("--hidden", default="16", show_default=True, help="MLP hidden layer widths, comma-separated."),
            click.option(
                "--epochs", type=click.IntRange(1), default=10, show_default=True, help="Local epochs per round."
            ),
            click.option(
                "--lr",
                type=click.FloatRange(min=0, min_open=True),
                default=0.1,
                show_default=True,
                help="Local learning rate.",
            ),
            click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True),
            click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True),
            click.option(
                "--seed",
                type=int,
                default=0,
                show_default=True,
                help="Seed of the initial model and of local shuffling.",
            ),
        ]
    ):
        f = option(f)
    return f


@cli.command()
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Key directory: consortium.json, public.tenseal and aggregator.key (no share files needed).",
)
@click.option("--bind", default="tcp://127.0.0.1:5555", show_default=True, help="Where nodes connect (ZeroMQ address).")
@click.option("--rounds", type=click.IntRange(1), default=10, show_default=True, help="Training rounds to run.")
@click.option(
    "--min-sites",
    type=int,
    default=None,
    help="Fewest contributions a round needs [default: the consortium's minimum from the ceremony].",
)
@click.option(
    "--round-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds sites have to submit, and to acknowledge a result.",
)
@click.option(
    "--decrypt-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds share holders have to consent and decrypt [default: --round-timeout].",
)
@click.option(
    "--state",
    type=click.Path(path_type=Path),
    default=Path("heagg-aggregator-state"),
    show_default=True,
    help="Directory for the aggregator's progress; a restart resumes from it.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Give up (exit 3, state kept) after this many failed attempts of one step.",
)
@click.option(
    "--key-file",
    type=click.Path(path_type=Path),
    default=None,
    help="The aggregator's key file [default: KEYS/aggregator.key].",
)
@_plan_options
def aggregator(
    keys_dir: Path,
    bind: str,
    rounds: int,
    min_sites: int | None,
    round_timeout: float,
    decrypt_timeout: float | None,
    state: Path,
    max_attempts: int,
    key_file: Path | None,
    model: str,
    hidden: str,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    seed: int,
) -> None:
    """Run the aggregator: announce rounds, sum encrypted updates blindly, relay sealed partial decryptions.

    \b
    It never holds a key share or the site group key and cannot read any update, sum or sample count.
    Rounds need at least --min-sites submissions and the consortium's threshold of responsive share
    holders; a round that falls short is re-run (fresh encryptions) up to --max-attempts times.
    Its key file passphrase comes from HEAGG_PASSPHRASE or a prompt.
    """
    from heagg.consortium import AGGREGATOR_KEY_FILE, Consortium
    from heagg.protocol.aggregator import Aggregator, AggregatorConfig
    from heagg.sitekeys import load_aggregator_keys

    _service_logging()
    consortium = Consortium.load(keys_dir)
    key_path = key_file or keys_dir / AGGREGATOR_KEY_FILE
    keys = load_aggregator_keys(keys_dir, passphrase=_key_passphrase(key_path), key_file=key_path)
    config = AggregatorConfig(
        keys_dir=keys_dir,
        bind=bind,
        plan=_plan(model, hidden, epochs, lr, batch_size, optimizer, rounds, seed, len(consortium.features)),
        state=state,
        min_sites=min_sites,
        round_timeout=round_timeout,
        decrypt_timeout=decrypt_timeout,
        max_attempts=max_attempts,
    )
    sys.exit(Aggregator(config, keys).run())


@cli.command()
@click.option("--site", required=True, help="This site's name, as in the ceremony.")
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Key directory: consortium.json, public.tenseal and sites/<site>.share.",
)
@click.option("--connect", default="tcp://127.0.0.1:5555", show_default=True, help="The aggregator's address.")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="This site's training data: CSV (or Parquet) with the consortium's feature columns.",
)
@click.option("--target", required=True, help="The binary target column (0/1 or two labels such as M/B).")
@click.option(
    "--state",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory for this site's state, ledger and final model [default: heagg-node-<site>].",
)
@click.option(
    "--test-data",
    type=click.Path(path_type=Path),
    default=None,
    help="Held-out rows for local evaluation [default: a --holdout split of --data].",
)
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Fraction of --data held out for local evaluation when --test-data is not given.",
)
@click.option(
    "--full-verify-max-chunks",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Recompute the whole sum before decrypting for models up to this many ciphertext chunks "
    "(256 chunks = 1M parameters with the compact preset).",
)
@click.option(
    "--spot-checks",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="For larger models, how many random chunks of the sum to recompute. An aggregator that tampers with "
    "k of C chunks escapes one share holder with probability (1 - k/C)^checks: prefer full verification.",
)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Torch threads for training.")
@click.option(
    "--keep-round-models/--no-keep-round-models",
    default=True,
    show_default=True,
    help="Keep the global model of every round in STATE/rounds/.",
)
def node(
    site: str,
    keys_dir: Path,
    connect: str,
    data: Path,
    target: str,
    state: Path | None,
    test_data: Path | None,
    holdout: float,
    full_verify_max_chunks: int,
    spot_checks: int,
    threads: int,
    keep_round_models: bool,
) -> None:
    """Run one hospital's node: train locally, submit encrypted updates, help decrypt the consortium's sum.

    \b
    Patient rows never leave this process; what leaves is CKKS-encrypted, clipped, weighted model updates.
    Before releasing a partial decryption the node verifies that the sum is made of at least min-sites
    signed contributions (recomputing it, or spot-checking large models) and never decrypts a ciphertext
    twice. The final global model is written to STATE/model.pt with a model card STATE/model.json.
    Its share file passphrase comes from HEAGG_PASSPHRASE or a prompt.
    """
    import torch

    from heagg.consortium import Consortium, share_file
    from heagg.protocol.node import Node, NodeConfig
    from heagg.sitekeys import load_site_keys

    _service_logging()
    torch.set_num_threads(threads)
    Consortium.load(keys_dir).site(site)  # an unknown site or key directory is reported before any prompt
    keys = load_site_keys(keys_dir, site, passphrase=_key_passphrase(share_file(keys_dir, site)))
    config = NodeConfig(
        site=site,
        keys_dir=keys_dir,
        connect=connect,
        data=data,
        target=target,
        state=state or Path(f"heagg-node-{site}"),
        test_data=test_data,
        holdout=holdout,
        full_verify_max_chunks=full_verify_max_chunks,
        spot_checks=spot_checks,
        keep_round_models=keep_round_models,
    )
    sys.exit(Node(config, keys).run())


# simulate and predict ------------------------------------------------------------------------------


@cli.command()
@click.option("--sites", type=click.IntRange(2, 40), default=5, show_default=True, help="Simulated hospitals.")
@click.option("--threshold", "-t", type=int, default=3, show_default=True, help="Sites needed to decrypt (t of n).")
@click.option("--rounds", type=click.IntRange(1), default=10, show_default=True, help="Training rounds.")
@click.option(
    "--split",
    default="iid",
    show_default=True,
    help="How patients are dealt to sites: iid, dirichlet:ALPHA (label skew, e.g. dirichlet:0.5) or "
    "size:FRACTION (one big hospital holding that fraction, e.g. size:0.5).",
)
@click.option("--preset", type=click.Choice(["compact", "precise"]), default="compact", show_default=True)
@click.option("--clip", type=float, default=1.0, show_default=True, help="Per-coordinate clip of model updates.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the report as JSON to this file.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write accuracy-per-round curves (encrypted, plaintext, central) to this PNG.",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep keys, data, logs and state here (must be new or empty) [default: a temporary directory].",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@_plan_options
def simulate(
    sites: int,
    threshold: int,
    rounds: int,
    split: str,
    preset: str,
    clip: float,
    json_path: Path | None,
    plot_path: Path | None,
    workdir: Path | None,
    quiet: bool,
    model: str,
    hidden: str,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    seed: int,
) -> None:
    """Run the whole encrypted federation on this machine, on the bundled breast-cancer data.

    \b
    The Wisconsin Diagnostic Breast Cancer data (569 patients, 30 features; it ships inside
    scikit-learn) is split across --sites hospitals. The key ceremony, the aggregator and one node
    per site run as separate processes over CurveZMQ on 127.0.0.1 with real threshold-CKKS
    encryption. Each round prints held-out accuracy, ROC-AUC, sensitivity and specificity, wall
    time and bytes; at the end, the same metrics for plaintext FedAvg (same seeds and splits), a
    centrally trained model and each site alone, side by side.
    """
    from heagg.simulate import SimulationConfig, render, run_simulation, write_json, write_plot

    if threshold > sites:
        raise UsageError(f"--threshold {threshold} is larger than --sites {sites}")
    widths = _hidden_widths(hidden)
    for path in (json_path, plot_path):
        if path is not None and not path.parent.exists():
            raise UsageError(f"cannot write {path}: directory {path.parent} does not exist")
    config = SimulationConfig(
        sites=sites,
        threshold=threshold,
        rounds=rounds,
        split=split,
        model=model,
        hidden=widths,
        train={"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer},
        seed=seed,
        preset=preset,
        clip=clip,
        workdir=workdir,
    )
    report = run_simulation(config, progress=not quiet)
    render(report)
    if json_path:
        write_json(report, json_path)
        click.echo(f"report written to {json_path}")
    if plot_path:
        write_plot(report, plot_path)
        click.echo(f"plot written to {plot_path}")


@cli.command()
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    required=True,
    help="A model file written by heagg node (STATE/model.pt, with model.json beside it).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="CSV or Parquet of new patients with the model's feature columns (a target column is ignored).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write row, probability and prediction as CSV here [default: standard output].",
)
@click.option(
    "--threshold",
    "decision",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Probability at or above which a patient is predicted malignant (1).",
)
def predict(model_path: Path, data: Path, out: Path | None, decision: float) -> None:
    """Score new patients with an exported global model."""
    import csv

    from heagg.data import load_features
    from heagg.model import load_model, predict_proba
    from heagg.standardize import Standardizer

    model, _spec, card = load_model(model_path)
    if "features" not in card or "standardizer" not in card:
        raise UsageError(f"{model_path}: its model card has no feature list or standardisation: not a heagg model")
    X = load_features(data, features=card["features"])
    if len(X) == 0:
        raise UsageError(f"{data}: no rows to score")
    scores = predict_proba(model, X, Standardizer.from_dict(card["standardizer"]))
    if out is not None and out.exists():
        raise UsageError(f"{out} already exists: choose another --out (heagg does not overwrite files)")
    stream = open(out, "w", newline="") if out else sys.stdout  # noqa: SIM115 - closed below when a file
    try:
        writer = csv.writer(stream)
        writer.writerow(["row", "probability", "prediction"])
        for row, p in enumerate(scores, start=1):
            writer.writerow([row, f"{p:.6f}", int(p >= decision)])
    finally:
        if out:
            stream.close()
    if out:
        click.echo(f"scored {len(scores)} patients into {out}", err=True)


@cli.command()
@click.option("--sites", type=click.IntRange(2), default=5, show_default=True, help="Consortium size.")
@click.option("--threshold", "-t", type=click.IntRange(1), default=3, show_default=True, help="Decrypting sites.")
@click.option("--clip", type=float, default=1.0, show_default=True, help="Per-coordinate clip of updates.")
def presets(sites: int, threshold: int, clip: float) -> None:
    """Show the CKKS presets with the scale, flooding width and error bound they give this consortium."""
    from rich.console import Console
    from rich.table import Table

    from heagg.ceremony import data_primes
    from heagg.consortium import slot_bound
    from heagg.fedavg import FedAvgSettings
    from heagg.params import PRESETS, choose_scale, flooding_sigma, sum_error_bound

    if threshold > sites:
        raise UsageError(f"--threshold {threshold} is larger than --sites {sites}")
    bound = slot_bound(sites, FedAvgSettings(clip=clip))
    table = Table(title=f"heagg presets for {sites} sites, threshold {threshold}, clip {clip}")
    for column in ("preset", "N", "prime bits", "reals/ct", "B/param", "scale", "sigma", "tau (chunks)",
                   "avg error bound"):
        table.add_column(column, justify="right")
    for name, preset in PRESETS.items():
        scale = choose_scale(preset, data_primes(name), n_sites=sites, slot_bound=bound)
        error = sum_error_bound(preset, n_sites=sites, threshold=threshold, scale=scale, slot_bound=bound) / sites
        table.add_row(
            name + (" (default)" if name == "compact" else ""),
            str(preset.poly_modulus_degree),
            "+".join(map(str, preset.data_bits)) + f" +{preset.special_bits}sp",
            str(preset.reals_per_ciphertext),
            f"{preset.bytes_per_param:g}",
            f"2^{int(math.log2(scale))}",
            f"2^{math.log2(flooding_sigma(preset, sites)):.1f}",
            f"2^{preset.tau_log2}",
            f"{error:.1e}",
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    click.echo("The error bound assumes equal full weights; see README 'Parameter presets'.")


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


def _add_bench() -> None:
    from heagg.bench import bench_command

    cli.add_command(bench_command, "bench")


_add_bench()


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
