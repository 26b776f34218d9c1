"""The benchmark harness: what every ``streaming-vlm eval NAME`` does around a benchmark, written once.

A benchmark module implements :class:`Benchmark` (its options, its items, running one item, scoring, its table
and figure) and its ``main`` is ``harness.run(TheBenchmark(), argv)``. :func:`run` then:

1. builds the parser: the benchmark's options, ``--quiet``, ``--model`` (unless ``model_default`` is
   :data:`NO_MODEL`), ``--device``/``--dtype``/``--threads``, every stream setting it uses
   (``settings.add_arguments``: the help shows its preset and protocol values) and ``--config``;
2. reads ``--config FILE`` (YAML; keys are option names as in the namespace, e.g. ``max_wall_s``): its stream
   settings form the config layer, its other keys become the options' defaults (a flag still wins);
3. resolves the settings (``settings.resolve``): flags > ``--config`` > the benchmark's protocol > the checkpoint's
   ``streaming_vlm.json`` > the benchmark's preset > defaults (a setting the benchmark excludes is taken from none
   of flags, ``--config`` or the checkpoint), and checks frames per chunk (``SettingsUse.fixed_chunks``);
4. asks the benchmark for its items (all data checks happen there, before any model is loaded), refuses to resume
   into a folder made with other settings (:func:`check_resume`), and runs the items of each group through
   :func:`~streaming_vlm.eval.runner.run_items` (rank-sharded, resumable); the model is loaded on first use
   (:attr:`Run.model`), at most once, so a finished run rescores without loading it;
5. on rank 0: scores, adds ``stream_settings`` and ``stream_settings_sources`` (the settings it uses) to the
   results' ``meta`` (top level when there is none), writes them, draws the figure, prints the table;
6. turns known errors (bad settings, config, data, model, video; ``ValueError``, ``OSError`` and the benchmark's
   ``errors``) into one line ``PROG: error: ...`` on stderr and exit status 2 (or what ``error_exit`` says).
   Usage errors are argparse's (exit 2). Any process group the runner set up is torn down at the end.

A mapping ``{phase: Benchmark}`` becomes sub-commands (``inf-stream generate|baseline|score``), next to plain
:class:`Command` s (``inf-stream merge``); every phase shares the error prefix ``streaming-vlm eval NAME``.
Nothing here imports an entry module (``infer``, ``bench``); importing this module loads no framework (a benchmark
with a model imports ``models``, hence torch, when its parser is built).
"""

from __future__ import annotations

import abc
import argparse
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from streaming_vlm import settings as settings_mod
from streaming_vlm.argtypes import positive_int
from streaming_vlm.eval import runner
from streaming_vlm.settings import SETTING_NAMES, StreamSettings

if TYPE_CHECKING:
    from streaming_vlm.engine import ChunkResult, StreamConfig, StreamSession
    from streaming_vlm.eval.generate import EvalModel

__all__ = [
    "NO_MODEL", "PROG_PREFIX", "Benchmark", "Command", "ResumeError", "Run", "SettingsUse", "check_resume", "fail",
    "run", "settings_record",
]  # fmt: skip

log = logging.getLogger(__name__)

PROG_PREFIX = "streaming-vlm eval"
NO_MODEL = "<no model>"
"""``Benchmark.model_default`` for a benchmark that loads no checkpoint (an API model, a judge): no ``--model``,
``--device``, ``--dtype`` or ``--threads`` is added, ``Run.model_path`` is None and no checkpoint settings apply."""


class ResumeError(ValueError):
    """An output folder holds results made with other settings (one line)."""


@dataclass(frozen=True)
class SettingsUse:
    """How a benchmark takes the stream settings (see ``settings.resolve`` for the layers)."""

    exclude: tuple[str, ...] = ()
    """Settings it has no use for: no flag and no ``--config`` key (the name may be an option of its own), not taken
    from the checkpoint; they keep their default, or the protocol's or preset's value. One that the protocol or
    preset does not pin is left out of the results' ``stream_settings`` (see :attr:`Run.unused`)."""
    protocol: Mapping[str, Any] = field(default_factory=dict)
    """What the benchmark defines (its instruction, ...): above the checkpoint, below ``--config`` and flags."""
    preset: Mapping[str, Any] = field(default_factory=dict)
    """The benchmark's own defaults: below the checkpoint."""
    fixed_chunks: bool = True
    """It streams at the settings' fps and chunk length: frames per chunk are checked before anything runs
    (False for a benchmark that plans its own chunks)."""


class Benchmark(abc.ABC):
    """What a benchmark implements; :func:`run` does the rest. An instance serves one run: :meth:`items` may keep
    on ``self`` what :meth:`run_item` and :meth:`score` need (the parsed data).

    Class attributes: ``name`` (``streaming-vlm eval NAME``, also the error prefix), ``description`` (``--help``),
    ``help`` (one line in a parent's list of phases), ``settings_use``, ``model_default`` (None: ``--model`` is
    required, unless ``model_required`` is False; :data:`NO_MODEL`: none), ``default_device``/``default_dtype``,
    ``out_flag`` (named in the resume error), ``resumable`` (False: rank 0 runs the items in order, in process,
    nothing is resumed) and ``errors`` (its own exception types, reported as one line, exit 2).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    help: ClassVar[str] = ""
    settings_use: ClassVar[SettingsUse] = SettingsUse()
    model_default: ClassVar[str | None] = None
    model_required: ClassVar[bool] = True
    default_device: ClassVar[str] = "auto"
    default_dtype: ClassVar[str] = "auto"
    out_flag: ClassVar[str] = "--out"
    resumable: ClassVar[bool] = True
    errors: ClassVar[tuple[type[Exception], ...]] = ()

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the benchmark's own options (data paths, outputs, benchmark-only knobs) to ``parser``."""

    @abc.abstractmethod
    def items(self, run: Run) -> dict[str, list[dict]] | None:
        """The work: ``{group: items}``, each item a dict with a unique ``id``; each group is one runner file
        (``<records_dir>/<group>.jsonl``). Check all inputs here (the model is not loaded yet). None: nothing to
        generate (e.g. only rescoring); then no resume check is made and :meth:`score` gets None."""

    @abc.abstractmethod
    def run_item(self, run: Run, group: str, item: dict) -> dict:
        """One item's JSON-able record (``id`` and ``elapsed_s`` are added when missing)."""

    @abc.abstractmethod
    def score(self, run: Run, records: dict[str, list[dict]] | None) -> dict:
        """Rank 0, after every item: the results document from ``{group: records in item order}``."""

    def table(self, results: dict) -> str:
        """Text printed last (a table, target lines); empty: nothing."""
        return ""

    def figure(self, results: dict, path: Path) -> Path | None:
        """Draw the figure at ``path``; returns the path written (None: none)."""
        return None

    def model_path(self, args: argparse.Namespace) -> str | None:
        """What ``--model`` names (``models.resolve_model_path``: ``demo``/``tiny`` aliases); None without a
        model."""
        if self.model_default == NO_MODEL:
            return None
        from streaming_vlm.models import resolve_model_path

        return resolve_model_path(args.model)

    def records_dir(self, run: Run) -> Path:
        """Folder of the runner's per-item records (default: ``--out``)."""
        return Path(run.args.out)

    def resume_path(self, run: Run) -> Path:
        """File that records the settings of the records in :meth:`records_dir` (default ``settings.json``)."""
        return self.records_dir(run) / "settings.json"

    def resume_record(self, run: Run) -> dict | None:
        """The settings that change what an item's record holds: a rerun into the same folder must have the same
        ones (None: no check)."""
        return None

    def finished(self, record: dict) -> bool:
        """Whether a record is final; an unfinished one is run again on resume (e.g. a judge's invalid reply)."""
        return True

    def results_path(self, run: Run) -> Path | None:
        """Where :func:`run` writes the results (None: :meth:`score` wrote its own files)."""
        return None

    def write(self, results: dict, path: Path) -> Path:
        """Write the results document (default: indented JSON, ``runner.write_results``)."""
        return runner.write_results(path, results)

    def figure_path(self, run: Run) -> Path | None:
        """Where :meth:`figure` draws (None: no figure)."""
        return None

    def error_exit(self, exc: Exception) -> tuple[int, str] | None:
        """``(exit status, one line)`` for an exception this benchmark reports its own way; None: the default
        handling (known errors: exit 2 with their message; others propagate)."""
        return None


@dataclass(frozen=True)
class Command:
    """A plain sub-command next to a mapping's benchmarks (no settings, model or items): ``main(args)`` is its
    exit status. ``errors`` are reported as one line (exit 2), like a benchmark's."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]
    description: str | None = None
    errors: tuple[type[Exception], ...] = ()


@dataclass
class Run:
    """One run as a benchmark sees it: the parsed options, the resolved settings (and where each came from), the
    model (loaded on first use) and the process's rank in a torchrun world."""

    args: argparse.Namespace
    settings: StreamSettings
    sources: dict[str, str]
    model_path: str | None = None
    rank: int = 0
    world: int = 1
    unused: set[str] = field(default_factory=set)
    """Settings this run does not use (``SettingsUse.exclude`` less the protocol's and preset's): not recorded by
    :meth:`settings_record`. A benchmark that uses one after all (an option of its own turns it on) discards it."""

    @property
    def progress(self) -> bool:
        """Progress bars, unless ``--quiet``."""
        return not getattr(self.args, "quiet", False)

    @functools.cached_property
    def model(self) -> EvalModel:
        """The checkpoint, loaded once on first use (``generate.load_eval_model``, looked up when called) with the
        settings' per-frame pixel bounds, on ``--device``/``--dtype``; ``--threads`` set first."""
        if self.model_path is None:
            raise RuntimeError("this benchmark loads no model (model_default is NO_MODEL)")
        from streaming_vlm.eval import generate

        threads = getattr(self.args, "threads", None)
        if threads:
            import torch

            torch.set_num_threads(threads)
        log.info("loading %s", self.model_path)
        return generate.load_eval_model(self.model_path, self.settings, device=self.args.device, dtype=self.args.dtype)

    def stream_config(self, mode: str = "streaming", *, previous_text: str = "", **per_stream: Any) -> StreamConfig:
        """The engine's config of one stream (``StreamSettings.stream_config``; ``per_stream`` are setting names,
        e.g. an item's own ``query``), top_p/top_k from the checkpoint's generation config where unset. Loads the
        model."""
        return self.settings.stream_config(mode, previous_text=previous_text,
                                           generation_defaults=self.model.loaded.generation_defaults, **per_stream)

    def session(self, config: StreamConfig, *, n_frames: int | None = None) -> StreamSession:
        """A fresh stream on the model; ``n_frames``: a clip of that many frames known in advance, whose frames
        share ``total_pixels`` (``StreamSettings.frame_pixels``)."""
        from streaming_vlm.eval import generate

        spec = None if n_frames is None else self.settings.vision_spec(self.model.spec, n_frames)
        return generate.new_session(self.model, config, spec)

    def stream(self, video: str | os.PathLike[str], config: StreamConfig, *, start: float = 0.0,
               end: float | None = None) -> Iterator[ChunkResult]:
        """Commentary on ``[start, end)`` of ``video``, chunk by chunk (``generate.stream_span``, looked up when
        called)."""
        from streaming_vlm.eval import generate

        return generate.stream_span(self.model, video, config, start=start, end=end)

    def settings_record(self) -> dict[str, Any]:
        """``{"stream_settings": ..., "stream_settings_sources": ...}`` for a results file, the settings in
        :attr:`unused` left out (:func:`run` adds them to the document :meth:`Benchmark.score` returns; a benchmark
        that writes its own files adds them there)."""
        return settings_record(self.settings, self.sources, self.unused)


def settings_record(settings: StreamSettings, sources: Mapping[str, str], unused: Iterable[str] = ()
                    ) -> dict[str, Any]:
    """``{"stream_settings": {name: value}, "stream_settings_sources": {name: source}}`` of every setting but
    ``unused``, in field order (windows unlimited as None)."""
    names = [k for k in SETTING_NAMES if k not in set(unused)]
    return {"stream_settings": {k: getattr(settings, k) for k in names},
            "stream_settings_sources": {k: sources[k] for k in names}}


# ------------------------------------------------------------------------------------------------------------
# resume check and one-line errors
# ------------------------------------------------------------------------------------------------------------


SETTINGS_ADDED_LATER = {"refresh_every": 0}
"""Settings newer than some saved resume records, with the value the records were made with (the default)."""


def check_resume(path: str | os.PathLike[str], record: Mapping[str, Any], out_flag: str = "--out", *,
                 rank: int = 0) -> None:
    """Refuse to mix records made with other settings: compare ``record`` with the one saved at ``path``.

    No file yet: rank 0 writes ``record`` there (atomically; other ranks only check). A file whose values differ
    (any key of either, compared as JSON) raises :class:`ResumeError`, one line naming the folder, the differing
    keys and their values before and now, e.g. ``OUT holds results made with other settings (seed); before:
    seed=0; now: seed=3; use another --out or delete it``.
    """
    path = Path(path)
    current = json.loads(json.dumps(record))  # compare what a JSON round trip keeps (tuples are lists, ...)
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResumeError(f"{path}: cannot read: {' '.join(str(exc).split())}") from None
        saved = saved if isinstance(saved, dict) else {}
        # a file older than a setting was made with that setting's default
        saved = {k: v for k, v in SETTINGS_ADDED_LATER.items() if k in current and k not in saved} | saved
        diff = [k for k in dict.fromkeys([*current, *saved]) if saved.get(k) != current.get(k)]
        if diff:

            def show(values: dict) -> str:
                return ", ".join(f"{k}={json.dumps(values.get(k), ensure_ascii=False)}" for k in diff)

            raise ResumeError(f"{path.parent} holds results made with other settings ({', '.join(diff)}); "
                              f"before: {show(saved)}; now: {show(current)}; use another {out_flag} or delete it")
        return
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(current, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def fail(prog: str, message: object, code: int = 2) -> int:
    """Print ``PROG: error: MESSAGE`` (whitespace folded to one line) on stderr; return ``code``."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _known_errors() -> tuple[type[Exception], ...]:
    from streaming_vlm.models import ModelLoadError
    from streaming_vlm.video import VideoError

    return (ValueError, OSError, ModelLoadError, VideoError)  # SettingsError and ResumeError are ValueErrors


def _one_line_errors(prog: str, fn: Callable[[], int], errors: tuple[type[Exception], ...],
                     error_exit: Callable[[Exception], tuple[int, str] | None] | None = None) -> int:
    try:
        return fn()
    except Exception as exc:
        mapped = error_exit(exc) if error_exit else None
        if mapped is not None:
            return fail(prog, mapped[1], mapped[0])
        if isinstance(exc, errors + _known_errors()):
            return fail(prog, exc)
        raise


# ------------------------------------------------------------------------------------------------------------
# parser and config
# ------------------------------------------------------------------------------------------------------------


def _add_harness_arguments(bench: Benchmark, parser: argparse.ArgumentParser) -> None:
    bench.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if bench.model_default != NO_MODEL:
        from streaming_vlm.models import add_load_arguments

        default = bench.model_default
        parser.add_argument("--model", default=default, required=default is None and bench.model_required,
                            help="checkpoint directory, hub id, 'demo' (the bundled demo checkpoint) or 'tiny' "
                            f"(a random tiny model){'' if default is None else f' (default: {default})'}")
        group = add_load_arguments(parser, device=bench.default_device, dtype=bench.default_dtype)
        group.add_argument("--threads", type=positive_int, default=None,
                           help="torch CPU threads (default: torch's; on a busy CPU, 1 gives steadier latencies)")
    use = bench.settings_use
    shown = {k: v for k, v in {**use.preset, **use.protocol}.items() if k not in use.exclude}
    order = "flag > --config > " + ("the benchmark's protocol > " if use.protocol else "")
    if bench.model_default != NO_MODEL:
        order += "the checkpoint's streaming_vlm.json > "
    settings_mod.add_arguments(parser, exclude=use.exclude, shown=shown,
                               title=f"stream settings ({order}the default shown)")
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="options from a YAML file (keys as in the namespace, e.g. max_pixels); flags win")


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str], exclude: Sequence[str] = ()
           ) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``argv``, with ``--config``'s non-setting keys as defaults; returns (args, the config's settings). A
    setting in ``exclude`` is not one there: the name may be an option of the benchmark's own (VQA's ``--fps``)."""
    names = set(SETTING_NAMES) - set(exclude)
    find = argparse.ArgumentParser(prog=parser.prog, add_help=False)  # --config before the real parse: the file
    find.add_argument("--config")  # may give options that are required
    path = find.parse_known_args(argv)[0].config
    if not path:
        return parser.parse_args(argv), {}
    known = {a.dest for a in parser._actions if a.dest not in (argparse.SUPPRESS, "help", "config")}
    values = settings_mod.load_config(path, known=known)
    options = {k: v for k, v in values.items() if k not in names}
    for action in parser._actions:
        if action.dest in options:
            action.required = False  # the file gives it
    parser.set_defaults(**options)
    return parser.parse_args(argv), {k: v for k, v in values.items() if k in names}


# ------------------------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------------------------


def _run_benchmark(bench: Benchmark, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    use = bench.settings_use
    args, config = _parse(parser, argv, use.exclude)
    model_path = bench.model_path(args)
    checkpoint = settings_mod.from_checkpoint(model_path) if model_path else {}
    checkpoint = {k: v for k, v in checkpoint.items() if k not in use.exclude}
    given = {k: v for k, v in settings_mod.given(args).items() if k not in use.exclude}  # not the bench's own options
    settings, sources = settings_mod.resolve(given, config=config, checkpoint=checkpoint, protocol=use.protocol,
                                             preset=use.preset)
    if use.fixed_chunks:
        settings.check_chunks()
    rank, world = runner.rank_and_world()
    unused = set(use.exclude) - set(use.protocol) - set(use.preset)
    run_ = Run(args=args, settings=settings, sources=sources, model_path=model_path, rank=rank, world=world,
               unused=unused)
    groups = bench.items(run_)
    records: dict[str, list[dict]] | None = None
    if groups is not None and not bench.resumable:
        if rank != 0:
            return 0
        records = {g: [bench.run_item(run_, g, item) for item in items] for g, items in groups.items()}
    elif groups is not None:
        record = bench.resume_record(run_)
        if record is not None:
            check_resume(bench.resume_path(run_), record, bench.out_flag, rank=rank)
        records = {}
        for group, items in groups.items():
            records[group] = runner.run_items(group, items, functools.partial(bench.run_item, run_, group),
                                              bench.records_dir(run_), progress=run_.progress,
                                              finished=bench.finished)
    if rank != 0:
        return 0
    results = bench.score(run_, records)
    meta = results.get("meta")
    (meta if isinstance(meta, dict) else results).update(run_.settings_record())
    path = bench.results_path(run_)
    if path is not None:
        print(f"wrote {bench.write(results, Path(path))}")
    figure = bench.figure_path(run_)
    if figure is not None and (written := bench.figure(results, Path(figure))) is not None:
        print(f"wrote {written}")
    text = bench.table(results)
    if text:
        print(text)
    return 0


def run(bench: Benchmark | Mapping[str, Benchmark], argv: Sequence[str] | None = None, *,
        commands: Mapping[str, Command] | None = None, description: str | None = None,
        prog: str | None = None) -> int:
    """Run ``streaming-vlm eval NAME`` (see the module doc) on ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status. ``bench`` is one benchmark, or ``{phase: benchmark}`` (all with the same ``name``) as sub-commands with
    the plain ``commands`` next to them, under ``description``. ``prog``: the command's name in usage and errors when
    it is not ``streaming-vlm eval NAME`` (``streaming-vlm bench``). Usage errors exit through argparse (status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    phases = dict(bench) if isinstance(bench, Mapping) else {}
    names = {b.name for b in phases.values()} if phases else {bench.name}  # type: ignore[union-attr]
    if len(names) != 1:
        raise ValueError(f"the phases of one benchmark must share its name, got {sorted(names)}")
    prog = prog or f"{PROG_PREFIX} {names.pop()}"
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("streaming_vlm").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per API request otherwise
    if not phases:
        parser = argparse.ArgumentParser(prog=prog, description=bench.description)  # type: ignore[union-attr]
        _add_harness_arguments(bench, parser)  # type: ignore[arg-type]
        return _guarded(prog, bench, lambda: _run_benchmark(bench, parser, argv))  # type: ignore[arg-type]

    top = argparse.ArgumentParser(prog=prog, description=description)
    sub = top.add_subparsers(dest="phase", metavar="PHASE", required=True)
    leaves: dict[str, argparse.ArgumentParser] = {}
    for name, target in {**phases, **(commands or {})}.items():
        leaves[name] = sub.add_parser(name, help=target.help, description=target.description or target.help)
        if isinstance(target, Command):
            target.add_arguments(leaves[name])
        else:
            _add_harness_arguments(target, leaves[name])
    if not argv or argv[0] not in leaves:
        top.parse_args(argv)  # the usage error or --help; exits
        raise AssertionError("unreachable")
    target, parser, rest = {**phases, **(commands or {})}[argv[0]], leaves[argv[0]], argv[1:]
    if isinstance(target, Command):
        return _guarded(prog, target, lambda: target.main(parser.parse_args(rest)))
    return _guarded(prog, target, lambda: _run_benchmark(target, parser, rest))


def _guarded(prog: str, target: Benchmark | Command, fn: Callable[[], int]) -> int:
    error_exit = target.error_exit if isinstance(target, Benchmark) else None
    try:
        return _one_line_errors(prog, fn, tuple(target.errors), error_exit)
    finally:
        runner.close_process_group()
