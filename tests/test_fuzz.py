"""Property-based fuzzing (hypothesis): every call either returns finite, correctly shaped output or raises a
VaeInferError, whatever it is given.

Three loops: arrays of any shape, dtype and values (and ragged lists, objects, strings, scalars) into every
model method; model.json with any field changed (a copy of tests/fixtures/tiny-model); command lines made of
the commands' own options with hostile values (CliRunner, in-process). Each loop runs in a child process (this
file as a script): every example has a SIGALRM guard of HANG_SECONDS inside the child, and the parent kills a
child that runs past LOOP_SECONDS, so a hang fails the test instead of stalling CI. The examples are
derandomized (the same cases on every run) and counted; the counts are printed in the test output."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"  # calibrated, with variants and a latent index: every method works
TINY = Path(__file__).parent / "fixtures" / "tiny-model"
IMAGES = Path(__file__).parent / "fixtures" / "tiny-images.npz"
HANG_SECONDS = 30  # one example; the slowest legitimate one takes well under a second
LOOP_SECONDS = 300  # one whole loop, a last guard for a hang no signal can interrupt (inside a C call)
EXAMPLES = {"arrays": 300, "manifests": 200, "cli": 150}
MEMORY_LIMIT = 6 << 30  # the child's address space: an unbounded allocation fails fast instead of swapping


# -- what the loops assert ----------------------------------------------------------------------------------------


class WrongOutput(AssertionError):
    """A call returned, but not finite, correctly shaped output; str() is a stable label, details are kept apart."""

    def __init__(self, label: str, details: str = "") -> None:
        super().__init__(label)
        self.details = details


def _finite(a: object, shape: tuple, what: str) -> None:
    a = np.asarray(a)
    if a.shape != shape:
        raise WrongOutput(f"{what}: wrong shape", f"shape {a.shape}, expected {shape}")
    if a.dtype == object or not np.isfinite(a).all():
        raise WrongOutput(f"{what}: non-finite values")


class Findings:
    """What a loop found: calls that raised something other than a VaeInferError (by call, exception type and
    the vae_infer function that raised it) or returned wrong output, each with a count and its first example.
    The loop goes on after a finding, so one run reports every kind of failure, not only the first."""

    def __init__(self) -> None:
        self.items: dict[str, dict] = {}

    def record(self, call: str, e: BaseException, example: object) -> None:
        if isinstance(e, WrongOutput):
            key, message = f"{call}: {e}", e.details
        else:
            key, message = f"{call}: {type(e).__name__} in {_where(e)}", " ".join(str(e).split())[:300]
        item = self.items.setdefault(key, {"count": 0, "message": message, "example": _short(example)})
        item["count"] += 1

    def run(self, call: str, fn, example: object, check=None) -> object:
        """fn() under the hang guard: its result, or None when it raised a VaeInferError (what it should do
        with bad input) or something else (recorded); check(result) may raise WrongOutput (recorded)."""
        from vae_infer import VaeInferError

        try:
            with _Guard():
                out = fn()
        except VaeInferError:
            return None
        except Exception as e:  # noqa: BLE001  (any other exception is what the loop looks for)
            self.record(call, e, example)
            return None
        if check is not None:
            try:
                check(out)
            except WrongOutput as e:
                self.record(call, e, example)
        return out

    def dump(self) -> None:
        print("findings: " + json.dumps(self.items, sort_keys=True), flush=True)


def _where(e: BaseException) -> str:
    """The innermost function of vae_infer (else of anything) on the exception's traceback."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if f"{os.sep}vae_infer{os.sep}" in f.filename] or frames
    if not ours:
        return "?"
    f = ours[-1]
    return f"{Path(f.filename).relative_to(ROOT) if f.filename.startswith(str(ROOT)) else f.filename}:{f.name}"


def _short(example: object) -> str:
    text = repr(example)
    return text if len(text) <= 400 else text[:397] + "..."


def _rows(x: object, features: int, image_shape: tuple[int, int]) -> int | None:
    """The number of images in x if x is shaped like a batch of images, else None."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):
        return None
    if a.ndim not in (2, 3, 4):
        return None
    # (n, h*w), (n, h, w), and for a gray model (n, h, w, 1): a batch of gray images with its channel axis
    if ((a.ndim == 2 and a.shape[1] == features) or (a.ndim == 3 and a.shape[1:] == image_shape)
            or (a.ndim == 4 and a.shape[1:] == (*image_shape, 1))):
        return a.shape[0]
    return None


def _alarm(signum, frame):
    raise TimeoutError(f"an example ran past {HANG_SECONDS} s")


class _Guard:
    """SIGALRM around one example: a hang becomes a TimeoutError, which is not a VaeInferError, so it fails."""

    def __enter__(self):
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(HANG_SECONDS)

    def __exit__(self, *exc):
        signal.alarm(0)


def _settings(loop: str):
    from hypothesis import HealthCheck, settings

    return settings(max_examples=EXAMPLES[loop], deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


# -- loop 1: arrays into every model method -------------------------------------------------------------------------


def _array_strategies(features: int, image_shape: tuple[int, int], latent: int):
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    dtypes = st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                       hnp.boolean_dtypes(), hnp.complex_number_dtypes(), st.just(np.dtype("U3")),
                       st.just(np.dtype("datetime64[s]")))

    def values(dtype):
        if dtype.kind == "f":
            # the edges: NaN, inf, the largest finite, subnormals, -0.0, just outside [0, 1]
            top = float(np.finfo(dtype).max)
            special = st.sampled_from([v for v in (np.nan, np.inf, -np.inf, 1e300, -1e-50, 1 + 1e-9, 5e-324, -0.0,
                                                   0.5, 1.0, top) if not math.isfinite(v) or abs(v) <= top])
            return st.one_of(special, st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8))
        return hnp.from_dtype(dtype)

    def array(shape):
        return dtypes.flatmap(lambda d: hnp.arrays(d, shape, elements=values(d), fill=values(d)))

    n = st.integers(0, 3)
    shapes = st.one_of(
        n.map(lambda k: (k, features)), n.map(lambda k: (k, *image_shape)), st.just(image_shape),
        st.just((features,)), n.map(lambda k: (k, latent)), st.just((latent,)),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
        st.sampled_from([(1, features + 1), (2, *image_shape, 1), (image_shape[0] + 1,) * 2, (1, 3, features)]),
    )
    arrays = shapes.flatmap(array)
    # mostly valid inputs, so the calls get past validation: images of the right shape, uint8 or floats in
    # [0, 1] with an edge value now and then; latent codes of any finite size (1e38 is float32's range)
    image_shapes = st.one_of(st.integers(1, 3).map(lambda k: (k, features)),
                             st.integers(1, 3).map(lambda k: (k, *image_shape)), st.just(image_shape),
                             st.just((features,)))

    def unit(d):
        edge = st.sampled_from([0.0, 1.0, -0.0, 1 + 1e-9, -1e-50, np.nan])
        inside = st.floats(0, 1, width=d.itemsize * 8)
        return st.one_of(inside, inside, inside, edge) if d.itemsize >= 4 else inside

    images = st.one_of(
        image_shapes.flatmap(lambda s: hnp.arrays(np.uint8, s)),
        st.tuples(hnp.floating_dtypes(sizes=(16, 32, 64)), image_shapes).flatmap(
            lambda t: hnp.arrays(t[0], t[1], elements=unit(t[0]), fill=st.floats(0, 1, width=t[0].itemsize * 8))))
    codes = st.tuples(hnp.floating_dtypes(sizes=(32, 64)), st.integers(1, 3)).flatmap(
        lambda t: hnp.arrays(t[0], (t[1], latent), elements=st.one_of(
            st.floats(-4, 4, width=t[0].itemsize * 8),
            st.sampled_from([1e6, -1e6, 1e6 + 1, 1e38, -3e38, 1e300 if t[0].itemsize == 8 else 3e38]))))
    lists = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3)),
                         lambda inner: st.lists(inner, max_size=4), max_leaves=12)
    ragged = st.integers(1, 3).map(lambda k: [[0.1] * features] + [[0.2] * (features - 1)] * k)
    odd = st.sampled_from([None, "images", b"\x00\x01", {"a": 1}, 3, 2.5, np.float32(1.0), object()])
    single = st.sampled_from([image_shape, (features,), (1, features)]).flatmap(
        lambda s: st.one_of(hnp.arrays(np.uint8, s), hnp.arrays(np.float32, s, elements=st.floats(0, 1, width=32))))
    return st.one_of(images, images, images, codes, arrays, arrays, lists, ragged, odd), single


def run_arrays(model) -> int:
    from hypothesis import given
    from hypothesis import strategies as st

    from vae_infer.anomaly.scores import SCORE_KINDS

    f, shape, latent = model.manifest.features, model.image_shape, model.latent_size
    inputs, single = _array_strategies(f, shape, latent)
    odd_counts = st.one_of(st.integers(-3, 1), st.sampled_from([10**9, 2**63, 2.5, "3", None, True, np.int64(2)]))
    counts = st.one_of(st.integers(2, 6), st.integers(2, 6), odd_counts)  # mostly valid, so calls go deeper
    count = [0]
    returned: dict[str, int] = {}
    findings = Findings()

    @_settings("arrays")
    @given(x=inputs, a=st.one_of(single, inputs), b=st.one_of(single, inputs), kind=st.sampled_from(SCORE_KINDS),
           n=counts, steps=counts, method=st.sampled_from(["linear", "slerp", "graph", "bogus"]), fine=counts)
    def fuzz(x, a, b, kind, n, steps, method, fine):
        count[0] += 1
        rows = _rows(x, f, shape)
        example = {"x": x, "a": a, "b": b, "kind": kind, "n": n, "steps": steps, "method": method, "fine": fine}

        def images(out):
            _finite(out, (rows, f), "images")
            if ((out < 0) | (out > 1)).any():
                raise WrongOutput("pixels outside [0, 1]")

        def flags(out):
            _finite(out[1], (rows,), "scores")
            if out[0].dtype != bool or out[0].shape != (rows,):
                raise WrongOutput("flags: wrong dtype or shape")

        def metrics(out):
            bad = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise WrongOutput("non-finite metrics", ", ".join(bad))

        calls = {
            "encode": (lambda: model.encode(x), lambda out: [_finite(p, (rows, latent), "codes") for p in out]),
            "decode": (lambda: model.decode(x), lambda out: _finite(out, (np.shape(x)[0], f), "images")),
            "reconstruct": (lambda: model.reconstruct(x), images),
            "score": (lambda: model.score(x, kind=kind, samples=2 if kind == "iwae" else None),
                      lambda out: _finite(out, (rows,), "scores")),
            "detect": (lambda: model.detect(x, kind=kind if kind != "iwae" else "recon"), flags),
            "denoise": (lambda: model.denoise(x), images),
            "sample": (lambda: model.sample(n, seed=0), lambda out: _finite(out, (int(n), f), "images")),
            "interpolate": (lambda: model.interpolate(a, b, steps=steps, method=method),
                            lambda out: _finite(out, (int(steps), f), "images")),
            "path_metrics": (lambda: model.path_metrics(x, fine=fine), metrics),
        }
        for name, (call, check) in calls.items():
            if findings.run(name, call, example, check) is not None:
                returned[name] = returned.get(name, 0) + 1

    fuzz()
    print(f"calls that returned (the rest raised a VaeInferError): {json.dumps(returned, sort_keys=True)}")
    findings.dump()
    return count[0]


# -- loop 2: model.json with any field changed ----------------------------------------------------------------------


def _paths(node: object, path: tuple = ()) -> list[tuple]:
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, path + (i,))
    return out


def run_manifests(work: Path) -> int:
    from hypothesis import given
    from hypothesis import strategies as st

    import vae_infer

    original = json.loads((TINY / "model.json").read_text())
    paths = _paths(original)
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-3, 3), st.floats(),
                        st.sampled_from([0, -1, 1, 2, 784, 28, 2.7, 1e308, -0.0, float("nan"), float("inf"), "1",
                                         "", "batch", "../decoder.onnx", "/dev/zero", "encoder.onnx", "x" * 300]),
                        st.text(max_size=8))
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                          max_leaves=8)
    u8, x = _fixture_images()
    baseline = vae_infer.load(TINY, threads=1)
    expected = (baseline.encode(x), baseline.decode(np.zeros((2, baseline.latent_size), np.float32)))
    count, accepted = [0], [0]
    findings = Findings()

    @_settings("manifests")
    @given(path=st.sampled_from(paths), action=st.sampled_from(["replace", "replace", "delete", "add"]),
           value=values, key=st.text(min_size=1, max_size=6))
    def fuzz(path, action, value, key):
        count[0] += 1
        d = json.loads(json.dumps(original))
        parent = d
        for p in path[:-1]:
            parent = parent[p]
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[key] = value
        else:
            parent[path[-1]] = value
        pkg = work / f"m{count[0]}"
        shutil.copytree(TINY, pkg)
        (pkg / "model.json").write_text(json.dumps(d))  # NaN and inf are written as bare NaN/Infinity
        example = {"path": path, "action": action, "value": value, "key": key}

        def use():
            m = vae_infer.load(pkg, threads=1)
            return m, (m.encode(x), m.decode(np.zeros((2, m.latent_size), np.float32))), m.encode(u8)[0], \
                m.sample(2, seed=0)

        def check(out):
            # accepted: then the change cannot matter for float inputs, and every result is finite
            m, got, uint8, samples = out
            for a, b in zip([*got[0], got[1]], [*expected[0], expected[1]], strict=True):
                if a.shape != b.shape or not np.array_equal(a, b):
                    raise WrongOutput("accepted, but float results changed")
            _finite(uint8, (len(u8), m.latent_size), "encode(uint8)")
            _finite(samples, (2, m.manifest.features), "sample")

        if findings.run(f"load with {_field_name(path)} changed", use, example, check) is not None:
            accepted[0] += 1
        shutil.rmtree(pkg)

    fuzz()
    print(f"changed manifests accepted (the rest refused with a VaeInferError): {accepted[0]}")
    findings.dump()
    return count[0]


def _field_name(path: tuple) -> str:
    """The field's section, for grouping findings: input.uint8_scale, graphs, files, training, ..."""
    head = [str(p) for p in path[:2] if not isinstance(p, int)]
    return ".".join(head[:2] if head and head[0] == "input" else head[:1])


def _fixture_images() -> tuple[np.ndarray, np.ndarray]:
    with np.load(IMAGES) as z:
        u8 = z["images"][:3].reshape(3, -1)
    return u8, u8.astype(np.float32) / 255.0


# -- loop 3: command lines --------------------------------------------------------------------------------------------


def _cli_files(tmp: Path) -> dict[str, str]:
    """Input files of every kind a user might pass, good and bad."""
    u8, x = _fixture_images()
    f = {}

    def save(name, arr):
        np.save(tmp / name, arr)
        f[name] = str(tmp / name)

    save("images.npy", x)
    save("one.npy", u8[0])
    save("latents.npy", np.array([[0.0, 1.0], [2.0, -1.0]], np.float32))
    save("huge-latents.npy", np.array([[1e38, 1e38]], np.float32))
    save("nan.npy", np.full((2, x.shape[1]), np.nan, np.float32))
    save("big-pixel.npy", np.full((1, x.shape[1]), 1e300))
    save("empty.npy", np.zeros((0, x.shape[1]), np.float32))
    save("side29.npy", np.zeros((29, 29), np.float32))
    save("scalar.npy", np.float32(0.5))
    save("ints.npy", np.arange(12).reshape(3, 4))
    np.save(tmp / "objects.npy", np.array([{}], dtype=object), allow_pickle=True)
    f["objects.npy"] = str(tmp / "objects.npy")
    np.savez(tmp / "images.npz", images=u8, labels=np.arange(len(u8)))
    f["images.npz"] = str(tmp / "images.npz")
    f["images.npz:images"] = f"{tmp / 'images.npz'}:images"
    f["images.npz:nokey"] = f"{tmp / 'images.npz'}:nokey"
    np.savez(tmp / "calib.npz", images=np.repeat(u8, 4, axis=0))
    f["calib.npz"] = str(tmp / "calib.npz")
    data = (tmp / "images.npz").read_bytes()
    (tmp / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp / "corrupt.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    (tmp / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00" + b"garbage" * 10)
    (tmp / "text.npy").write_text("not numpy at all")
    (tmp / "folder.npy").mkdir()
    os.mkfifo(tmp / "fifo.npy")
    os.symlink("/dev/zero", tmp / "zero.npy")
    for name in ("truncated.npz", "corrupt.npz", "corrupt.npy", "text.npy", "folder.npy", "fifo.npy", "zero.npy"):
        f[name] = str(tmp / name)
    f["missing.npy"] = str(tmp / "missing.npy")
    f["csv"] = str(tmp / "x.csv")
    return f


COMMANDS = ("info", "encode", "decode", "reconstruct", "sample", "score", "detect", "denoise", "interpolate",
            "calibrate", "index info", "index build")
NUMBERS = ("0", "-1", "1", "2", "3", "2.5", "1e9", "1000000000", "nan", "inf", "-inf", "abc", "", "0.5", "1.5")


def run_cli(work: Path) -> int:
    import click
    from click.testing import CliRunner
    from hypothesis import given
    from hypothesis import strategies as st

    from vae_infer.cli import main

    files = _cli_files(work)
    outs = [str(work / "out" / n) for n in ("o.npy", "o.npz", "o.png", "o.txt")] + [
        str(work / "no-such-folder" / "o.npy"), str(work), str(work / "folder.npy")]
    (work / "out").mkdir()
    model = work / "model"
    shutil.copytree(SHIPPED, model)  # calibrate and index build rewrite it
    models = [str(model), str(work / "missing-model"), str(work), files["images.npy"]]
    runner = CliRunner()
    count = [0]
    codes: dict[str, int] = {}
    findings = Findings()

    def value_for(p):
        """Mostly a value of the option's own type, so the command gets past parsing; sometimes anything."""
        t = p.type
        anything = st.one_of(st.sampled_from(sorted(files.values())), st.sampled_from(NUMBERS), st.text(max_size=5))
        if isinstance(t, click.Choice):
            typed = st.sampled_from(list(t.choices))
        elif isinstance(t, (click.types.IntParamType, click.types.FloatParamType)):
            typed = st.sampled_from(["1", "2", "3", "0.5", "0.9"] + list(NUMBERS))
        elif "out" in p.name or p.name in ("png", "markdown", "plot"):
            typed = st.sampled_from(outs)
        else:
            typed = st.sampled_from(sorted(files.values()))
        return st.one_of(typed, typed, typed, anything)

    def command_line(name: str):
        cmd = main
        for word in name.split():
            cmd = cmd.commands[word]
        options = [p for p in cmd.params if p.opts[0].startswith("-") and p.name != "threads"]
        required = [p for p in options if p.required]
        positional = [p for p in cmd.params if not p.opts[0].startswith("-") and p.name != "model"]

        def option(p):
            return st.just([p.opts[0]]) if p.is_flag else value_for(p).map(lambda v: [p.opts[0], v])

        return st.tuples(
            st.sampled_from([models[0]] * 6 + models[1:]),
            st.tuples(*[st.sampled_from(sorted(files.values())) for _ in positional]),
            st.tuples(*[option(p) for p in required]),
            st.lists(st.sampled_from(options).flatmap(option), max_size=4) if options else st.just([]),
        ).map(lambda t: [*name.split(), t[0], *t[1], *[w for o in (*t[2], *t[3]) for w in o]])

    lines = st.sampled_from(COMMANDS).flatmap(command_line)

    @_settings("cli")
    @given(argv=lines)
    def fuzz(argv):
        count[0] += 1
        findings.run(argv[0] if argv[0] != "index" else " ".join(argv[:2]), lambda: _invoke(argv), argv, _clean)
        leftovers = [p.name for p in (work / "out").iterdir() if p.name.startswith(".")]
        if leftovers:
            findings.record(argv[0], WrongOutput("left hidden files behind", str(leftovers)), argv)

    def _invoke(argv):
        result = runner.invoke(main, [*argv, "--threads", "1"])
        codes[str(result.exit_code)] = codes.get(str(result.exit_code), 0) + 1
        return argv, result

    def _clean(out):
        argv, result = out
        if result.exit_code not in (0, 1, 2):
            raise WrongOutput(f"exit code {result.exit_code}", result.output[-300:])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise WrongOutput(f"unhandled {type(result.exception).__name__}", repr(result.exception))
        if "Traceback" in result.output:
            raise WrongOutput("printed a traceback", result.output[-300:])
        if result.exit_code == 1:
            lines = result.stderr.strip().splitlines()
            if len(lines) != 1 or not lines[0].startswith("Error: "):
                raise WrongOutput("not one Error: line", result.stderr[-300:])
            if lines[0].startswith("Error: unexpected ") or lines[0].startswith("Error: out of memory"):
                # a clean line, but the library raised an unnamed error: where it came from is the finding
                cause = result.exception
                while cause is not None and isinstance(cause, (SystemExit, click.ClickException)):
                    cause = cause.__cause__ or cause.__context__
                where = _where(cause) if cause is not None else "?"
                raise WrongOutput(f"{lines[0].split(':')[1].split(' in ')[0].strip()} in {where}", lines[0])
        if result.exit_code == 0 and "--json" in argv:
            try:
                json.loads(result.stdout, parse_constant=_no_constant)  # strict JSON: no bare NaN
            except ValueError as e:
                raise WrongOutput("invalid JSON", str(e)) from e

    fuzz()
    print(f"exit codes (0 done, 1 one Error: line, 2 usage): {json.dumps(codes, sort_keys=True)}")
    findings.dump()
    return count[0]


def _no_constant(name: str):
    raise ValueError(f"bare {name} in JSON output")


# -- the parent: each loop in a child process ------------------------------------------------------------------------


# Findings known today, by loop: each is a strict xfail below, so it turns into a failure once fixed (then
# delete its line). Anything found that is not listed here fails test_fuzz_loop.
KNOWN: dict[str, dict[str, str]] = {
    "arrays": {},
    "manifests": {},
    "cli": {},
}
_LOOPS: dict[str, tuple[int, dict, str]] = {}


def _loop(loop: str, tmp_path_factory) -> tuple[int, dict, str]:
    """(examples run, findings, output) of one loop, run once per session in a child process."""
    if loop not in _LOOPS:
        work = tmp_path_factory.mktemp(f"fuzz-{loop}")
        proc = subprocess.Popen([sys.executable, __file__, loop, str(work)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        try:
            out, _ = proc.communicate(timeout=LOOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"the {loop} loop ran past {LOOP_SECONDS} s (a hang no signal could interrupt):\n"
                        f"{out[-4000:]}")
        assert proc.returncode == 0, f"the {loop} loop stopped:\n{out[-8000:]}"
        lines = out.splitlines()
        done = [line for line in lines if line.startswith("examples run: ")]
        found = [line for line in lines if line.startswith("findings: ")]
        assert done and found, out[-4000:]
        _LOOPS[loop] = (int(done[-1].split(": ")[1]), json.loads(found[-1].split(": ", 1)[1]), out)
    return _LOOPS[loop]


@pytest.mark.parametrize("loop", sorted(EXAMPLES))
@pytest.mark.slow
def test_fuzz_loop(loop, tmp_path_factory):
    """Every call of the loop returned finite, correctly shaped output or raised a VaeInferError, except
    the known findings (KNOWN)."""
    count, findings, out = _loop(loop, tmp_path_factory)
    print("\n".join(line for line in out.splitlines() if not line.startswith("findings: ")))
    assert count == EXAMPLES[loop]
    new = {k: v for k, v in findings.items() if k not in KNOWN[loop]}
    assert not new, "new findings:\n" + "\n".join(
        f"{k} (x{v['count']}): {v['message']}\n    first example: {v['example']}" for k, v in new.items())


if any(KNOWN.values()):  # none today: the test exists only while some finding is known

    @pytest.mark.parametrize(("loop", "key"), [
        pytest.param(loop, key, id=f"{loop}: {key}", marks=pytest.mark.xfail(strict=True, reason=reason))
        for loop, known in KNOWN.items() for key, reason in known.items()])
    def test_known_finding_is_fixed(loop, key, tmp_path_factory):
        _, findings, _ = _loop(loop, tmp_path_factory)
        assert key not in findings, f"{key}: {findings[key]['message']}; first example: {findings[key]['example']}"


# -- named hostile command lines, each with the message it must give ------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[dict[str, str], Path]:
    work = tmp_path_factory.mktemp("hostile")
    model = work / "model"
    shutil.copytree(SHIPPED, model)
    (work / "out").mkdir()
    return _cli_files(work), model


def _one_error(argv: list[str]) -> str:
    from click.testing import CliRunner

    from vae_infer.cli import main

    result = CliRunner().invoke(main, [str(a) for a in argv])
    assert result.exit_code == 1, (argv, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(("argv", "fragments"), [
    (["sample", "{model}", "-n", "1000000000", "--out", "{out}/s.npy"], ["returns at most", "rows"]),
    (["index", "build", "{model}", "--data", "{empty.npy}"], ["empty.npy", "holds no images"]),
    (["index", "build", "{model}", "--data", "{corrupt.npz}"], ["corrupt.npz"]),
    (["index", "build", "{model}", "--data", "{truncated.npz}"], ["truncated.npz"]),
    (["interpolate", "{model}", "{one.npy}", "{one.npy}", "--reference", "{corrupt.npz}"], ["corrupt.npz"]),
    (["interpolate", "{model}", "{side29.npy}", "{one.npy}"], ["side29.npy", "got (29, 29)"]),
    (["encode", "{model}", "{folder.npy}", "--out", "{out}/e.npz"], ["folder.npy is a folder; expected a file"]),
    (["encode", "{model}", "{fifo.npy}", "--out", "{out}/e.npz"], ["fifo.npy is not a regular file"]),
    (["encode", "{model}", "{zero.npy}", "--out", "{out}/e.npz"], ["zero.npy is not a regular file"]),
    (["encode", "{model}", "{corrupt.npy}", "--out", "{out}/e.npz"], ["corrupt.npy", "cannot read it"]),
    (["encode", "{model}", "{text.npy}", "--out", "{out}/e.npz"], ["does not start with numpy's magic bytes"]),
    (["encode", "{model}", "{objects.npy}", "--out", "{out}/e.npz"], ["Python objects", "never loads"]),
    (["encode", "{model}", "{scalar.npy}", "--out", "{out}/e.npz"], ["scalar.npy", "0-d array"]),
    (["encode", "{model}", "{truncated.npz}", "--out", "{out}/e.npz"], ["truncated.npz", "not a zip archive"]),
    (["decode", "{model}", "{huge-latents.npy}", "--out", "{out}/d.npy"], ["latent codes must lie within"]),
    (["score", "{model}", "{big-pixel.npy}"], ["must lie in [0, 1]"]),
    (["score", "{model}", "{nan.npy}"], ["NaN or inf"]),
])
def test_hostile_command_lines_give_one_clear_error(hostile, argv, fragments):
    files, model = hostile
    names = {"model": str(model), "out": str(model.parent / "out"), **files}
    line = _one_error([re.sub(r"\{([^}]+)\}", lambda m: names[m.group(1)], a) for a in argv])
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "allow_pickle" not in line and "Traceback" not in line
    assert not line.startswith("Error: unexpected"), line  # a named error, not the handler's last resort
    assert not any(p.name.startswith(".") for p in (model.parent / "out").iterdir())


def test_big_finite_pixel_is_not_called_nan(hostile):
    line = _one_error(["score", hostile[1], hostile[0]["big-pixel.npy"]])
    assert "NaN" not in line and "1e+300" in line


_BOUNDED = """
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import vae_infer
m = vae_infer.load(sys.argv[1], threads=1)
with np.load(sys.argv[2]) as z:
    a, b = z["images"][:2]
try:
    {call}
    print("returned")
except vae_infer.VaeInferError as e:
    print("named error:", e)
except MemoryError as e:
    print("MemoryError:", e)
"""


@pytest.mark.parametrize("call", [
    "m.path_metrics(np.array([[0, 0], [1, 1]], np.float32), fine=10**9)",
    "m.interpolate(a, b, steps=10**9)",
    "m.sample(10**9)",
    "m.decode(np.broadcast_to(np.zeros((1, 2), np.float32), (10**7, 2)))",
])
@pytest.mark.slow
def test_oversized_requests_are_refused_before_allocating(call):
    """Run with a 4 GiB address-space limit (so a failure cannot take the machine): a named error, never a
    MemoryError."""
    code = _BOUNDED.format(limit=4 << 30, call=call)
    out = subprocess.run([sys.executable, "-c", code, str(SHIPPED), str(IMAGES)], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.startswith("named error:"), (out.stdout, out.stderr[-2000:])


def test_a_29x29_image_is_not_29_images():
    import vae_infer
    from vae_infer import InputError

    m = vae_infer.load(SHIPPED, threads=1)
    with pytest.raises(InputError) as info:
        m.interpolate(np.zeros((29, 29), np.float32), np.zeros(m.manifest.features, np.float32))
    assert "29 images" not in str(info.value) and "(29, 29)" in str(info.value)


@pytest.mark.slow
def test_the_hang_guard_fires(tmp_path):
    """The guard itself: a call that blocks (opening a FIFO nobody writes) becomes a TimeoutError."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_fuzz as t; "
            f"t.HANG_SECONDS = 1\ntry:\n    with t._Guard():\n        open({str(fifo)!r}).read()\n"
            f"except TimeoutError as e:\n    print('guarded:', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "guarded: an example ran past 1 s" in out.stdout, out


def main_child(loop: str, work: Path) -> None:
    import resource

    import vae_infer

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    work.mkdir(parents=True, exist_ok=True)
    if loop == "arrays":
        n = run_arrays(vae_infer.load(SHIPPED, threads=1))
    elif loop == "manifests":
        n = run_manifests(Path(tempfile.mkdtemp(dir=work)))
    else:
        n = run_cli(Path(tempfile.mkdtemp(dir=work)))
    print(f"examples run: {n}", flush=True)


if __name__ == "__main__":
    main_child(sys.argv[1], Path(sys.argv[2]))
