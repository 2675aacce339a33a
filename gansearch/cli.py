"""The ``gansearch`` command line: run, validate, trials, resume, sample and proxy."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

logger = logging.getLogger("gansearch")
console = Console(stderr=True)

MLFLOW_UI_PORT = 5000


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


# ----------------------------------------------------------------------------- run / validate


def _overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    if args.num_samples is not None:
        overrides["trials.num_samples"] = args.num_samples
    if args.max_epochs is not None:
        overrides["scheduler.max_epochs"] = args.max_epochs
    if args.grace_period is not None:
        overrides["scheduler.grace_period"] = args.grace_period
    return overrides


def command_validate(args: argparse.Namespace) -> int:
    from gansearch.spec import load_spec

    spec = load_spec(args.spec)
    print(f"{args.spec}: valid search '{spec.name}': {spec.trials.num_samples} trials of up to "
          f"{spec.scheduler.max_epochs} epochs over {', '.join(spec.search_space) or 'no parameters'}")
    return 0


def command_run(args: argparse.Namespace) -> int:
    from gansearch.search import prepare_search, run_search
    from gansearch.spec import load_spec

    if args.resume:
        return _resume_search(args)

    spec = load_spec(args.spec, _overrides(args))
    prepared = prepare_search(
        spec, Path(args.spec).read_text(), data=args.data, storage=args.storage, name=args.name,
        address=args.address or os.environ.get("RAY_ADDRESS"),
    )
    logger.info("search %s: results in %s, MLflow at %s", prepared.name, prepared.experiment_dir, prepared.tracking_uri)
    return _finish_run(prepared, run_search(prepared))


def _resume_search(args: argparse.Namespace) -> int:
    from gansearch.errors import UsageError
    from gansearch.resume import prepare_resumed_search
    from gansearch.search import run_search

    ignored = [flag for flag, value in (("SPEC", args.spec), ("--num-samples", args.num_samples), ("--max-epochs", args.max_epochs),
               ("--grace-period", args.grace_period), ("--data", args.data), ("--name", args.name)) if value is not None]
    if ignored:
        raise UsageError(f"--resume continues a search with its recorded spec; drop {', '.join(ignored)}")
    prepared = prepare_resumed_search(args.resume, storage=args.storage, address=args.address or os.environ.get("RAY_ADDRESS"))
    return _finish_run(prepared, run_search(prepared, resume=True))


def _finish_run(prepared, outcome) -> int:
    from gansearch.tracking import runs_view_url
    from gansearch.trials import COLUMNS

    table = outcome.table
    _print_table(table.head(20), list(COLUMNS) + list(prepared.spec.search_space))
    experiment_id = outcome.store.experiment_id

    print(f"\nResults: {prepared.experiment_dir}")
    if prepared.tracking_uri.startswith("sqlite:"):
        print(f"Open the MLflow UI:  mlflow ui --backend-store-uri {prepared.tracking_uri} --port {MLFLOW_UI_PORT}")
        print(f"This search's runs:  {runs_view_url(f'http://127.0.0.1:{MLFLOW_UI_PORT}', experiment_id)}")
    else:
        print(f"This search's runs:  {runs_view_url(prepared.tracking_uri, experiment_id)}")

    if outcome.interrupted:
        print(f"The search was interrupted; continue it with:  gansearch run --resume {prepared.experiment_dir}")
        return 130
    errored = int((table["status"] == "errored").sum()) if len(table) else 0
    if errored:
        logger.warning("%d of %d trials raised errors; see 'gansearch trials %s'", errored, len(table), prepared.experiment_dir)
    if not outcome.scored:
        logger.error("no trial produced a %s value: the search failed", prepared.spec.metric)
        return 1
    return 0


# ----------------------------------------------------------------------------- trials


def _print_table(table, columns: list[str] | None = None) -> None:
    if table.empty:
        console.print("no trials yet")
        return
    view = Table(show_lines=False)
    # end_reason is the longest text, so it goes last, where rich can wrap it.
    shown = [column for column in (columns or table.columns) if column not in {"trial_dir", "end_reason"}]
    if "end_reason" in table.columns:
        shown.append("end_reason")
    for column in shown:
        view.add_column(column, justify="right" if table[column].dtype.kind in "if" else "left")
    for _, row in table.iterrows():
        view.add_row(*[_format_cell(row[column]) for column in shown])
    # Outside a terminal rich assumes 80 columns and would cut the column names short.
    Console(width=None if sys.stdout.isatty() else 240).print(view)


def _format_cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return "" if value is None else str(value)


def command_trials(args: argparse.Namespace) -> int:
    from gansearch.trials import COLUMNS, read_search_record, resolve_experiment, trial_table

    experiment_dir = resolve_experiment(args.experiment, args.storage)
    table = trial_table(experiment_dir)
    if args.format == "csv":
        text = table.to_csv(index=False)
        if args.out:
            from gansearch.storage import atomic_write_bytes

            atomic_write_bytes(args.out, text.encode())
        else:
            sys.stdout.write(text)
    elif args.format == "json":
        sys.stdout.write(table.to_json(orient="records", indent=2) + "\n")
    elif args.all_columns:
        _print_table(table)
    else:
        searched = list(read_search_record(experiment_dir)["spec"].get("search_space", {}))
        _print_table(table, list(COLUMNS) + searched)
    return 0


# ----------------------------------------------------------------------------- proxy


def command_proxy_train(args: argparse.Namespace) -> int:
    from gansearch.metrics.feature_training import FeatureTrainingConfig, train_feature_net

    config = FeatureTrainingConfig(epochs=args.epochs, seed=args.seed)
    record = train_feature_net(args.data, args.out, config, subset=args.subset)
    print(json.dumps(record, indent=2))
    return 0


def command_proxy_score(args: argparse.Namespace) -> int:
    from gansearch.scoring import score_path

    result = score_path(
        args.path, data=args.data, n_samples=args.n, feature_weights=args.feature_weights,
        inception_weights=args.inception_weights, device=args.device,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


# ----------------------------------------------------------------------------- resume / sample


def command_resume(args: argparse.Namespace) -> int:
    from gansearch.resume import resume_trial

    from gansearch.trials import trial_table

    results, run_dir = resume_trial(args.experiment, epochs=args.epochs, trial_id=args.trial, which=args.checkpoint,
                                    storage=args.storage, address=args.address or os.environ.get("RAY_ADDRESS"))
    table = trial_table(run_dir.parent)
    resumed = table[table["run"] == run_dir.name]
    _print_table(resumed)
    print(f"\nResumed run: {run_dir}")
    failed = resumed["status"].isin(["diverged", "errored"]).any() if len(resumed) else True
    if failed:
        logger.error("the resumed run did not complete: %s", ", ".join(resumed["end_reason"].astype(str)) or "no result")
    return 1 if failed or results.num_errors else 0


def command_sample(args: argparse.Namespace) -> int:
    from gansearch.sampling import sample_grid

    path = sample_grid(args.checkpoint, n=args.n, seed=args.seed, out=args.out)
    print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gansearch", description="Search GAN hyperparameters on CIFAR-10 with Ray Tune, Optuna, ASHA and MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a search from a YAML spec")
    run.add_argument("spec", nargs="?", help="search spec file, for example search_spaces/smoke.yaml")
    run.add_argument("--data", help="'cifar10' or a folder or archive with train/<class>/ and test/<class>/ (default: the spec's data.source)")
    run.add_argument("--storage", help="results folder or URI; results go to STORAGE/NAME (default: the spec's storage)")
    run.add_argument("--name", help="experiment name (default: the spec's name)")
    run.add_argument("--address", help="Ray cluster address, for example 'auto' on a head node (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--num-samples", type=int, help="override trials.num_samples")
    run.add_argument("--max-epochs", type=int, help="override scheduler.max_epochs")
    run.add_argument("--grace-period", type=int, help="override scheduler.grace_period")
    run.add_argument("--resume", metavar="EXPERIMENT", help="continue an interrupted search from its experiment folder")
    run.set_defaults(handler=command_run)

    validate = commands.add_parser("validate", help="check a search spec without running it")
    validate.add_argument("spec")
    validate.set_defaults(handler=command_validate)

    trials = commands.add_parser("trials", help="list the trials of a search, best first")
    trials.add_argument("experiment", help="experiment folder, or a name under --storage")
    trials.add_argument("--storage", default="./results", help="results folder for a bare name (default: ./results)")
    trials.add_argument("--format", choices=["table", "csv", "json"], default="table")
    trials.add_argument("--out", help="write CSV to this file instead of standard output")
    trials.add_argument("--all-columns", action="store_true", help="show every GAN setting in the table, not only the searched ones")
    trials.set_defaults(handler=command_trials)

    resume = commands.add_parser("resume", help="train the best trial (or --trial) of a search for more epochs")
    resume.add_argument("experiment", help="experiment folder, or a name under --storage")
    resume.add_argument("--epochs", type=int, required=True, help="train until this epoch")
    resume.add_argument("--trial", help="trial id to resume (default: the lowest fid_proxy)")
    resume.add_argument("--checkpoint", choices=["best", "last"], default="best")
    resume.add_argument("--storage", default="./results")
    resume.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    resume.set_defaults(handler=command_resume)

    sample = commands.add_parser("sample", help="write an image grid from a checkpoint's generator")
    sample.add_argument("checkpoint", help="checkpoint folder, generator.pt or state.pt")
    sample.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    sample.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    sample.add_argument("--out", required=True, help="PNG file to write")
    sample.set_defaults(handler=command_sample)

    proxy = commands.add_parser("proxy", help="the FID-proxy feature network: train it, score images")
    proxy_commands = proxy.add_subparsers(dest="proxy_command", required=True)
    train = proxy_commands.add_parser("train", help="train the feature network on CIFAR-10")
    train.add_argument("--data", required=True, help="'cifar10' or a folder or archive with train/ and test/")
    train.add_argument("--out", required=True, help="weights file to write (a .json record goes beside it)")
    train.add_argument("--epochs", type=int, default=14)
    train.add_argument("--subset", type=int, help="first N training images of each class")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=command_proxy_train)

    score = proxy_commands.add_parser("score", help="score images or a generator checkpoint against CIFAR-10 training statistics")
    score.add_argument("path", help="folder or archive of 32x32 RGB images, or a generator checkpoint")
    score.add_argument("--data", default="cifar10", help="source of the real CIFAR-10 training images (default: cifar10)")
    score.add_argument("--n", type=int, help="images to score (default: all images in PATH; for a checkpoint 5000 on a GPU, 1000 on a CPU)")
    score.add_argument("--feature-weights", help="feature network weights (default: the shipped ones)")
    score.add_argument("--inception-weights", help="Inception-v3 FID weights file; also prints the standard FID")
    score.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    score.add_argument("--json", action="store_true", help="print JSON")
    score.set_defaults(handler=command_proxy_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gansearch.errors import user_errors

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.command == "run" and not args.spec and not args.resume:
        print("error: gansearch run needs a SPEC file, or --resume EXPERIMENT", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except user_errors() as error:
        # Plain print, not rich: messages hold paths that must not be wrapped or restyled.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue later with 'gansearch run --resume EXPERIMENT'", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
