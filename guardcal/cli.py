"""``guardcal`` command line: one ``Command`` per subcommand, heavy imports inside ``run``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from guardcal import __version__
from guardcal.errors import GuardcalError


class Command(ABC):
    name: str
    help: str

    @abstractmethod
    def register(self, parser: argparse.ArgumentParser) -> None: ...

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int: ...


DATA_DIR_HELP = "data root (default: $GUARDCAL_DATA_DIR, else ../shared/data when it exists)"


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def add_scoring_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that scores a model: evaluate and calibrate."""
    parser.add_argument(
        "--model", default="default", help="'default' (SmolLM2-135M-Instruct, embedded), a local folder or a HF id"
    )
    parser.add_argument(
        "--adapter",
        help="adapter folder (a PEFT adapter in safetensors and/or a pooled head, pooled_head.safetensors), "
        "or 'default' (the shipped adapter)",
    )
    parser.add_argument(
        "--reasoning",
        action="store_true",
        default=None,
        help="reasoning prompt: <think> … </think> before the label (must match serving)",
    )
    parser.add_argument("--max-new-tokens", type=int, help="reasoning budget (default 256)")
    parser.add_argument(
        "--max-input-tokens",
        type=int,
        default=1024,
        help="tokens per scoring window: longer inputs are scored as overlapping windows, each text reading as its "
        "highest-P(unsafe) window (part of the prompt fingerprint: serve with the same value)",
    )
    parser.add_argument(
        "--prompt",
        help="prompt profile: a built-in name (`guardcal prompts`) or a YAML file (default: 'default', the paper's "
        "prompt); part of the prompt fingerprint: serve with the same profile",
    )
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--limit", type=int, help="seeded random subset of N examples per dataset")
    parser.add_argument("--no-progress", action="store_true")


class EvaluateCommand(Command):
    name = "evaluate"
    help = "score datasets with a model (+ adapter) and write metrics, predictions and plots"

    def register(self, parser: argparse.ArgumentParser) -> None:
        from guardcal.data.loaders import describe_datasets

        add_scoring_flags(parser)
        parser.add_argument("--bundle", help="calibration bundle JSON, or 'default': metrics become calibrated")
        parser.add_argument(
            "--dataset", action="append", dest="datasets", required=True, help=f"repeatable; {describe_datasets()}"
        )
        parser.add_argument("--output", required=True, type=Path, help="output folder")
        parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
        parser.add_argument(
            "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: the GPU when PyTorch sees one"
        )
        parser.add_argument("--batch-size", type=int, default=8)

    def run(self, args: argparse.Namespace) -> int:
        from guardcal.evaluate import EvalConfig, run_evaluation

        adapter, reasoning, max_new_tokens = shipped_bundle_setting(args)
        cfg = EvalConfig(
            datasets=args.datasets,
            output=args.output,
            model=args.model,
            adapter=adapter,
            reasoning=reasoning,
            limit=args.limit,
            data_dir=args.data_dir,
            dtype=args.dtype,
            device=args.device,
            batch_size=args.batch_size,
            max_input_tokens=args.max_input_tokens,
            max_new_tokens=max_new_tokens,
            bundle=args.bundle,
            progress=not args.no_progress,
            prompt=args.prompt,
        )
        metrics = run_evaluation(cfg)
        print((args.output / "report.md").read_text().split("\n\n![")[0])
        print(json.dumps(metrics, indent=2))
        print(f"wrote {args.output}/metrics.json, predictions.jsonl, report.md and reliability PNGs")
        return 0


def shipped_bundle_setting(args: argparse.Namespace) -> tuple[str | None, bool, int]:
    """Adapter, reasoning mode and budget: as given, else (``--bundle default`` on the default model) the
    setting the shipped bundle was fitted for, else no adapter, direct mode, 256 tokens."""
    from guardcal.assets import DEFAULT
    from guardcal.models.default import DEFAULT_MODEL
    from guardcal.models.shipped import DEFAULT_REASONING_BUDGET, shipped_setup

    adapter, reasoning, budget = args.adapter, args.reasoning, args.max_new_tokens
    setup = shipped_setup() if args.bundle == DEFAULT and args.model == DEFAULT_MODEL else None
    if setup is not None:
        adapter = setup.adapter if adapter is None else adapter
        reasoning = setup.reasoning if reasoning is None else reasoning
        budget = setup.max_new_tokens if budget is None and reasoning else budget
    return adapter, bool(reasoning), budget or DEFAULT_REASONING_BUDGET


class TrainCommand(Command):
    name = "train"
    help = "train a LoRA guard adapter (sft, grpo, cal-grpo = calibration-aware GRPO, rlcr, capo) or fit a pooled head"

    def register(self, parser: argparse.ArgumentParser) -> None:
        from dataclasses import fields

        from guardcal.train.config import TrainConfig, field_help

        helps = field_help()
        parser.add_argument("--config", help="YAML file with any of the fields below (flags win)")
        for f in fields(TrainConfig):
            flag = "--" + f.name.replace("_", "-")
            names = [flag, "--lambda"] if f.name == "lambda_ce" else [flag]
            default = TrainConfig.__dataclass_fields__[f.name].default
            kind = type(default) if default is not None and not isinstance(default, list) else str
            if f.name == "lora_targets":
                parser.add_argument(*names, dest=f.name, nargs="+", help=helps[f.name])
            elif kind is bool:
                parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, help=helps[f.name])
            else:
                parser.add_argument(*names, dest=f.name, type=kind, help=helps[f.name])

    def run(self, args: argparse.Namespace) -> int:
        from dataclasses import fields

        from guardcal.train.config import TrainConfig, build_config

        overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
        cfg = build_config(overrides, args.config)
        from guardcal.train.runner import run_training

        out = run_training(cfg)
        if cfg.method == "head":
            print(f"wrote pooled_head.safetensors, head_fit.json and train_config.json to {out}")
        else:
            print(f"wrote the adapter, train_config.json, log.jsonl and train_summary.json to {out}")
        return 0


class CalibrateCommand(Command):
    name = "calibrate"
    help = "fit a post-hoc calibrator + escalation thresholds on openai-moderation:calib and write a bundle"

    def register(self, parser: argparse.ArgumentParser) -> None:
        add_scoring_flags(parser)
        parser.add_argument("--method", default="isotonic", choices=("platt", "isotonic", "temperature"))
        parser.add_argument("--output", type=Path, required=True, help="bundle JSON to write")
        parser.add_argument("--report", type=Path, help="folder for report.md and before/after reliability PNGs")
        parser.add_argument("--target-error", type=float, default=0.05, help="α: error allowed among auto-decided")
        parser.add_argument("--target-error-unsafe", type=float, help="a separate α for predicted-unsafe")
        parser.add_argument("--delta", type=float, default=0.1, help="the guarantee holds with probability 1 − δ")
        parser.add_argument("--threshold", type=float, help="a fixed confidence threshold instead of risk control")
        parser.add_argument(
            "--threshold-share",
            type=float,
            default=0.5,
            help="share of the fit rows held out from the calibrator to choose the risk-controlled thresholds "
            "(the guarantee needs rows the calibrator has not seen; default 0.5)",
        )
        parser.add_argument(
            "--threshold-rows",
            choices=("held-out", "all"),
            default="held-out",
            help="held-out: the thresholds are chosen on --threshold-share of the fit rows, which the calibrator "
            "never sees; all: every fit row fits the calibrator and chooses the thresholds, sound for a "
            "calibrator that keeps the raw score's order (platt, temperature; docs/calibration.md)",
        )
        parser.add_argument("--split-seed", type=int, default=0, help="seed of that split (stratified by label)")
        parser.add_argument(
            "--start-errors",
            type=int,
            default=None,
            help="Learn-Then-Test starts at the first threshold where this many errors could still be rejected "
            "(0 = the first testable one, where a single error ends the search); default: chosen per label on "
            "the calibrator's rows, never the threshold rows' labels",
        )
        parser.add_argument("--fit-dataset", default="openai-moderation:calib")
        parser.add_argument(
            "--eval-dataset",
            action="append",
            dest="eval_datasets",
            help="repeatable (default: openai-moderation:test and xstest)",
        )
        parser.add_argument(
            "--predictions",
            type=Path,
            help="reuse a `guardcal evaluate` output folder that scored the fit and eval sets",
        )
        parser.add_argument(
            "--reviews",
            type=Path,
            metavar="DB",
            help="add reviewers' verdicts from this review store (reviews.sqlite3 of guardcal serve --reviews) to "
            "the fit split, weighted by 1 / their sampling probability (escalation 1, audit 1/p); see docs/review.md",
        )

    def run(self, args: argparse.Namespace) -> int:
        from guardcal.calibrate.thresholds import uncertified_warning
        from guardcal.calibration_run import CalibrateConfig, rows_sentence, run_calibration
        from guardcal.models.shipped import DEFAULT_REASONING_BUDGET

        cfg = CalibrateConfig(
            output=args.output,
            method=args.method,
            model=args.model,
            adapter=args.adapter,
            reasoning=bool(args.reasoning),
            data_dir=args.data_dir,
            fit_dataset=args.fit_dataset,
            eval_datasets=args.eval_datasets or ["openai-moderation:test", "xstest"],
            target_error=args.target_error,
            target_error_unsafe=args.target_error_unsafe,
            delta=args.delta,
            threshold_share=args.threshold_share,
            threshold_rows=args.threshold_rows,
            split_seed=args.split_seed,
            start_errors=args.start_errors,
            threshold=args.threshold,
            report=args.report,
            max_input_tokens=args.max_input_tokens,
            max_new_tokens=args.max_new_tokens or DEFAULT_REASONING_BUDGET,
            limit=args.limit,
            predictions=args.predictions,
            reviews=args.reviews,
            progress=not args.no_progress,
            prompt=args.prompt,
        )
        bundle = run_calibration(cfg)
        for stage in ("before", "after"):
            for key, m in bundle.metrics[stage].items():
                print(f"{stage:6} {key:24} accuracy {m['accuracy']:.3f}  ECE {m['ece']:.3f}  Brier {m['brier']:.3f}")
        t = bundle.thresholds
        print(f"thresholds ({t['method']}): safe >= {t['safe']:.3f}, unsafe >= {t['unsafe']:.3f}")
        x = bundle.extra
        if x.get("threshold_n"):
            print(rows_sentence(x))
        if reviews := x.get("reviews"):
            kinds = ", ".join(f"{k['n']} {n} (weight {k['weight_sum']:g})" for n, k in reviews["by_kind"].items())
            print(f"verdicts used from {reviews['source']}: {kinds}; left out: {reviews['skipped']}")
        for key, e in x.get("escalation", {}).items():
            err = "n/a" if e["error"] is None else f"{100 * e['error']:.1f}%"
            cover = 100 * e["coverage"]
            print(f"{key:24} auto-decided {cover:.1f}% (error {err}), escalated {100 - cover:.1f}%")
        if warning := uncertified_warning(bundle.get_thresholds(), x.get("fit_escalation")):
            print(
                f"WARNING: {warning}; train a better model, raise --target-error, or calibrate on more rows",
                file=sys.stderr,
            )
        print(f"wrote {args.output}" + (f" and {args.report}/report.md" if args.report else ""))
        return 0


def _literal_choices(annotation: Any) -> list[str] | None:
    """The allowed values of a ``Literal[...]`` setting (argparse then refuses others and --help lists them)."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return None


def _field_help(info: Any) -> str:
    """A setting's description with its default (argparse's %(default)s would show None: flags default to unset,
    so that the environment and the YAML file can fill them)."""
    text = str(info.description or "")
    default = info.get_default(call_default_factory=False)
    if default is None or "default" in text or type(default).__name__ == "PydanticUndefinedType":
        return text
    shown = ("on" if default else "off") if isinstance(default, bool) else str(default)
    return f"{text} (default: {shown})"


class ServeCommand(Command):
    name = "serve"
    help = "serve the calibrated guard model over HTTP: POST /classify, /healthz, /readyz, /metrics"

    def register(self, parser: argparse.ArgumentParser) -> None:
        from guardcal.serve.settings import MAX_BATCH_SPLIT, SECRET_FIELDS, ServeSettings

        parser.add_argument("--config", help="YAML file of settings (flags > GUARDCAL_* environment > YAML)")
        for name, info in ServeSettings.model_fields.items():
            flag = "--" + name.replace("_", "-")
            if name in SECRET_FIELDS:  # refused with the fix, and kept out of --help
                parser.add_argument(flag, dest=f"refused_{name}", action=RefuseSecretFlag, help=argparse.SUPPRESS)
            elif info.annotation is bool:
                parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=_field_help(info))
            else:
                choices = _literal_choices(info.annotation)
                parser.add_argument(flag, dest=name, help=_field_help(info), choices=choices,
                                    metavar="{" + ",".join(choices) + "}" if choices else None)  # fmt: skip
        # the old --max-batch meant two settings: refused, naming both (kept out of --help)
        parser.add_argument("--max-batch", dest="removed_max_batch", action=RefuseFlag, message=MAX_BATCH_SPLIT,
                            help=argparse.SUPPRESS)  # fmt: skip

    def run(self, args: argparse.Namespace) -> int:
        from guardcal.serve.app import serve
        from guardcal.serve.settings import ServeSettings

        overrides = {k: v for k, v in vars(args).items() if k in ServeSettings.model_fields and v is not None}
        settings = ServeSettings.load(args.config, **overrides)
        serve(settings, build_backend(settings))
        return 0


class RefuseFlag(argparse.Action):
    """A flag that no longer exists: refused with ``message`` (what replaced it)."""

    def __init__(self, *args: Any, message: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.message = message

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None
    ) -> None:
        parser.error(self.message)


class RefuseSecretFlag(argparse.Action):
    """A secret given as a flag: refused (every user of the machine can read argv, e.g. with ``ps``)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None
    ) -> None:
        flag = self.option_strings[0]
        env = "GUARDCAL_" + flag.removeprefix("--").replace("-", "_").upper()
        parser.error(
            f"{flag} is refused: command-line arguments are visible to every user of the machine (ps, /proc), "
            f"so secrets never go there; set {env} in the environment, or put the secret in a file only the "
            f"server's user can read and pass {flag}-file FILE ({env}_FILE)"
        )


def build_backend(settings: Any) -> Any:
    """The model backend named by the settings."""
    if settings.backend == "vllm":
        from guardcal.backends.vllm_backend import VLLMBackend

        return VLLMBackend(
            settings.model,
            settings.adapter,
            settings.reasoning,
            dtype=settings.dtype,
            max_new_tokens=settings.max_new_tokens,
            max_input_tokens=settings.max_input_tokens,
            max_windows=settings.max_windows,
            prompt=settings.prompt,
            kv_cache_bytes=settings.vllm_kv_cache_bytes,
            tensor_parallel_size=settings.vllm_tensor_parallel_size,
        )
    from guardcal.backends.transformers_backend import TransformersBackend

    return TransformersBackend(
        settings.model,
        settings.adapter,
        settings.reasoning,
        dtype=settings.dtype,
        forward_batch=settings.forward_batch,
        max_new_tokens=settings.max_new_tokens,
        max_input_tokens=settings.max_input_tokens,
        max_windows=settings.max_windows,
        compile=settings.compile,
        prompt=settings.prompt,
    )


class DataCommand(Command):
    name = "data"
    help = "write the reproducible OpenAI Moderation split manifest, or export reviewers' verdicts (export-reviews)"

    def register(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data-dir", help=DATA_DIR_HELP)
        parser.add_argument("--manifest", type=Path, help="where to write the split manifest (JSON)")
        sub = parser.add_subparsers(dest="data_command")
        export = sub.add_parser(
            "export-reviews",
            help="write reviewed escalations and audit samples as JSONL for guardcal train --dataset jsonl:FILE",
        )
        export.add_argument("db", type=Path, help="the review store (reviews.sqlite3 of guardcal serve --reviews)")
        export.add_argument("--output", type=Path, required=True, help="JSONL file to write (id, text, label)")

    def run(self, args: argparse.Namespace) -> int:
        if args.data_command == "export-reviews":
            return export_reviews(args.db, args.output)
        if args.manifest is None:
            raise GuardcalError("guardcal data needs --manifest FILE, or: export-reviews DB --output FILE")
        from guardcal.data.loaders import write_split_manifest

        path = write_split_manifest(args.manifest, args.data_dir)
        print(f"wrote {path}")
        return 0


class PromptsCommand(Command):
    name = "prompts"
    help = "list the built-in prompt profiles (for --prompt), or print one as YAML"

    def register(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", help="print this profile (a built-in name or a YAML file)")

    def run(self, args: argparse.Namespace) -> int:
        from guardcal.core.profiles import PROMPTS_DIR, builtin_names, load_profile

        if args.name:
            profile = load_profile(args.name)  # validated: ConfigError names the problem
            path = PROMPTS_DIR / f"{args.name}.yaml" if args.name in builtin_names() else Path(args.name)
            print(path.read_text(encoding="utf-8"), end="")
            print(f"# valid profile {profile.name!r}: labels {profile.surfaces()}, quoting {profile.quoting}")
            return 0
        for name in builtin_names():
            p = load_profile(name)
            print(f"{name:18} {p.description}")
            for src in p.source:
                print(f"{'':18}   {src}")
        print("\nUse one with --prompt NAME, or write your own YAML (docs/prompts.md) and pass --prompt FILE.")
        return 0


def export_reviews(db: Path, output: Path) -> int:
    """``guardcal data export-reviews``: verdicts as training JSONL (redacted inputs cannot be exported)."""
    from guardcal.calibrate.verdicts import export_rows, read_reviews

    rows, redacted = export_rows(read_reviews(db))
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    note = f"; {redacted} left out: the server kept only their hash (--redact-input)" if redacted else ""
    print(f"wrote {len(rows)} reviewed inputs to {output}{note}")
    return 0


class ModelCommand(Command):
    name = "model"
    help = "materialise the embedded default model and print its folder"

    def register(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default="default")

    def run(self, args: argparse.Namespace) -> int:
        from guardcal.models.loading import resolve_model

        print(resolve_model(args.model))
        return 0


COMMANDS: tuple[Command, ...] = (
    TrainCommand(),
    CalibrateCommand(),
    EvaluateCommand(),
    ServeCommand(),
    DataCommand(),
    PromptsCommand(),
    ModelCommand(),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardcal", description="calibrated guard-model toolkit")
    parser.add_argument("--version", action="version", version=f"guardcal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub.add_parser(command.name, help=command.help, description=command.help))
    return parser


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(command: str) -> None:
    """Logging is the CLI's to set up (library code only logs): guardcal's INFO lines on stderr (never scores;
    ``guardcal.audit`` stays silent unless set to DEBUG). ``serve`` shows every library's INFO lines (uvicorn's
    among them); the other commands show other libraries' warnings only."""
    logging.basicConfig(level=logging.INFO if command == "serve" else logging.WARNING, format=LOG_FORMAT)
    guardcal_log = logging.getLogger("guardcal")
    if guardcal_log.level == logging.NOTSET:
        guardcal_log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _offline_env()
    configure_logging(args.command)
    command = next(c for c in COMMANDS if c.name == args.command)
    try:
        return command.run(args)
    except GuardcalError as exc:
        print(f"guardcal {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
