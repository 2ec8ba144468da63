"""scripts/submit.py: the job it submits (flags, sbatch script, job.json), the variables its tasks set, and the
stop-and-requeue path, run by submitit's local executor (no SLURM: scripts/slurm_check.sh runs a real one)."""
import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest
import submitit
import torch

from datasets.demo import make_demo_data
from engine.checkpoint import load_checkpoint
from scripts import submit
from tests.cli import error_line

TINY = ("--arch s3d --seq 8 --img_dim 32 --train_batch 2 --workers 0 --cluster 4 --queue_size 16 --channel 16 "
        "--epoch 2 --split 1 --queue_start 1 --lr_decay 1")
CPU = ["--gpus_per_node", "0", "--tasks_per_node", "2", "--cpus_per_task", "1"]
DONE_S = 240  # the most a local job of two processes may take here (a few seconds' training; imports on 2 cores)


def plan(ours: list[str], theirs: str) -> submit.Plan:
    return submit.plan(submit.parse_args(ours), shlex.split(theirs))


def fake_slurm(folder: Path, sbatch: str) -> Path:
    """A folder with stand-ins for ``srun`` and ``sbatch`` (whose body is ``sbatch``), to put first on PATH."""
    folder.mkdir()
    for name, body in (("srun", "exit 0"), ("sbatch", sbatch)):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def test_the_job_resumes_its_run_and_refuses_flags_that_a_requeue_would_repeat(capsys):
    job = plan(CPU, f"{TINY} --csv_file k.csv")
    assert job.argv == (*shlex.split(TINY), "--csv_file", "k.csv", "--out_dir", "runs/mfo", "--resume", "auto")
    assert (job.job_dir, job.nodes, job.tasks, job.gpus_per_node) == (Path("runs/mfo/slurm"), 1, 2, 0)
    given = f"{TINY} --csv_file k.csv --out_dir runs/x --resume auto"
    assert plan(["--nodes", "2", "--job_dir", "jobs"], given).argv == tuple(shlex.split(given))
    assert plan(["--nodes", "2", "--job_dir", "jobs"], given).tasks == 16  # 8 GPUs a node, one task each
    probe = "--random_init --train_csv a.csv --test_csv b.csv --out_dir runs/p"
    assert plan(["--script", "eval_linear.py"], probe).argv == (*shlex.split(probe), "--resume", "auto")
    retrieval = plan(["--script", "eval_linear.py"], probe + " --retrieval")  # trains nothing: no --resume
    assert retrieval.argv == tuple(shlex.split(probe + " --retrieval")) and retrieval.job_dir == Path("runs/p_slurm")
    # a demo starts again in its own folder (an implied --overwrite): a job resumes it instead of refusing it
    demo = plan(CPU, "--demo")
    assert demo.argv == ("--demo", "--out_dir", "runs/demo", "--resume", "auto")
    import train

    assert train.parse_args(list(demo.argv)).overwrite is False
    assert plan(["--script", "finetune.py"], probe).tasks == 1
    for ours, theirs, line in [
        (CPU, f"{TINY} --csv_file k.csv --overwrite", "error: --overwrite: every start of the job would delete"),
        (CPU, f"{TINY} --csv_file k.csv --resume runs/a/last.pth", "error: --resume runs/a/last.pth: every start"),
        (CPU, f"{TINY} --csv_file k.csv --multiprocessing-distributed", "error: --multiprocessing-distributed: "),
        (["--script", "finetune.py", "--gpus_per_node", "2"], probe, "error: finetune.py runs in one process: "),
    ]:
        assert error_line(lambda: submit.main([*ours, "--", *shlex.split(theirs)])).startswith(line)
    with pytest.raises(SystemExit) as info:  # the script's own parser: usage and status 2, before any submission
        submit.main([*CPU, "--", "--csv_file", "k.csv", "--seq", "0"])
    assert info.value.code == 2 and "argument --seq: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        submit.main(["--time", "2", "--signal_delay", "120", "--", "--csv_file", "k.csv"])
    assert "--signal_delay 120 s leaves less than 40 s of --time 2 min: SLURM may send" in capsys.readouterr().err


def test_the_sbatch_script_passes_the_cluster_settings_through_and_job_json_holds_the_command(
        tmp_path, monkeypatch, capsys):
    seen = tmp_path / "sbatch_env"
    bin_dir = fake_slurm(tmp_path / "bin", f'env > {seen}\necho "Submitted batch job 4242"')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name, value in (("RANK", "3"), ("MASTER_PORT", "1234"), ("SLURM_JOB_ID", "99"), ("SLURM_CONF", "/c.conf"),
                        ("SBATCH_ACCOUNT", "mine")):  # a submission from inside a torchrun worker of a job
        monkeypatch.setenv(name, value)
    out_dir = tmp_path / "run"
    argv = ["--nodes", "2", "--partition", "gpu", "--time", "600", "--account", "acc", "--qos", "high",
            "--constraint", "volta32gb", "--exclude", "node[01-02]", "--mail_type", "END,FAIL", "--mail_user",
            "a@b.c", "--sbatch", "reservation=r1", "--sbatch", "exclusive", "--mem_gb", "64", "--signal_delay", "90",
            "--max_timeouts", "5", "--", *shlex.split(TINY), "--csv_file", "k.csv", "--out_dir", str(out_dir)]
    assert submit.main(argv) == 0
    job_dir = out_dir / "slurm"
    assert capsys.readouterr().out.startswith(f"submitted job 4242: train.py on 2 node(s) x 8 task(s), --out_dir "
                                              f"{out_dir}; logs and job.json in {job_dir}")
    script = (job_dir / "4242_submission.sh").read_text()
    lines = set(script.splitlines())
    for line in ["--partition=gpu", "--time=600", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8",
                 "--cpus-per-task=10", "--account=acc", "--qos=high", "--constraint=volta32gb",
                 "--exclude='node[01-02]'", "--mail-type=END,FAIL", "--mail-user=a@b.c", "--reservation=r1",
                 "--exclusive", "--mem=64GB", "--signal=USR2@90", "--requeue", "--open-mode=append",
                 f"--output={job_dir}/%j_0_log.out", "--job-name=mfo-train"]:
        assert f"#SBATCH {line}" in lines, line
    assert f"export PYTHONPATH={submit.ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" in lines
    [srun] = [line for line in lines if line.startswith("srun ")]  # one task per GPU, each running the Task
    assert srun.endswith(f"--kill-on-bad-exit=0 {shlex.quote(sys.executable)} -u -m submitit.core._submit {job_dir}")
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert "RANK" not in env and "MASTER_PORT" not in env and "SLURM_JOB_ID" not in env
    assert env["SLURM_CONF"] == "/c.conf" and env["SBATCH_ACCOUNT"] == "mine"
    record = json.loads((job_dir / "job.json").read_text())
    expected = [*shlex.split(TINY), "--csv_file", "k.csv", "--out_dir", str(out_dir), "--resume", "auto"]
    assert record["job_id"] == "4242" and record["script"] == "train.py" and record["argv"] == expected
    assert record["command"] == shlex.join(["python", "scripts/submit.py", *argv])
    stored = submitit.helpers.DelayedSubmission.load(job_dir / "4242_submitted.pkl")
    assert type(stored.function) is submit.Task and stored.function.argv == expected
    assert stored._timeout_countdown == 5 and stored._timeout_min == 600


def test_a_refused_submission_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    bin_dir = fake_slurm(tmp_path / "bin", 'echo "sbatch: error: invalid partition specified: nope" >&2\nexit 1')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out_dir = tmp_path / "new" / "run"
    line = error_line(lambda: submit.main(["--partition", "nope", "--", "--csv_file", "k.csv", "--out_dir",
                                           str(out_dir)]))
    assert line == "error: sbatch refused the job: sbatch: error: invalid partition specified: nope"
    assert capsys.readouterr().err == ""  # sbatch's own line is in the one line, not printed beside it
    assert not (tmp_path / "new").exists()
    job_dir = tmp_path / "jobs"
    job_dir.mkdir()
    (job_dir / "old.txt").write_text("kept")
    error_line(lambda: submit.main(["--job_dir", str(job_dir), "--", "--csv_file", "k.csv"]))
    assert [p.name for p in job_dir.iterdir()] == ["old.txt"]


def test_without_sbatch_one_line_says_how_to_run_with_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    line = error_line(lambda: submit.main([*CPU, "--", "--csv_file", "k.csv", "--out_dir", str(tmp_path / "r")]))
    assert line == ("error: sbatch not found: no SLURM on this machine. Run without it: torchrun --nproc_per_node 2 "
                    f"train.py --csv_file k.csv --out_dir {tmp_path / 'r'} --resume auto")
    line = error_line(lambda: submit.main(["--nodes", "2", "--", "--csv_file", "k.csv"]))
    assert "torchrun --nnodes 2 --node_rank R --master_addr HOST --master_port PORT --nproc_per_node 8 train.py" in line
    assert not (tmp_path / "r").exists()


def slurm_task(monkeypatch, job_id: str, procid: int, localid: int, nodes: int = 2) -> dict[str, str]:
    """The rendezvous variables a task of SLURM job ``job_id`` exports (8 tasks a node on gpu017, gpu018...)."""
    for name, value in dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=job_id, SLURM_NTASKS=str(8 * nodes),
                            SLURM_PROCID=str(procid), SLURM_LOCALID=str(localid), SLURM_NODEID=str(procid // 8),
                            SLURM_JOB_NUM_NODES=str(nodes), SLURM_JOB_NODELIST=f"gpu[017-{16 + nodes:03d}]",
                            CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7").items():
        monkeypatch.setenv(name, value)
    for name in submit.RENDEZVOUS:
        monkeypatch.setenv(name, "stale")  # recorded by monkeypatch, so that the test leaves os.environ as it was
        monkeypatch.delenv(name)
    submit.export_rendezvous()
    return {name: os.environ.get(name) for name in (*submit.RENDEZVOUS[:6], "CUDA_VISIBLE_DEVICES")}


def test_each_task_exports_the_env_rendezvous_from_the_slurm_variables(monkeypatch):
    task9 = slurm_task(monkeypatch, "4242", procid=9, localid=1)
    assert {k: v for k, v in task9.items() if k != "MASTER_PORT"} == dict(
        MASTER_ADDR="gpu017", RANK="9", WORLD_SIZE="16", LOCAL_RANK="1", LOCAL_WORLD_SIZE="8",
        CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")  # every GPU of the node stays visible: the task takes LOCAL_RANK's
    task0 = slurm_task(monkeypatch, "4242", procid=0, localid=0)
    assert task0["RANK"] == "0" and task0["MASTER_PORT"] == task9["MASTER_PORT"]  # every task meets at one port
    assert 20000 <= int(task9["MASTER_PORT"]) <= 60000
    assert slurm_task(monkeypatch, "4243", procid=0, localid=0)["MASTER_PORT"] != task9["MASTER_PORT"]
    one_node = slurm_task(monkeypatch, "4242", procid=3, localid=3, nodes=1)
    assert (one_node["MASTER_ADDR"], one_node["WORLD_SIZE"], one_node["RANK"]) == ("127.0.0.1", "8", "3")


def test_sigusr2_asks_for_the_graceful_stop_and_leaves_the_requeue_to_after_the_save(capfd):
    """Inside the block SIGUSR2 does not run submitit's handler (which would requeue mid-step) but sends SIGTERM,
    the graceful stop's signal, and again each second; ``requeue`` runs submitit's handler afterwards."""
    calls, terms = [], []

    def submitit_handler(signum, frame):  # stands in for submitit's handler
        calls.append(signum)

    def graceful_stop(signum, frame):  # stands in for train.py's
        terms.append(time.monotonic())

    saved = signal.signal(signal.SIGUSR2, submitit_handler), signal.signal(signal.SIGTERM, graceful_stop)
    try:
        with submit.TimeLimitWarning(announce=True) as warning:
            os.kill(os.getpid(), signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while len(terms) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert warning.received and calls == [] and len(terms) >= 2
            assert 0.9 < terms[1] - terms[0] < 3  # sent again a second later
            warning.requeue()
            assert calls == [signal.SIGUSR2]
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # the requeue's scontrol must survive it
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler and signal.getsignal(signal.SIGTERM) is graceful_stop
        count = len(terms)
        time.sleep(1.2)
        assert len(terms) == count  # no SIGTERM after the block
    finally:
        signal.signal(signal.SIGUSR2, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
    assert capfd.readouterr().err == submit.ANNOUNCE


def test_a_forked_loader_worker_leaves_sigusr2_to_its_trainer(capfd):
    """SLURM signals every process of the job, DataLoader workers (forked, with the trainer's handlers) too."""
    import multiprocessing

    saved = signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGTERM)
    try:
        with submit.TimeLimitWarning(announce=True) as warning:
            worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(1.5,))
            worker.start()
            time.sleep(0.3)
            os.kill(worker.pid, signal.SIGUSR2)
            worker.join(10)
            assert worker.exitcode == 0 and not warning.received  # the worker went on; the trainer heard nothing
    finally:
        signal.signal(signal.SIGUSR2, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
    assert submit.ANNOUNCE not in capfd.readouterr().err


def test_a_job_that_timed_out_too_often_is_not_requeued_and_says_so(capfd):
    def too_often(signum, frame):  # what submitit's handler raises when the countdown of time-outs is spent
        raise submitit.core.utils.UncompletedJobError("Job not requeued because: timed-out too many times.")

    saved = signal.signal(signal.SIGUSR2, too_often)
    try:
        with submit.TimeLimitWarning(announce=False) as warning:
            warning.requeue()
    finally:
        signal.signal(signal.SIGUSR2, saved)
    assert capfd.readouterr().err.startswith("not requeued: the job reached its time limit more than --max_timeouts")


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> str:
    return str(make_demo_data(tmp_path_factory.mktemp("demo") / "demo", videos=8, frames=24, seed=1) / "pretrain.csv")


def local_job(folder: Path, argv: list[str]) -> submitit.LocalJob:
    """A train.py job of two tasks run by submitit's local executor, as SLURM would run it (same task, same setup
    lines); a task that exits with submitit's requeue status is started again, as a requeued SLURM job."""
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=3)
    executor.update_parameters(tasks_per_node=2, timeout_min=10, setup=submit.setup_lines())
    return executor.submit(submit.Task("train.py", argv))


def wait(job: submitit.LocalJob) -> None:
    deadline = time.monotonic() + DONE_S
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel()
            pytest.fail(f"the local job did not end within {DONE_S} s")
        time.sleep(0.2)


def starts(job: submitit.LocalJob, task: int) -> int:
    return job.task(task).paths.stdout.read_text().count(f"task {task} of 2 on ")


def task_pids(root: int) -> list[int]:
    """The processes under ``root`` that run a submitit task."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"submitit.core._submit" in cmdline:
            found.append(pid)
        todo += [int(child) for child in children]
    return found


def test_a_local_job_stopped_by_sigusr2_saves_requeues_itself_and_ends_like_an_uninterrupted_one(csv_file, tmp_path):
    flags = [*shlex.split(TINY), "--csv_file", csv_file, "--keep_epochs", "0", "--resume", "auto", "--out_dir"]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    reference = local_job(tmp_path / "ref_jobs", [*flags, str(ref_dir)])
    wait(reference)
    assert reference.results() == [None, None]  # each task's outcome; raises if one failed
    job = local_job(tmp_path / "cut_jobs", [*flags, str(cut_dir)])
    deadline = time.monotonic() + DONE_S
    while not all(p.is_file() and "task " in p.read_text() for p in (job.task(0).paths.stdout,
                                                                     job.task(1).paths.stdout)):
        assert not job.done() and time.monotonic() < deadline, "the tasks did not start"
        time.sleep(0.1)
    pids = task_pids(int(job.job_id))  # the local job's id is its controller's pid
    assert len(pids) == 2
    for pid in pids:  # as SLURM before the time limit: every task gets SIGUSR2, here while it starts up
        os.kill(pid, signal.SIGUSR2)
    wait(job)
    assert job.results() == [None, None]
    err = job.task(0).paths.stderr.read_text()
    assert submit.ANNOUNCE in err and "; continue with --resume auto" in err  # the stop's line
    out = job.task(0).paths.stdout.read_text()
    assert "Requeued job" in out and "resumed from " in out  # submitit's requeue, then train.py's resume
    assert starts(job, 0) == starts(job, 1) == 2  # requeued once; finished, so not again
    assert starts(reference, 0) == 1
    ref, cut = load_checkpoint(ref_dir / "last.pth"), load_checkpoint(cut_dir / "last.pth")
    assert cut["epoch"] == ref["epoch"] == 2 and cut["global_step"] == ref["global_step"]
    assert ref["model"].keys() == cut["model"].keys()
    assert all(torch.equal(ref["model"][k], cut["model"][k]) for k in ref["model"])
    assert all(torch.equal(ref["bank"][k], cut["bank"][k]) for k in ref["bank"])

    def log(out_dir: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"}
                for line in (out_dir / "log.jsonl").read_text().splitlines()]

    assert len(log(ref_dir)) == 2 and log(cut_dir) == log(ref_dir)


def test_a_job_that_fails_is_not_requeued_and_each_task_log_ends_with_its_error_line(tmp_path):
    missing = tmp_path / "missing.csv"
    job = local_job(tmp_path / "jobs", [*shlex.split(TINY), "--csv_file", str(missing), "--out_dir",
                                        str(tmp_path / "run"), "--resume", "auto"])
    wait(job)
    for task in (0, 1):
        assert starts(job, task) == 1 and not job.task(task).paths.result_pickle.exists()  # started once, no result
        err = job.task(task).paths.stderr.read_text().rstrip("\n").splitlines()
        assert err[-1] == f"error: --csv_file {missing}: no such file (make one with scripts/make_csv.py)"


def commands(text: str) -> list[str]:
    """The shell commands of ``text``'s code (indented lines, continuations joined), whitespace collapsed."""
    joined = text.replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.startswith("    ") and line.strip()]


def test_the_docs_show_the_commands_that_the_slurm_check_runs():
    docs = (submit.ROOT / "docs" / "clusters.md").read_text(encoding="utf-8")
    check = " ".join((submit.ROOT / "scripts" / "slurm_check.sh").read_text(encoding="utf-8").replace("\\\n", " ")
                     .split())
    tested = docs[docs.index("### Tested on a real SLURM"):]
    shown = [c for c in commands(tested) if c.startswith(("python scripts/submit.py", "scontrol "))]
    assert len(shown) == 4 and all(command in check for command in shown), shown
    for command in commands(docs):  # every submission the page shows parses
        if command.startswith("python scripts/submit.py"):
            ours, theirs = submit.split_argv(shlex.split(command)[2:])
            assert submit.plan(submit.parse_args(ours), theirs).argv[-2:] == ("--resume", "auto")


def test_the_docs_list_the_flags_a_resume_may_change():
    import train
    from evaluation import protocol

    docs = (submit.ROOT / "docs" / "clusters.md").read_text(encoding="utf-8")
    listed = docs[docs.index("<!-- resume-may-change -->"):docs.index("<!-- /resume-may-change -->")]
    evaluation = docs[docs.index("For `eval_linear.py` and `finetune.py` they are"):]
    evaluation = evaluation[:evaluation.index(".\n")]
    for text, flags in ((listed, train.RESUME_MAY_CHANGE), (evaluation, protocol.RESUME_MAY_CHANGE)):
        spelled = {protocol.SPELLING.get(f, f"--{f}").lstrip("-") for f in flags} if flags is protocol.RESUME_MAY_CHANGE \
            else set(flags)
        assert sorted(f.replace("-", "_") for f in set(re.findall(r"`--([\w-]+)`", text))) == sorted(spelled)
