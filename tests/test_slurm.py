"""Run Snakemake through ``profiles/slurm`` against a real (one-node, localhost) SLURM cluster.

What these tests prove, each with a tiny Snakefile written into a temporary directory:

* ``test_jobs_run_under_slurm``: the profile submits every job with ``sbatch`` and the
  rule's shell command really runs inside that SLURM job;
* ``test_failing_job_fails_the_run``: a job that fails under SLURM makes snakemake exit
  non-zero and leaves no half-written output behind;
* ``test_timed_out_job_is_retried_with_more_time``: a job SLURM kills at its time limit
  is retried (``retries: 2`` in the profile) with the larger ``runtime`` its rule asks for
  on attempt 2, and then succeeds;
* ``test_workflow_under_slurm``: the real workflow (``--configfile config.yaml
  configs/ci.yaml``) under SLURM, to every figure and the report: the one run of the CI
  config in the suite.

The cluster (``tests/slurm_cluster.py``) is started once per session and needs root plus
the Debian packages from ``scripts/install-debian-packages.sh``. Without them the tests
are skipped, or fail when the environment variable ``CI`` is set (CI must not silently
skip them).

Timing: SLURM enforces time limits in whole minutes and checks them only every 30 s, so
the time-limit scenario takes ~3.7 min whatever we do (attempt 1 is killed 60-91 s after
it starts, attempt 2 sleeps 95 s, plus the plugin's polling). To keep the whole file near
that, its snakemake run is started in the background before the first test of this
module and the other tests run meanwhile (the node has room for both). The cluster
starts in ~1.5 s; each tiny SLURM job costs ~12 s (two snakemake start-ups inside the job
plus status polling). Measured on 2 cores: ~3.8 min without the workflow test, ~6 min
with it.

The real-workflow run starts in the background too; tests/conftest.py runs this module first
so that both background runs overlap with the rest of the suite.

Run just these tests with ``pytest -m slurm``; deselect them with ``-m "not slurm"``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"


def _load_cluster_module():
    """Import tests/slurm_cluster.py by path, whatever pytest's import mode or rootdir."""
    if "slurm_cluster" in sys.modules:
        return sys.modules["slurm_cluster"]
    spec = importlib.util.spec_from_file_location(
        "slurm_cluster", Path(__file__).with_name("slurm_cluster.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["slurm_cluster"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


slurm_cluster = _load_cluster_module()

# The profile's status-check waits suit a real cluster (tens of seconds). Our jobs take
# seconds, so the tests poll sooner; everything else comes from the profile unchanged.
# Between two checks the plugin waits its init value, 10 s more after each check in which
# no job succeeded (up to 180 s); `seconds-between-status-checks` is snakemake's own
# first wait. A job here takes ~7 s, so it is seen at the second check (~12 s).
FAST_STATUS_CHECKS = [
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--seconds-between-status-checks",
    "1",
]

#: How snakemake reports a submission; the log path names the rule:
#: "Job 2 has been submitted with SLURM jobid 7 (log: .../slurm_logs/rule_hello/7.log)."
SUBMITTED = re.compile(
    r"has been submitted with SLURM jobid (\d+) \(log: [^)]*/slurm_logs/rule_(\w+?)/"
)

#: The time-limit test's rule sleeps this long. Attempt 1 (limit 1 min) must not finish
#: before SLURM kills it, which happens up to ~91 s after it starts (limit + SLURM's 30 s
#: enforcement period); attempt 2 (limit 2 min) must finish well inside 120 s.
SLOW_SLEEP_S = 95


# --------------------------------------------------------------------------- helpers
def _snakemake_exe() -> str:
    """The snakemake next to this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("snakemake")
    if beside.exists():
        return str(beside)
    found = shutil.which("snakemake")
    assert found, "snakemake is not installed in this environment"
    return found


def snakemake_cmd(workdir: Path, *args: str, timeout_s: int = 600) -> list[str]:
    """``timeout N snakemake --profile profiles/slurm --directory workdir ARGS``.

    ``timeout`` is the outer guard: a snakemake that cannot see its jobs' status waits
    forever, and a hung test run is worse than a failed one.
    """
    return [
        "timeout",
        str(timeout_s),
        _snakemake_exe(),
        "--profile",
        str(PROFILE),
        "--directory",
        str(workdir),
        *args,
    ]


def job_env(cluster) -> dict[str, str]:
    """The environment for snakemake and, through ``sbatch --export=ALL``, its jobs.

    The cluster's ``SLURM_CONF``, and this Python's bin directory first on ``PATH``: the
    workflow's rules call ``python``/``snakemake`` by name, and inside a SLURM job they
    must find the project's venv even if pytest was started without activating it.
    """
    env = cluster.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def run_snakemake(cluster, workdir: Path, *args: str, timeout_s: int = 600):
    """Run snakemake against ``cluster`` in ``workdir``; stdout and stderr merged."""
    return subprocess.run(
        snakemake_cmd(workdir, *args, timeout_s=timeout_s),
        cwd=workdir,
        env=job_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s + 30,
    )


def submissions(output: str) -> list[tuple[str, str]]:
    """``(rule, slurm_job_id)`` for every job snakemake submitted, in order."""
    return [(rule, job_id) for job_id, rule in SUBMITTED.findall(output)]


def job_record(cluster, job_id: str) -> dict[str, str]:
    """slurmctld's record of a finished job, as a dict (``JobState``, ``TimeLimit``, ...).

    There is no accounting database (so no ``sacct``) on the test cluster; instead
    slurmctld appends a line per finished job to its job-completion log (``jobcomp.log``,
    see tests/slurm_cluster.py). Unlike ``scontrol show job`` it does not forget a job
    after MinJobAge, so a test may look long after the job ended. ``TimeLimit`` is in
    minutes; ``Tres`` holds the allocation (``cpu=1,mem=100M,...``).
    """
    for line in (cluster.workdir / "jobcomp.log").read_text().splitlines():
        record = dict(re.findall(r"(\w+)=(\S*)", line))
        if record.get("JobId") == job_id:
            return record
    raise AssertionError(f"SLURM job {job_id} is not in slurmctld's job-completion log")


def write_snakefile(workdir: Path, text: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    snakefile = workdir / "Snakefile"
    snakefile.write_text(textwrap.dedent(text))
    return snakefile


def explain(result_output: str, cluster) -> str:
    """Failure message: snakemake's output and the daemons' logs."""
    return f"snakemake output:\n{result_output}\n\ncluster logs:\n{cluster.log_tails()}"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """One localhost SLURM cluster for the whole session, stopped at its end."""
    reason = slurm_cluster.unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so SLURM tests must run, but: {reason}")
        pytest.skip(reason)
    running = slurm_cluster.start(tmp_path_factory.mktemp("slurm-cluster"))
    yield running
    running.stop()


@dataclass
class BackgroundRun:
    """A snakemake run started in the background; ``wait()`` returns its output."""

    proc: subprocess.Popen
    workdir: Path
    log: Path

    def wait(self, timeout: float) -> str:
        self.proc.wait(timeout=timeout)
        return self.log.read_text()


@pytest.fixture(scope="module")
def timeout_run(cluster, tmp_path_factory):
    """Start the time-limit scenario's snakemake in the background (see module doc).

    The rule sleeps longer than its first-attempt limit of 1 minute; its runtime grows
    with the attempt number, as the workflow's real rules do.
    """
    workdir = tmp_path_factory.mktemp("timeout")
    snakefile = write_snakefile(
        workdir,
        f"""
        rule slow:
            output: "slow.txt"
            log: "logs/slow.log"
            resources:
                mem_mb=100,
                # minutes: 1 on the first attempt, 2 on the first retry
                runtime=lambda wildcards, attempt: attempt * 1,
            shell: "sleep {SLOW_SLEEP_S} && echo done > {{output}} 2> {{log}}"
        """,
    )
    log = workdir / "snakemake.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            # Init wait 10 s: with the plugin's +10 s back-off its checks fall at
            # 10, 30, 60, 100, 150, 210 s, just after the kill (<= ~93 s) and the
            # retry's end (~100 s later); smaller waits land later here.
            snakemake_cmd(
                workdir,
                "--snakefile",
                str(snakefile),
                "--slurm-init-seconds-before-status-checks",
                "10",
                "--seconds-between-status-checks",
                "10",
            ),
            cwd=workdir,
            env=job_env(cluster),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    run = BackgroundRun(proc=proc, workdir=workdir, log=log)
    yield run
    if proc.poll() is None:  # the test failed or was interrupted: end the run cleanly
        proc.terminate()  # snakemake then scancels its jobs
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CI_CONFIGS = ("config.yaml", "configs/ci.yaml")


@pytest.fixture(scope="module")
def workflow_run(cluster, tmp_path_factory):
    """Start the real workflow (CI's config, every figure) under SLURM in the background.

    The workflow is copied into a temporary directory and run there, so results land in the
    copy (not in the repository's results/) and nothing is skipped as already up to date.
    Most of its time is SLURM's polling, so it runs while the other tests do. One thread per
    job: the one test node's other CPU is busy with the time-limit scenario.
    """
    workdir = tmp_path_factory.mktemp("workflow") / "repo"
    shutil.copytree(
        REPO,
        workdir,
        ignore=shutil.ignore_patterns(".git", ".venv", "results", ".snakemake", ".pytest_cache",
                                      ".ruff_cache", "__pycache__", ".cache", ".gpucheck"),
    )  # fmt: skip
    log = workdir / "snakemake.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            snakemake_cmd(
                workdir, "--snakefile", str(workdir / "Snakefile"), "--max-threads", "1",
                *FAST_STATUS_CHECKS, "--configfile", *CI_CONFIGS, timeout_s=1500,
            ),
            cwd=workdir, env=job_env(cluster), stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    run = BackgroundRun(proc=proc, workdir=workdir, log=log)
    yield run
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module", autouse=True)
def _start_slow_scenarios_early(request):
    """Start the background runs before the first test, if their tests are selected at all.

    tests/conftest.py orders this module first, so they overlap with the rest of the suite.
    """
    selected = {item.name for item in request.session.items}
    if "test_timed_out_job_is_retried_with_more_time" in selected:
        request.getfixturevalue("timeout_run")
    if "test_workflow_under_slurm" in selected:
        request.getfixturevalue("workflow_run")


# --------------------------------------------------------------------------- tests
def test_jobs_run_under_slurm(cluster, tmp_path):
    """Both jobs go through sbatch, run inside SLURM, and SLURM knows them."""
    snakefile = write_snakefile(
        tmp_path,
        """
        rule all:
            input: "counted.txt"

        rule hello:
            output: "hello.txt"
            log: "logs/hello.log"
            resources: mem_mb=100, runtime=2
            # SLURM_JOB_ID is set only inside a SLURM job: the proof that it ran in one.
            shell: "echo $SLURM_JOB_ID > {output} 2> {log}"

        rule count:
            input: "hello.txt"
            output: "counted.txt"
            log: "logs/count.log"
            resources: mem_mb=100, runtime=2
            shell: "(cat {input}; echo $SLURM_JOB_ID) > {output} 2> {log}"
        """,
    )
    result = run_snakemake(cluster, tmp_path, "--snakefile", str(snakefile), *FAST_STATUS_CHECKS)
    assert result.returncode == 0, explain(result.stdout, cluster)

    jobs = dict(submissions(result.stdout))
    assert set(jobs) == {"hello", "count"}, explain(result.stdout, cluster)
    # The rules' shell commands saw exactly the job ids snakemake reported.
    assert (tmp_path / "counted.txt").read_text().split() == [jobs["hello"], jobs["count"]]
    assert (tmp_path / "logs" / "hello.log").exists()
    assert (tmp_path / "logs" / "count.log").exists()

    slurmctld_log = (cluster.workdir / "slurmctld.log").read_text()
    for rule, job_id in jobs.items():
        record = job_record(cluster, job_id)
        assert record["JobState"] == "COMPLETED", (rule, record)
        assert record["Partition"] == slurm_cluster.PARTITION, (rule, record)
        # The rule's resources reached sbatch: runtime=2 -> --time 2, mem_mb=100 -> --mem.
        assert record["TimeLimit"] == "2", (rule, record)
        assert "mem=100M" in record["Tres"], (rule, record)
        # slurmctld scheduled it: "sched: Allocate JobId=N NodeList=localhost ..." (main
        # scheduler) or "sched/backfill: _start_job: Started JobId=N ..." (backfill).
        assert re.search(rf"(Allocate|Started) JobId={job_id}\b", slurmctld_log), rule


def test_failing_job_fails_the_run(cluster, tmp_path):
    """A job failing under SLURM fails snakemake and leaves no partial output."""
    snakefile = write_snakefile(
        tmp_path,
        """
        rule broken:
            output: "broken.txt"
            log: "logs/broken.log"
            resources: mem_mb=100, runtime=2
            # Writes part of its output, then fails: snakemake must delete the part.
            shell: "echo partial > {output}; echo failing on purpose > {log}; exit 3"
        """,
    )
    # --retries 0: retrying a deterministic failure would only make the test slower.
    result = run_snakemake(
        cluster, tmp_path, "--snakefile", str(snakefile), "--retries", "0", *FAST_STATUS_CHECKS
    )
    assert result.returncode != 0, explain(result.stdout, cluster)
    assert result.returncode != 124, "snakemake hung until `timeout` killed it"
    assert not (tmp_path / "broken.txt").exists(), "failed job left its partial output"

    jobs = submissions(result.stdout)
    assert [rule for rule, _ in jobs] == ["broken"], explain(result.stdout, cluster)
    record = job_record(cluster, jobs[0][1])
    assert record["JobState"] == "FAILED", record
    assert "Error in rule broken" in result.stdout
    assert "failing on purpose" in (tmp_path / "logs" / "broken.log").read_text()


def test_workflow_under_slurm(cluster, workflow_run):
    """The real workflow's CI configuration, run through the SLURM profile (started early), to
    every figure and the report; then a rerun has nothing to do."""
    output = workflow_run.wait(timeout=1500)
    assert workflow_run.proc.returncode == 0, explain(output, cluster)
    repo = workflow_run.workdir
    assert submissions(output), "no job went through SLURM"
    figures = {p.name for p in (repo / "results/figures").glob("*.png")}
    expected = {"sft_loss", "training_curves", "ddk_weights", "ddk_domain_ppl", "lambda_sweep",
                "radar", "evaluation"}  # fmt: skip
    assert {f"{name}.png" for name in expected} <= figures, figures
    for name in figures:
        assert (repo / "results/figures" / name).with_suffix(".pdf").exists()
    for model in ("student_sft", "student_kd", "student_kd_dae", "student_ddk_ddk"):
        log = (repo / "results/models" / model / "seed0/train_log.csv").read_text()
        assert log.startswith("step,tokens,flops,wall_s,lr,loss")
    assert not list((repo / "results/checkpoints").rglob("checkpoint.pt"))
    local = [_snakemake_exe(), "--directory", str(repo), "--configfile", *CI_CONFIGS]
    report = subprocess.run([*local, "--report", "results/report.zip"], cwd=repo,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    with zipfile.ZipFile(repo / "results/report.zip") as z:
        assert any(n.endswith("lambda_sweep.png") for n in z.namelist())
    again = subprocess.run([*local, "-n"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_timed_out_job_is_retried_with_more_time(cluster, timeout_run):
    """SLURM kills attempt 1 at 1 minute; attempt 2 gets 2 minutes and succeeds."""
    output = timeout_run.wait(timeout=600)
    assert timeout_run.proc.returncode == 0, explain(output, cluster)
    assert (timeout_run.workdir / "slow.txt").read_text().strip() == "done"

    jobs = submissions(output)
    assert [rule for rule, _ in jobs] == ["slow", "slow"], explain(output, cluster)
    first, second = (job_record(cluster, job_id) for _, job_id in jobs)
    # Attempt 1: 1-minute limit, killed by SLURM. Attempt 2: 2 minutes, completed.
    assert (first["JobState"], first["TimeLimit"]) == ("TIMEOUT", "1"), first
    assert (second["JobState"], second["TimeLimit"]) == ("COMPLETED", "2"), second
    assert "TIMEOUT" in output  # snakemake reported why attempt 1 failed
